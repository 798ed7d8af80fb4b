"""Checkpoints of a run, through orbax (the only module that imports it).

A checkpoint at step N holds three items: `params` (what sampling needs), `train` (opt_state, step, carry,
key: what exact resume needs) and `meta` (JSON: the resolved config, the corpus meta, the data cursor, the
val loss), so a checkpoint alone rebuilds the model. Orbax writes each save into a temporary directory and
renames it when complete, so a kill mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import hashlib
import logging
import sys
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

# orbax logs each save (INFO), read-only opens (WARNING) and, when a write fails, the same error with
# tracebacks from each of its threads (ERROR, also through concurrent.futures). jaxvoice reports a failed save
# itself in one line (train.fit), so none of that reaches the user.
for _name in ("absl", "concurrent.futures"):
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


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


class Damaged(Exception):
    """A checkpoint step whose files are missing, truncated or do not match their checksums."""


def _restore_checked(mngr: ocp.CheckpointManager, step: int, abstract: dict[str, Any]) -> dict:
    """Restore the named items of one step (plus meta) and verify their checksums, or raise Damaged."""
    try:
        meta = read_meta(mngr, step)
        args = {name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in abstract.items()}
        restored = dict(mngr.restore(step, args=ocp.args.Composite(**args)))
    except Exception as e:  # orbax raises many kinds for damaged files; each means "this step is damaged"
        raise Damaged(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
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
    step, restored = _first_intact(mngr, sorted(mngr.all_steps(), reverse=True), abstract, quiet)
    if restored is None:
        return None
    return abstract_state.replace(params=restored["params"], **restored["train"]), restored["meta"]


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
                raise UserError(
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
