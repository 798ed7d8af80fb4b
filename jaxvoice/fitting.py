"""`fit`: train a run as `jaxvoice train` does, as a function that returns the trained state.

    run = jaxvoice.Run.create("runs/a", jaxvoice.load_config("tiny"), "corpus/")
    result = jaxvoice.fit(run, steps=2000)          # train.csv, val.csv, checkpoints, like the CLI
    result.state.model_params, result.val_loss    # the model (the weights' average with train.ema_decay)

A run with checkpoints continues from its newest intact one, computing exactly what an uninterrupted run
would (the logs after that checkpoint are cut and redone); a new run starts at step 0. Extra hooks run after
the standard ones; the library prints nothing (pass `say` to hear what the CLI prints).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax

from jaxvoice import checkpoint, logs, model, parallel, train
from jaxvoice.errors import UserError
from jaxvoice.hooks import Checkpoint, Evaluate, Sample, TimeBudget, TrainLog, checkpoint_saver
from jaxvoice.loop import Hook, train_loop
from jaxvoice.run import Run
from jaxvoice.streams import Streams, eval_streams, train_streams


@dataclass(frozen=True)
class FitResult:
    state: train.TrainState
    start_step: int  # where this call began (0, or the checkpoint it continued from)
    step: int  # where it ended
    stop_reason: str  # "done" (the target step), "time", "signal", a hook's reason, or "nothing to do"
    loss: float | None  # the last step's training loss, nats
    val_loss: float | None  # the last evaluation's loss, nats (None if there was none)
    val_step: int | None


# tensorstore (under orbax) reports a failed system call as a ValueError whose text ends in this.
_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")


def describe_error(error: BaseException) -> str:
    """An I/O error (or any) as a short phrase for a one-line message: the system's words for an OSError or
    for tensorstore's report of one ("No space left on device"), else the error's first line."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    os_error = _TENSORSTORE_OS_ERROR.search(str(error))
    if os_error:
        return os.strerror(int(os_error.group(1)))
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def fit(
    run: Run,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    hooks: Sequence[Hook] = (),
    say: Callable[[str], None] | None = None,
    dp: parallel.DataParallel | None = None,
) -> FitResult:
    """Train `run` until step `steps` in total (default: train.max_epochs epochs), for `minutes` of wall time,
    or until a hook stops it, evaluating every train.eval_every steps and saving every train.checkpoint_every
    and at the end (and, with train.sample_seconds, sampling each checkpoint into RUN/samples/). Raises `loop.Diverged` (NaN/Inf; the last good checkpoint stays), `hooks.SaveFailed`
    (the disk is full or gone; the previous checkpoint stays), UserError for what the user can fix."""
    cfg, say = run.config, say or (lambda message: None)
    B, T = cfg.train.batch_size, cfg.train.seq_length
    dp = dp or parallel.data_parallel()
    dp.check_batch_size(B)
    first, count = dp.local_rows(B)
    streams = train_streams(run.corpus.split("train"), B, T)
    streams = Streams(streams.data, B, T, first_stream=first, num_local=count)  # this process's streams
    steps_per_epoch = streams.steps
    val_data = run.corpus.split("val")
    multiple = model.window_multiple(cfg.model)
    val = eval_streams(val_data, B, T, multiple) if len(val_data) > multiple else None
    primary = jax.process_index() == 0  # only process 0 writes logs

    state = train.init_state(cfg, steps_per_epoch, B)
    state = jax.device_put(state, train.state_sharding(state, dp))
    mngr = checkpoint.manager(run.path, keep=cfg.train.keep_checkpoints)
    try:
        restored = checkpoint.restore_train(mngr, state, cfg)
        wall_before = 0.0
        if restored is not None:
            state, meta = restored
            wall_before = float(meta.get("wall_s", 0.0))
        start = int(state.step)
        target = steps if steps is not None else cfg.train.max_epochs * steps_per_epoch
        if start >= target:
            say(f"{run.path} is already at step {start} (target {target}); nothing to do")
            return FitResult(state, start, start, "nothing to do", None, None, None)
        make_log = logs.CsvLog if primary else logs.NullLog
        try:
            train_log = make_log(run.train_csv, logs.TRAIN_COLUMNS, keep_through_step=start)
            val_log = make_log(run.val_csv, logs.VAL_COLUMNS, keep_through_step=start)
        except OSError as e:
            raise UserError(
                f"cannot write the logs of {run.path} ({describe_error(e)}): make the run's folder writable, or copy "
                "the run somewhere writable and --resume it there"
            ) from None
        if restored is not None:
            say(f"resuming {run.path} from step {start}")

        eval_step = train.make_eval_step(cfg.model)

        def evaluate(params) -> float:
            return train.evaluate(params, cfg.model, val, eval_step, dp)

        def meta(step: int, val_loss: float | None) -> dict:
            return run.checkpoint_meta(step, val_loss, wall_before + time.monotonic() - t_start)

        def on_eval(step: int, val_loss: float) -> None:
            say(f"step {step}: val loss {val_loss:.4f} nats, {val_loss * model.BITS_PER_NAT:.4f} bits/sample")

        standard: list[Hook] = [TrainLog(train_log, steps_per_epoch, wall_before)]
        if val is not None:
            standard.append(Evaluate(evaluate, cfg.train.eval_every, val_log, steps_per_epoch, on_eval))
        else:
            val_log.close()
        save = checkpoint_saver(mngr, meta, logs_to_sync=(train_log, val_log))
        standard.append(Checkpoint(save, cfg.train.checkpoint_every))
        if cfg.train.sample_seconds > 0 and primary:
            sample_log = logs.CsvLog(run.samples_csv, logs.SAMPLE_COLUMNS, keep_through_step=start)
            standard.append(Sample(run, cfg.train.sample_seconds, sample_log))
        if minutes is not None:
            standard.append(TimeBudget(minutes))

        def batch(step: int):
            inputs, targets = streams.batch(step % steps_per_epoch)
            return dp.global_batch(inputs, B), dp.global_batch(targets, B)

        train_step = train.make_train_step(cfg, steps_per_epoch, dp)
        t_start = time.monotonic()
        state, loop = train_loop(state, batch, train_step, until=target, hooks=[*standard, *hooks])
    finally:
        mngr.close()
    if loop.stop_reason == "time":
        say(f"time budget of {minutes} min reached: saved step {loop.step}")
    val_step, val_loss = loop.values.get("val_loss", (None, None))
    return FitResult(
        state, start, loop.step, loop.stop_reason, loop.last_metrics.get("loss"), val_loss, val_step
    )
