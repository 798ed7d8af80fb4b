"""The training loop: a state, a batch for each step, a compiled step and hooks; returns the final state.

The loop does what every training needs and nothing else: it dispatches steps, fetches each step's metrics
one step late (no host sync before the next step is dispatched), raises `Diverged` on a NaN/Inf loss, and
stops at `until` or when a hook asks. Everything else is a `Hook` it is given: CSV logs, progress bars,
evaluation, checkpoints, a time budget, sampling, Ctrl-C (the command line's). `jaxvoice.run.fit` attaches
the ones `jaxvoice train` uses; a script passes its own:

    class Losses(jaxvoice.Hook):
        def __init__(self): self.rows = []
        def on_metrics(self, loop, step, metrics): self.rows.append((step, metrics["loss"]))

    state, result = jaxvoice.train_loop(state, batch, train_step, until=1000, hooks=[Losses()])
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax


class Diverged(Exception):
    """The loss became NaN or Inf at step `args[0]`."""

    @property
    def step(self) -> int:
        return self.args[0]


class Hook:
    """An extra the loop runs; override what you need (each method does nothing by default).

    - `on_start(loop)`: before the first step.
    - `on_step(loop)`: after each step is dispatched, before it has run: cheap checks (a clock, a flag).
    - `on_metrics(loop, step, metrics)`: each step's metrics as floats (loss, grad_norm, lr, tokens_per_s,
      seconds since the loop started), one step late.
    - `on_boundary(loop)`: after every `every` steps (0: never), with `loop.state` the state after that
      step, before the next one is dispatched (so it may read the state; it must not keep its arrays,
      which the next step reuses).
    - `on_end(loop)`: once after the last step, `loop.stop_reason` saying why ("done" at `until`, or
      what a hook passed to `loop.stop`); not after an error.
    - `close()`: always, last, also after an error.
    Hooks run in the order given; one that evaluates goes before one that saves what it found.
    """

    every: int = 0

    def on_start(self, loop: Loop) -> None:
        pass

    def on_step(self, loop: Loop) -> None:
        pass

    def on_metrics(self, loop: Loop, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_boundary(self, loop: Loop) -> None:
        pass

    def on_end(self, loop: Loop) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Loop:
    """What hooks see of the running loop. `values` is where hooks leave results for each other (e.g. the
    evaluation's {"val_loss": (step, nats)}); `hooks` are all of them, so one may retune another (its
    `every`); `until` may be moved by a hook too."""

    state: Any
    step: int
    start_step: int
    until: int
    tokens_per_step: int
    hooks: tuple[Hook, ...] = ()
    stop_reason: str | None = None
    started: float = field(default_factory=time.monotonic)  # time.monotonic() when the loop began
    values: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)

    def stop(self, reason: str = "stopped") -> None:
        """End the loop at the next step boundary (the end hooks still run, e.g. a checkpoint is saved)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def ending(self) -> bool:
        """Whether the current step is the loop's last: `on_end` follows (a hook that also acts there can
        leave a boundary at this step to it)."""
        return self.step >= self.until or self.stop_reason is not None


class _Rate:
    """Tokens/s over the last `window` steps, not counting the time spent in boundary hooks."""

    def __init__(self, tokens_per_step: int, step: int, window: int = 50):
        self.tokens_per_step = tokens_per_step
        self.points = collections.deque([(step, time.monotonic())], maxlen=window)
        self.value = 0.0

    def tick(self, step: int, now: float) -> float:
        first_step, first_time = self.points[0]
        if now > first_time and step > first_step:
            self.value = self.tokens_per_step * (step - first_step) / (now - first_time)
        self.points.append((step, now))
        return self.value

    def restart(self, step: int) -> None:
        self.points.clear()
        self.points.append((step, time.monotonic()))


def train_loop(
    state: Any,
    batch: Callable[[int], tuple[Any, Any]],
    train_step: Callable,
    *,
    until: int,
    hooks: Sequence[Hook] = (),
) -> tuple[Any, Loop]:
    """Run `train_step(state, *batch(step))` from the state's step up to step `until`; returns the final
    state and the `Loop` (its `step`, `stop_reason`, `last_metrics` and the hooks' `values`).

    `batch(step)` gives (inputs_BxT, targets_BxT) for the update that starts at `step` (a function of the
    step alone, so a resumed run sees the same data). Raises `Diverged` when a loss is NaN or Inf (after
    the hooks saw that step's metrics); nothing is saved then."""
    start = int(state.step)
    loop = Loop(state=state, step=start, start_step=start, until=until, tokens_per_step=0, hooks=tuple(hooks))
    t0 = loop.started
    rate = _Rate(0, start)
    pending = None  # (step, device metrics) of the step dispatched last

    def record(step: int, metrics) -> None:
        """A dispatched step's metrics, fetched (a host sync on that step only), to every hook."""
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.monotonic()
        values["tokens_per_s"] = rate.tick(step, now)
        values["seconds"] = now - t0
        if step == start + 1:
            rate.restart(step)  # the first step's time is mostly compilation
        loop.last_metrics = values
        for hook in hooks:
            hook.on_metrics(loop, step, values)
        if not math.isfinite(values["loss"]):
            raise Diverged(step)

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            record(*pending)
            pending = None

    try:
        for hook in hooks:
            hook.on_start(loop)
        while loop.step < loop.until and loop.stop_reason is None:
            inputs, targets = batch(loop.step)
            loop.tokens_per_step = rate.tokens_per_step = int(inputs.shape[0] * inputs.shape[1])
            loop.state, metrics = train_step(loop.state, inputs, targets)
            if pending is not None:
                record(*pending)  # one step late: the step just dispatched keeps the device busy
            loop.step += 1
            pending = (loop.step, metrics)
            for hook in hooks:
                hook.on_step(loop)
            due = [hook for hook in hooks if hook.every and loop.step % hook.every == 0]
            if due:
                flush()
                for hook in due:
                    hook.on_boundary(loop)
                rate.restart(loop.step)
        flush()
        if loop.stop_reason is None:
            loop.stop_reason = "done"
        if loop.step > start or loop.stop_reason != "done":
            for hook in hooks:
                hook.on_end(loop)
    finally:
        for hook in hooks:
            hook.close()
    return loop.state, loop
