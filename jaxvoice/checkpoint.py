"""Checkpoints of a run, through orbax (the only module that imports it).

A checkpoint at step N holds three items: `params` (what sampling needs), `train` (opt_state, step, carry,
key: what exact resume needs) and `meta` (JSON: the resolved config, the corpus meta, the data cursor, the
val loss), so a checkpoint alone rebuilds the model. Orbax writes each save into a temporary directory and
renames it when complete, so a kill mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxvoice import config as config_lib
from jaxvoice import model
from jaxvoice.errors import UserError

CHECKPOINT_DIR = "checkpoints"

# orbax logs each save (INFO) and read-only opens (WARNING) through absl: noise to a user; errors still show.
logging.getLogger("absl").setLevel(logging.ERROR)


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


def save(mngr: ocp.CheckpointManager, state: Any, meta: dict, val_loss: float | None) -> None:
    """Start saving `state` (a TrainState) at its step; returns once the arrays are copied off the device."""
    step = int(state.step)
    train_part = {"opt_state": state.opt_state, "step": state.step, "carry": state.carry, "key": state.key}
    metrics = {"val_loss": float(val_loss)} if val_loss is not None else None
    mngr.save(
        step,
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


def restore_train(mngr: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint that restores intact, as (state, meta); None if there is none.

    A damaged step (truncated or missing files) is reported and skipped in favour of the one before it.
    """
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(_abstract(abstract_state.params)),
                    train=ocp.args.StandardRestore(
                        _abstract(
                            {
                                "opt_state": abstract_state.opt_state,
                                "step": abstract_state.step,
                                "carry": abstract_state.carry,
                                "key": abstract_state.key,
                            }
                        )
                    ),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax raises many kinds for damaged files; any of them means "skip"
            print(
                f"warning: checkpoint step {step} is damaged ({type(e).__name__}); trying an older one",
                file=sys.stderr,
            )
            continue
        train_part = restored["train"]
        state = abstract_state.replace(params=restored["params"], **train_part)
        return state, restored["meta"]
    return None


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


def _pick_step(mngr: ocp.CheckpointManager, run_dir: Path, which: str | int) -> int:
    steps = sorted(mngr.all_steps())
    if not steps:
        raise UserError(
            f"run {run_dir} has no checkpoints yet; train it first (jaxvoice train ... --out {run_dir})"
        )
    if which == "latest":
        return steps[-1]
    if which == "best":
        scored = [(m["val_loss"], s) for s in steps if (m := read_meta(mngr, s)).get("val_loss") is not None]
        return min(scored)[1] if scored else steps[-1]
    try:
        step = int(which)
    except ValueError:
        raise UserError(f"checkpoint must be best, latest or a step number, got '{which}'") from None
    if step not in steps:
        raise UserError(
            f"run {run_dir} has no checkpoint at step {step}; it has {', '.join(map(str, steps))}"
        )
    return step


def restore_for_inference(run_dir: str | Path, which: str | int = "best") -> Restored:
    """The params (and what they mean) of one checkpoint: 'best' (lowest val loss), 'latest' or a step."""
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
    step = _pick_step(mngr, run_dir, which)
    meta = read_meta(mngr, step)
    cfg = config_lib.from_dict(meta["config"])
    abstract_params = jax.eval_shape(lambda: model.init_params(jax.random.key(0), cfg.model))
    restored = mngr.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(abstract_params)))
    )
    return Restored(restored["params"], cfg, meta["corpus"], step, meta.get("val_loss"))
