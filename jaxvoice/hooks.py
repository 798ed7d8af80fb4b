"""The hooks `jaxvoice train` gives the training loop, usable from Python one by one.

- `TrainLog`: train.csv, one row per step: step, epoch, loss, bits, lr, grad_norm, tokens_per_s, wall_s.
- `Evaluate`: the held-out loss every `every` steps and at the end (not after a Ctrl-C), into val.csv.
- `Checkpoint`: an orbax checkpoint every `every` steps and at any end, with the val loss of that step.
- `Sample`: at every checkpoint, a few seconds of audio from the params just saved (train.sample_seconds).
- `TimeBudget`: stop after so many minutes (the end hooks still evaluate and save).
- `Progress`: a tqdm bar on stderr with the loss and speed, and the evaluations as lines.
Order matters where one reads another's result: Evaluate, then Checkpoint, then Sample (`fit` does this).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from jaxvoice import checkpoint, logs, model
from jaxvoice.errors import UserError
from jaxvoice.loop import Hook, Loop


class SaveFailed(Exception):
    """A checkpoint could not be written (full disk, lost mount, ...); orbax left the previous ones intact.
    `__cause__` is the error from the file system."""


class TrainLog(Hook):
    """train.csv: a row per step. `wall_before` is the training time of the run before this loop (resume)."""

    def __init__(self, log: logs.CsvLog | logs.NullLog, steps_per_epoch: int, wall_before: float = 0.0):
        self.log, self.steps_per_epoch, self.wall_before = log, steps_per_epoch, wall_before

    def on_metrics(self, loop: Loop, step: int, m: dict[str, float]) -> None:
        self.log.write(
            step,
            round(step / self.steps_per_epoch, 6),
            m["loss"],
            m["loss"] * model.BITS_PER_NAT,
            m["lr"],
            m["grad_norm"],
            round(m["tokens_per_s"], 1),
            round(self.wall_before + m["seconds"], 3),
        )

    def close(self) -> None:
        self.log.close()


class Evaluate(Hook):
    """The mean held-out loss of `loop.state.model_params`, by `evaluate(params) -> nats`, every `every` steps
    and at the end (unless the loop was stopped by a signal: then only the save is urgent). Written to
    `log` (val.csv) and left in `loop.values["val_loss"]` as (step, nats); `on_result(step, nats)` if given."""

    def __init__(
        self,
        evaluate: Callable[[dict], float],
        every: int,
        log: logs.CsvLog | logs.NullLog,
        steps_per_epoch: int,
        on_result: Callable[[int, float], None] | None = None,
    ):
        self.evaluate, self.every, self.log = evaluate, every, log
        self.steps_per_epoch, self.on_result = steps_per_epoch, on_result
        self.last_step: int | None = None

    def _run(self, loop: Loop) -> None:
        val_loss = self.evaluate(loop.state.model_params)
        self.log.write(
            loop.step, round(loop.step / self.steps_per_epoch, 6), val_loss, val_loss * model.BITS_PER_NAT
        )
        self.log.flush()
        self.last_step = loop.step
        loop.values["val_loss"] = (loop.step, val_loss)
        if self.on_result is not None:
            self.on_result(loop.step, val_loss)

    def on_boundary(self, loop: Loop) -> None:
        self._run(loop)

    def on_end(self, loop: Loop) -> None:
        if loop.stop_reason != "signal" and self.last_step != loop.step:
            self._run(loop)

    def close(self) -> None:
        self.log.close()


class Checkpoint(Hook):
    """A checkpoint of the whole state every `every` steps and at the end, by `save(state, val_loss)`
    (`val_loss` is this step's evaluation, if it had one). A failed save raises `SaveFailed`."""

    def __init__(self, save: Callable[[Any, float | None], None], every: int):
        self.save, self.every = save, every
        self.last_step: int | None = None

    def _save(self, loop: Loop) -> None:
        step, val_loss = loop.values.get("val_loss", (None, None))
        try:
            self.save(loop.state, val_loss if step == loop.step else None)
        except Exception as e:  # orbax and tensorstore wrap I/O errors in their own types
            raise SaveFailed(loop.step) from e
        self.last_step = loop.step

    def on_boundary(self, loop: Loop) -> None:
        if not loop.ending:  # the end evaluates first, then saves (with that val loss)
            self._save(loop)

    def on_end(self, loop: Loop) -> None:
        if self.last_step != loop.step:
            self._save(loop)


class Sample(Hook):
    """At every checkpoint, right after it is saved, `seconds` of audio from the params just saved, into
    RUN/samples/step_N.wav exactly as `jaxvoice sample --checkpoint N --seconds S` writes it (the run's
    sample.* settings and seed), so a run can be heard as it learns. The time it takes goes to
    RUN/samples.csv (step, audio seconds, seconds taken), not into tokens/s. A sample file that is already
    there is never replaced, and a run resumed from a checkpoint whose sample was cut off writes it then, so
    each checkpoint's sample is written once. Goes after `Checkpoint` in the hooks."""

    def __init__(self, run, seconds: float, log: logs.CsvLog | logs.NullLog):
        meta = run.corpus.meta
        if meta["codec"] == "bytes":
            raise UserError("train.sample_seconds needs an audio corpus; this run's corpus is raw bytes")
        self.run, self.log, self.seconds = run, log, seconds
        self.every = run.config.train.checkpoint_every  # the checkpoints' cadence
        self.done: set[int] = set()

    def on_start(self, loop: Loop) -> None:
        if loop.start_step in self.run.checkpoints():  # resumed from it: its sample may have been cut off
            self._write(loop)

    def _write(self, loop: Loop) -> None:
        from jaxvoice import checkpoint_samples

        step, meta = loop.step, self.run.corpus.meta
        path = checkpoint_samples.sample_path(self.run.path, step)
        self.done.add(step)
        if path.exists():
            return
        t0 = time.monotonic()
        checkpoint_samples.write_sample(loop.state.model_params, self.run.config, meta, path, self.seconds)
        self.log.write(
            step, round(round(self.seconds * meta["rate"]) / meta["rate"], 6), round(time.monotonic() - t0, 3)
        )
        self.log.flush()

    def _after_a_save(self, loop: Loop) -> None:
        saved = [hook.last_step for hook in loop.hooks if isinstance(hook, Checkpoint)]
        if loop.step in saved and loop.step not in self.done:
            self._write(loop)

    on_boundary = on_end = _after_a_save

    def close(self) -> None:
        self.log.close()


class TimeBudget(Hook):
    """Stop at the first step after `minutes` of wall time (stop reason "time")."""

    def __init__(self, minutes: float):
        self.minutes = minutes
        self.deadline = float("inf")

    def on_start(self, loop: Loop) -> None:
        self.deadline = time.monotonic() + 60.0 * self.minutes

    def on_step(self, loop: Loop) -> None:
        if time.monotonic() >= self.deadline:
            loop.stop("time")


class Progress(Hook):
    """A tqdm bar on stderr (only on a terminal, as tqdm decides) with loss, bits and tokens/s; `write`
    puts a line above it (also before the loop starts)."""

    def __init__(self):
        self.bar = None
        self.pending: list[str] = []

    def write(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)

    def on_start(self, loop: Loop) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=loop.until, initial=loop.start_step, unit="step", disable=None, dynamic_ncols=True,
            file=sys.stderr, mininterval=0.5,
        )  # fmt: skip

    def on_step(self, loop: Loop) -> None:
        if self.bar.total != loop.until:
            self.bar.total = loop.until
        self.bar.update(1)

    def on_metrics(self, loop: Loop, step: int, m: dict[str, float]) -> None:
        bits = m["loss"] * model.BITS_PER_NAT
        self.bar.set_postfix_str(
            f"loss {m['loss']:.4f} bits {bits:.3f} tok/s {m['tokens_per_s']:,.0f}", refresh=False
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def checkpoint_saver(mngr, meta: Callable[[int, float | None], dict], logs_to_sync=()) -> Callable:
    """`save(state, val_loss)` for `Checkpoint`: syncs the CSV logs first (so a checkpoint never points past
    what the logs hold), then saves `state` with `meta(step, val_loss)`."""

    def save(state, val_loss: float | None) -> None:
        for log in logs_to_sync:
            log.flush(sync=True)
        step = int(state.step)
        checkpoint.save(mngr, state, meta(step, val_loss), val_loss)

    return save
