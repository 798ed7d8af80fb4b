"""Checkpoints of a run, through orbax (the only module that imports it).

A checkpoint at step N holds three items: `params` (what sampling needs), `train` (opt_state, step, carry,
key: what exact resume needs) and `meta` (JSON: the resolved config, the corpus meta, the data cursor, the
val loss), so a checkpoint alone rebuilds the model. Orbax writes each save into a temporary directory and
renames it when complete, so a kill mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxvoice import config as config_lib
from jaxvoice import model
from jaxvoice.errors import UserError

CHECKPOINT_DIR = "checkpoints"

# orbax logs each save (INFO), read-only opens (WARNING) and, when a write or read fails, the same error with
# tracebacks from each of its threads and tasks (ERROR, through absl, concurrent.futures and asyncio; jaxvoice
# itself uses no asyncio). jaxvoice reports a failed save or a damaged step itself, in one line.
for _name in ("absl", "concurrent.futures", "asyncio"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


def _options(keep: int, read_only: bool) -> ocp.CheckpointManagerOptions:
    keep_policy = checkpoint_managers.AnyPreservationPolicy(
        [
            checkpoint_managers.LatestN(n=keep),
            checkpoint_managers.BestN(
                get_metric_fn=lambda m: m["val_loss"],
                reverse=True,
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    return ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else keep_policy,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        # Synchronous: the state is donated to the next step right after a save, and a save of a small
        # model takes well under a second; the temporary-directory-then-rename protocol is kept.
        enable_async_checkpointing=False,
    )


def manager(run_dir: str | Path, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    path = (Path(run_dir) / CHECKPOINT_DIR).absolute()
    return ocp.CheckpointManager(
        path, options=_options(keep, read_only), item_names=("params", "train", "meta")
    )


def _train_part(state: Any) -> dict:
    return {"opt_state": state.opt_state, "step": state.step, "carry": state.carry, "key": state.key}


def digest(tree: Any) -> str:
    """sha256 over every array of a pytree that this process holds whole (all of them on one host).

    Stored in the meta at save and checked at restore: orbax detects missing files, but a file zeroed or
    overwritten in place can decode into wrong numbers without any error.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue  # a shard of another host's data (multi-process carry): each host checks its own run
        array = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def save(mngr: ocp.CheckpointManager, state: Any, meta: dict, val_loss: float | None) -> None:
    """Save `state` (a TrainState) at its step, with `meta` (JSON) and checksums of both array items."""
    train_part = _train_part(state)
    meta = dict(meta, params_sha256=digest(state.params), train_sha256=digest(train_part))
    metrics = {"val_loss": float(val_loss)} if val_loss is not None else None
    mngr.save(
        int(state.step),
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(train_part),
            meta=ocp.args.JsonSave(meta),
        ),
        metrics=metrics,
        force=True,
    )
    _write_manifest(mngr, int(state.step))


# --- file manifests: a damaged step is found by its files, before orbax reads a byte of them ----------------

MANIFEST_DIR = "checkpoint_manifests"  # beside checkpoints/, which belongs to orbax


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _manifest_path(mngr: ocp.CheckpointManager, step: int) -> Path:
    return Path(mngr.directory).parent / MANIFEST_DIR / f"{step}.json"


def _write_manifest(mngr: ocp.CheckpointManager, step: int) -> None:
    """Size and sha256 of every file of a finished step; and forget the steps orbax has deleted."""
    if jax.process_index() != 0:
        return
    step_dir = Path(mngr.directory) / str(step)
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, _sha256(p)] for p in sorted(step_dir.rglob("*"))
             if p.is_file()}  # fmt: skip
    path = _manifest_path(mngr, step)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(files, indent=0))
    os.replace(tmp, path)
    kept = set(mngr.all_steps())
    for old in path.parent.glob("*.json"):
        if old.stem.isdigit() and int(old.stem) not in kept:
            old.unlink()


def _check_manifest(mngr: ocp.CheckpointManager, step: int, items: set[str]) -> None:
    """Raise Damaged naming the first file of `step` (of its `items`, and its top-level files) that is
    missing, cut or changed since it was saved.

    A step without a manifest (a kill between the save and the manifest) is left to orbax and the checksums
    of its arrays."""
    try:
        expected = json.loads(_manifest_path(mngr, step).read_text())
    except (OSError, ValueError):
        return
    step_dir = Path(mngr.directory) / str(step)
    for name, (size, sha) in expected.items():
        if "/" in name and name.split("/")[0] not in items:
            continue
        path = step_dir / name
        if not path.is_file():
            raise Damaged(f"{name} is missing")
        if path.stat().st_size != size:
            raise Damaged(f"{name} has {path.stat().st_size} bytes where {size} were saved")
        if _sha256(path) != sha:
            raise Damaged(f"{name} has changed since it was saved")


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


class Damaged(Exception):
    """A checkpoint step whose files are missing, truncated or do not match their checksums."""


class CheckpointDamaged(UserError):
    """The one checkpoint asked for (a step number) is damaged; callers that go through several skip it."""


def _hide_orbax_read_leftovers(unraisable, previous=sys.unraisablehook) -> None:
    """When one array of a damaged step fails to read, orbax's other reads of that step are left behind as
    coroutines that Python reports ("Exception ignored in ...") whenever they are collected, maybe at exit.
    The failure is reported once, by jaxvoice; every other unraisable exception is shown as usual."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return
    previous(unraisable)


sys.unraisablehook = _hide_orbax_read_leftovers


def _restore_checked(mngr: ocp.CheckpointManager, step: int, abstract: dict[str, Any]) -> dict:
    """Restore the named items of one step (plus meta) and verify their checksums, or raise Damaged."""
    _check_manifest(mngr, step, {"meta", *abstract})
    try:
        meta = read_meta(mngr, step)
        args = {name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in abstract.items()}
        restored = dict(mngr.restore(step, args=ocp.args.Composite(**args)))
    except Exception as e:  # orbax raises many kinds for damaged files; each means "this step is damaged"
        first_line = (str(e).splitlines() or [""])[0].split(". See ")[0][:120]
        raise Damaged(f"its files do not read: {type(e).__name__} {first_line}".strip()) from None
    for name in abstract:
        expected = meta.get(f"{name}_sha256")
        if expected is not None and digest(restored[name]) != expected:
            raise Damaged(f"its {name} do not match the checksum saved with them")
    restored["meta"] = meta
    return restored


def _first_intact(
    mngr: ocp.CheckpointManager, steps: list[int], abstract: dict[str, Any], quiet: bool = False
):
    """(step, restored) of the first step in `steps` that restores intact; warns about each damaged one."""
    for step in steps:
        try:
            return step, _restore_checked(mngr, step, abstract)
        except Damaged as e:
            if not quiet:
                print(
                    f"warning: checkpoint step {step} is damaged ({e}); trying an older one", file=sys.stderr
                )
    return None, None


def restore_train(
    mngr: ocp.CheckpointManager, abstract_state: Any, quiet: bool = False
) -> tuple[Any, dict] | None:
    """The newest checkpoint that restores intact, as (state, meta); None if there is none.

    A damaged step (files deleted, truncated or zeroed; checksums that differ) is reported and skipped in
    favour of the one before it. An unfinished save never appears: orbax renames a step into place last.
    """
    abstract = {"params": abstract_state.params, "train": _train_part(abstract_state)}
    steps = sorted(mngr.all_steps(), reverse=True)
    step, restored = _first_intact(mngr, steps, abstract, quiet)
    _set_aside(mngr, [s for s in steps if step is None or s > step], quiet)
    if restored is None:
        return None
    return abstract_state.replace(params=restored["params"], **restored["train"]), restored["meta"]


def _set_aside(mngr: ocp.CheckpointManager, damaged: list[int], quiet: bool) -> None:
    """Move damaged steps out of the way (the run will save those steps again), keeping their files."""
    if not damaged or jax.process_index() != 0:
        return
    folder = Path(mngr.directory).parent / "damaged_checkpoints"
    folder.mkdir(exist_ok=True)
    for step in damaged:
        target = folder / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(Path(mngr.directory) / str(step), target)
        if not quiet:
            print(f"moved damaged checkpoint step {step} to {target}", file=sys.stderr)
    mngr.reload()


@dataclass(frozen=True)
class Restored:
    params: dict
    config: config_lib.Config
    corpus_meta: dict
    step: int
    val_loss: float | None


def available_steps(run_dir: str | Path) -> list[int]:
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT_DIR).is_dir():
        return []
    return sorted(manager(run_dir, read_only=True).all_steps())


def _safe_meta(mngr: ocp.CheckpointManager, step: int) -> dict | None:
    try:
        return read_meta(mngr, step)
    except Exception:  # a damaged meta item: that step will be reported when it is restored
        return None


def _candidates(mngr: ocp.CheckpointManager, run_dir: Path, which: str | int) -> list[int]:
    """Steps to try, best first: the newest for 'latest', the lowest val loss for 'best', or one step."""
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise UserError(
            f"run {run_dir} has no checkpoints yet; train it first (jaxvoice train ... --out {run_dir})"
        )
    if which == "latest":
        return steps
    if which == "best":
        scores = {s: (m or {}).get("val_loss") for s in steps for m in [_safe_meta(mngr, s)]}
        scored = sorted((v, -s) for s, v in scores.items() if v is not None)
        return [-s for _, s in scored] + [s for s in steps if scores[s] is None]
    try:
        step = int(which)
    except ValueError:
        raise UserError(f"checkpoint must be best, latest or a step number, got '{which}'") from None
    if step not in steps:
        raise UserError(
            f"run {run_dir} has no checkpoint at step {step}; it has {', '.join(map(str, sorted(steps)))}"
        )
    return [step]


def restore_for_inference(run_dir: str | Path, which: str | int = "best", quiet: bool = False) -> Restored:
    """The params (and what they mean) of one checkpoint: 'best' (lowest val loss), 'latest' or a step.

    For best/latest a damaged checkpoint is reported and the next candidate is used."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run directory {run_dir} does not exist; give --run a directory made by jaxvoice train"
        )
    if not (run_dir / CHECKPOINT_DIR).is_dir():
        raise UserError(
            f"run {run_dir} has no checkpoints yet; train it first (jaxvoice train ... --out {run_dir})"
        )
    mngr = manager(run_dir, read_only=True)
    candidates = _candidates(mngr, run_dir, which)
    for step in candidates:
        meta = _safe_meta(mngr, step)
        try:
            if meta is None:
                raise Damaged("its meta item does not read")
            cfg = config_lib.from_dict(meta["config"])
            abstract_params = jax.eval_shape(lambda cfg=cfg: model.init_params(jax.random.key(0), cfg.model))
            restored = _restore_checked(mngr, step, {"params": abstract_params})
        except (Damaged, UserError, KeyError, TypeError) as e:
            if len(candidates) == 1:
                raise CheckpointDamaged(
                    f"checkpoint step {step} of {run_dir} is damaged ({e}); choose another step"
                ) from None
            if not quiet:
                print(
                    f"warning: checkpoint step {step} is damaged ({e}); trying the next one", file=sys.stderr
                )
            continue
        return Restored(restored["params"], cfg, meta["corpus"], step, meta.get("val_loss"))
    raise UserError(
        f"every checkpoint of {run_dir} is damaged; train again or restore the files from a backup"
    )
