"""Checkpoints of a run, through orbax (the only module that imports it).

A checkpoint at step N holds three items: `params` (what sampling needs: with train.ema_decay > 0 the
weights' moving average), `train` (opt_state, step, carry, key, and then the weights: what exact resume
needs) and `meta` (JSON: the resolved config, the corpus meta, the data cursor, the val loss), so a
checkpoint alone rebuilds the model. Orbax writes each save into a temporary directory and
renames it when complete, so a kill mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxvoice import config as config_lib
from jaxvoice import manifests, model
from jaxvoice.errors import UserError
from jaxvoice.manifests import Damaged

CHECKPOINT_DIR = "checkpoints"
log = logging.getLogger(__name__)


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


# What a checkpoint's train item holds: 2 = the model's carry as its pytree; 1 (meta without the key, the
# checkpoints of jaxvoice before model families) = the stack's carry as one [layers, states, B, H] array.
STATE_FORMAT = 2


def _train_part(state: Any) -> dict:
    part = {"opt_state": state.opt_state, "step": state.step, "carry": state.carry, "key": state.key}
    if getattr(state, "averaged", None) is not None:  # the params item is the average: resume needs these
        part["params"] = state.params
    return part


def _legacy_carry(carry: Any) -> Any:
    """The abstract [L, S, B, H] array that format 1 saved for a stack carry (L layers of S [B, H] states)."""
    leaves = jax.tree.leaves(carry[0])
    like = leaves[0]
    sharding = getattr(like, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):  # the batch axis stays split over the same mesh
        sharding = jax.sharding.NamedSharding(
            sharding.mesh, jax.sharding.PartitionSpec(None, None, *sharding.spec)
        )
    return jax.ShapeDtypeStruct((len(carry), len(leaves), *like.shape), like.dtype, sharding=sharding)


def _from_legacy(carry_LxSxBxH: jax.Array, like: Any) -> Any:
    """A format-1 carry array as the pytree `like` (a tuple of per-layer carries)."""
    return tuple(
        jax.tree.unflatten(
            jax.tree.structure(layer), [carry_LxSxBxH[i, s] for s in range(carry_LxSxBxH.shape[1])]
        )
        for i, layer in enumerate(like)
    )


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
    averaged = getattr(state, "averaged", None)
    params = state.params if averaged is None else averaged  # what sampling reads: the average, if any
    meta = dict(
        meta, params_sha256=digest(params), train_sha256=digest(train_part), state_format=STATE_FORMAT
    )
    metrics = {"val_loss": float(val_loss)} if val_loss is not None else None
    mngr.save(
        int(state.step),
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train=ocp.args.StandardSave(train_part),
            meta=ocp.args.JsonSave(meta),
        ),
        metrics=metrics,
        force=True,
    )
    if jax.process_index() == 0:
        manifests.write(Path(mngr.directory), int(state.step), set(mngr.all_steps()))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


class CheckpointDamaged(UserError):
    """The one checkpoint asked for (a step number) is damaged; callers that go through several skip it."""


def _restore_checked(
    mngr: ocp.CheckpointManager, step: int, names: tuple[str, ...], abstract_of: Callable[[dict], dict]
) -> dict:
    """Restore the items `names` of one step (plus meta) and verify their checksums, or raise Damaged.

    Files are checked against the step's manifest first, then the meta is read and `abstract_of(meta)` gives
    the abstract tree of each item (it may raise UserError: a config that is not damage but a user's to fix)."""
    manifests.check(Path(mngr.directory), step, {"meta", *names})
    meta = _meta_or_damaged(mngr, step)
    abstract = abstract_of(meta)
    try:
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


def _check_config(meta: dict, config: config_lib.Config, step: int, run_dir: Path) -> None:
    """UserError if the checkpoint was saved by a config that computes other steps than `config`: the run's
    config.toml was edited. Its arrays would not fit the model, and that is not damage."""
    try:
        saved = config_lib.from_dict(meta["config"])
    except (KeyError, TypeError, AttributeError):
        raise Damaged("its meta holds no readable config") from None
    changed = config_lib.differences(saved, config, resumable=False)
    if changed:
        raise UserError(
            f"{run_dir / 'config.toml'} disagrees with checkpoint step {step} in "
            f"{config_lib.describe_differences(changed, 'the checkpoint', 'config.toml')}: put the checkpoint's "
            "values back in config.toml to resume, or start a new run with another --out"
        )


def restore_train(
    mngr: ocp.CheckpointManager, abstract_state: Any, config: config_lib.Config | None = None
) -> tuple[Any, dict] | None:
    """The newest checkpoint that restores intact, as (state, meta); None if the run has never saved one.

    A damaged step (files deleted, truncated or zeroed; checksums that differ) is reported and skipped in
    favour of the one before it, and moved to damaged_checkpoints/ once an intact one is found. A step saved
    with another `config` (model.*, or train.* keys that change the steps) is a UserError, nothing moved; so
    is a run whose checkpoints are all damaged: starting over would overwrite its logs. An unfinished save
    never appears: orbax renames a step into place last.
    """
    run_dir = Path(mngr.directory).parent
    averaged = getattr(abstract_state, "averaged", None) is not None
    abstract = {
        "params": abstract_state.averaged if averaged else abstract_state.params,
        "train": _train_part(abstract_state),
    }
    steps = sorted(mngr.all_steps(), reverse=True)
    damaged: list[tuple[int, str]] = []
    for step in steps:

        def abstract_of(meta: dict, step: int = step) -> dict:
            if config is not None:
                _check_config(meta, config, step, run_dir)
            if meta.get("state_format", 1) == 1:
                return {
                    **abstract,
                    "train": {**abstract["train"], "carry": _legacy_carry(abstract_state.carry)},
                }
            return abstract

        try:
            restored = _restore_checked(mngr, step, ("params", "train"), abstract_of)
        except Damaged as e:
            damaged.append((step, str(e)))
            continue
        for s, why in damaged:  # reported once an intact step is found; else the error below says it all
            log.warning(f"checkpoint step {s} is damaged ({why}); trying an older one")
        _set_aside(mngr, [s for s, _ in damaged])
        train = dict(restored["train"])
        if restored["meta"].get("state_format", 1) == 1:
            train["carry"] = _from_legacy(train["carry"], abstract_state.carry)
        if averaged:  # the params item is the average, the weights are in train
            return abstract_state.replace(averaged=restored["params"], **train), restored["meta"]
        return abstract_state.replace(params=restored["params"], **train), restored["meta"]
    if damaged or manifests.saved_before(Path(mngr.directory)):
        found = "; ".join(f"step {s}: {why}" for s, why in damaged) or "their folders are gone"
        raise UserError(
            f"no intact checkpoint is left in {run_dir / CHECKPOINT_DIR} ({found}), so --resume would start "
            "over on top of the run's logs: restore the checkpoints from a backup, or start a new run with "
            "another --out"
        )
    return None


def _meta_or_damaged(mngr: ocp.CheckpointManager, step: int) -> dict:
    try:
        meta = read_meta(mngr, step)
    except Exception as e:  # orbax raises many kinds for a missing or unreadable item
        raise Damaged(f"its meta does not read: {type(e).__name__}") from None
    if not isinstance(meta, dict):
        raise Damaged("its meta is not a JSON object")
    return meta


def _set_aside(mngr: ocp.CheckpointManager, damaged: list[int]) -> None:
    """Move damaged steps out of the way (the run will save those steps again), keeping their files."""
    if not damaged or jax.process_index() != 0:
        return
    folder = Path(mngr.directory).parent / "damaged_checkpoints"
    for step in damaged:
        target = folder / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            folder.mkdir(exist_ok=True)
            os.replace(Path(mngr.directory) / str(step), target)
        except OSError as e:
            raise UserError(
                f"cannot move damaged checkpoint step {step} out of the way ({e.strerror or e}): make "
                f"{Path(mngr.directory).parent} writable, or move {Path(mngr.directory) / str(step)} yourself"
            ) from None
        log.warning(f"moved damaged checkpoint step {step} to {target}")
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
        metas = {s: _safe_meta(mngr, s) for s in steps}
        for s, m in metas.items():
            if not isinstance(m, dict):
                log.warning(
                    f"checkpoint step {s}: its meta does not read, so its val loss is unknown; tried last"
                )
        scores = {s: m.get("val_loss") if isinstance(m, dict) else None for s, m in metas.items()}
        scored = sorted((v, -s) for s, v in scores.items() if isinstance(v, int | float))
        return [-s for _, s in scored] + [s for s in steps if not isinstance(scores[s], int | float)]
    try:
        step = int(which)
    except ValueError:
        raise UserError(f"checkpoint must be best, latest or a step number, got '{which}'") from None
    if step not in steps:
        raise UserError(
            f"run {run_dir} has no checkpoint at step {step}; it has {', '.join(map(str, sorted(steps)))}"
        )
    return [step]


def _inference_abstract(meta: dict) -> dict:
    """The abstract params of the model a checkpoint's meta describes."""
    if not isinstance(meta.get("corpus"), dict):
        raise Damaged("its meta holds no corpus description")
    try:
        cfg = config_lib.from_dict(meta["config"])
    except (KeyError, TypeError, AttributeError):
        raise Damaged("its meta holds no readable config") from None
    return {"params": jax.eval_shape(lambda: model.init_params(jax.random.key(0), cfg.model))}


def restore_for_inference(run_dir: str | Path, which: str | int = "best") -> Restored:
    """The params (and what they mean) of one checkpoint: 'best' (lowest val loss), 'latest' or a step.

    For best/latest a damaged checkpoint is reported (a warning) and the next candidate is used; a step asked
    for by number that is damaged is a CheckpointDamaged error."""
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
        try:
            restored = _restore_checked(mngr, step, ("params",), _inference_abstract)
        except Damaged as e:
            if len(candidates) == 1:
                raise CheckpointDamaged(
                    f"checkpoint step {step} of {run_dir} is damaged ({e}); choose another step"
                ) from None
            log.warning(f"checkpoint step {step} is damaged ({e}); trying the next one")
            continue
        meta = restored["meta"]
        cfg = config_lib.from_dict(meta["config"])
        return Restored(restored["params"], cfg, meta["corpus"], step, meta.get("val_loss"))
    raise UserError(
        f"every checkpoint of {run_dir} is damaged; train again or restore the files from a backup"
    )
