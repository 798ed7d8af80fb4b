"""Training: an immutable TrainState, a jitted train step and eval step, optax, and the training loop.

The step is a module-level pure function, jitted once with the state donated. The epoch-start reset of
the carried hidden state and the dropout keys (`fold_in(key, step)`) are functions of the step number
inside jit, so a run resumed from a checkpoint computes exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm import tqdm

from jaxvoice import __version__, checkpoint, logs, memory, model, parallel
from jaxvoice import config as config_lib
from jaxvoice.config import Config, ModelConfig, TrainConfig
from jaxvoice.errors import UserError
from jaxvoice.streams import Streams, eval_streams, train_streams


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: updates done so far
    params: dict
    opt_state: Any
    carry: jax.Array  # carry_LxSxBxH, carried from batch to batch
    key: jax.Array  # raw uint32 key data (checkpoints as a plain array); dropout keys fold in the step


def make_schedule(train_cfg: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    lr = train_cfg.learning_rate
    if train_cfg.lr_schedule == "constant":
        return optax.constant_schedule(lr)
    if train_cfg.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=max(1, train_cfg.max_epochs * steps_per_epoch))
    # torch-rnn: multiply by lr_decay_factor every lr_decay_every epochs
    return optax.exponential_decay(
        lr,
        transition_steps=train_cfg.lr_decay_every * steps_per_epoch,
        decay_rate=train_cfg.lr_decay_factor,
        staircase=True,
    )


def make_optimizer(train_cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam after clipping: torch-rnn clamps each gradient element ('value'); 'norm' rescales globally."""
    clip = (
        optax.clip(train_cfg.grad_clip)
        if train_cfg.clip == "value"
        else optax.clip_by_global_norm(train_cfg.grad_clip)
    )
    return optax.chain(clip, optax.adam(make_schedule(train_cfg, steps_per_epoch)))


def init_state(cfg: Config, steps_per_epoch: int, batch_size: int) -> TrainState:
    init_key, dropout_key = jax.random.split(jax.random.key(cfg.train.seed))
    params = model.init_params(init_key, cfg.model)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(cfg.train, steps_per_epoch).init(params),
        carry=model.init_carry(cfg.model, batch_size),
        key=jax.random.key_data(dropout_key),
    )


def memory_needed(cfg: Config) -> dict[str, int]:
    """Bytes one training step of `cfg` holds at once, counted from abstract shapes (nothing is allocated):
    the params, their gradients and the optimizer state (the state is donated, so the updated one reuses
    it), and the activations the backward pass keeps: the residuals of `jax.vjp` of the loss that are not
    the params themselves."""
    B, T = cfg.train.batch_size, cfg.train.seq_length
    tokens_BxT = jax.ShapeDtypeStruct((B, T), jnp.uint8)

    def residuals(p, tokens, carry):
        return jax.vjp(lambda p: model.loss(p, tokens, tokens, carry, cfg.model)[0], p)[1]

    with warnings.catch_warnings():  # index dtypes of absurd shapes warn while tracing; nothing runs
        warnings.simplefilter("ignore")
        params = jax.eval_shape(lambda: model.init_params(jax.random.key(0), cfg.model))
        opt_state = jax.eval_shape(make_optimizer(cfg.train, 1).init, params)
        carry = jax.eval_shape(lambda: model.init_carry(cfg.model, B))
        jaxpr = jax.make_jaxpr(residuals)(params, tokens_BxT, carry).jaxpr
    inputs = set(map(id, jaxpr.invars))
    kept = [v.aval for v in jaxpr.outvars if id(v) not in inputs and hasattr(v.aval, "shape")]
    params_bytes = memory.tree_bytes(params)
    return {
        "parameters": params_bytes,
        "gradients": params_bytes,
        "optimizer state": memory.tree_bytes(opt_state),
        "activations": memory.tree_bytes(kept),
    }


def check_memory(cfg: Config, num_devices: int = 1, available: int | None = None) -> None:
    """UserError, before anything is allocated, if a training step of `cfg` cannot fit in the memory of one
    device (`available` bytes if given; else the host's free memory on a CPU, the allocator's on GPU/TPU).
    With data parallelism each of `num_devices` holds the params and 1/num_devices of the activations."""
    needed = memory_needed(cfg)
    needed["activations"] = -(-needed["activations"] // num_devices)
    available = memory.device_available() if available is None else available
    fix = "lower model.rnn_size, model.num_layers, train.batch_size or train.seq_length"
    memory.check_fits(needed, available, fix, what=f"training {cfg.model.num_layers} x {cfg.model.rnn_size}")


def _train_step(state: TrainState, inputs_BxT, targets_BxT, *, cfg: Config, steps_per_epoch: int):
    optimizer = make_optimizer(cfg.train, steps_per_epoch)
    # A new epoch starts the streams from their beginnings: reset the carried state there.
    carry = jnp.where(state.step % steps_per_epoch == 0, 0.0, state.carry)
    dropout_key = None
    if cfg.model.dropout > 0:
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    (loss, carry), grads = jax.value_and_grad(model.loss, has_aux=True)(
        state.params, inputs_BxT, targets_BxT, carry, cfg.model, dropout_key
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        carry=carry,
    )
    lr = make_schedule(cfg.train, steps_per_epoch)(state.step)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr}


def state_sharding(state: TrainState, dp: parallel.DataParallel) -> TrainState:
    """Everything replicated but the carried state, which is split over devices with its streams."""
    return jax.tree.map(lambda _: dp.replicated, state).replace(carry=dp.carry)


def make_train_step(cfg: Config, steps_per_epoch: int, dp: parallel.DataParallel | None = None):
    """`fn(state, inputs_BxT, targets_BxT) -> (state, metrics)`, jitted once, the state donated.

    With `dp`, the batch and carry are split over its mesh and params/optimizer state are replicated.
    """
    step = functools.partial(_train_step, cfg=cfg, steps_per_epoch=steps_per_epoch)
    if dp is None:
        return jax.jit(step, donate_argnums=0)
    abstract = jax.eval_shape(lambda: init_state(cfg, steps_per_epoch, cfg.train.batch_size))
    shardings = state_sharding(abstract, dp)
    return jax.jit(
        step,
        in_shardings=(shardings, dp.batch, dp.batch),
        out_shardings=(shardings, dp.replicated),
        donate_argnums=0,
    )


def _eval_step(params, carry, inputs_BxT, targets_BxT, *, model_cfg: ModelConfig):
    loss, carry = model.loss(params, inputs_BxT, targets_BxT, carry, model_cfg)
    return loss, carry


def make_eval_step(model_cfg: ModelConfig):
    """`fn(params, carry, inputs_BxT, targets_BxT) -> (mean nats, carry)`, jitted, the carry donated."""
    return jax.jit(functools.partial(_eval_step, model_cfg=model_cfg), donate_argnums=1)


def evaluate(
    params: dict,
    model_cfg: ModelConfig,
    streams: Streams,
    eval_step=None,
    dp: parallel.DataParallel | None = None,
) -> float:
    """Mean loss in nats over the whole split, carrying the state through it from zero."""
    eval_step = eval_step or make_eval_step(model_cfg)
    carry = model.init_carry(model_cfg, streams.batch_size)
    place = lambda x, sharding: x
    if dp is not None:
        batch_sharding = dp.batch_sharding_for(streams.batch_size)
        carry_sharding = dp.carry if batch_sharding == dp.batch else dp.replicated
        carry = dp.put(np.zeros(carry.shape, carry.dtype), carry_sharding)
        place = dp.put
    losses = []
    for index in range(streams.steps):
        inputs, targets = streams.batch(index)
        if dp is not None:
            inputs, targets = place(inputs, batch_sharding), place(targets, batch_sharding)
        loss, carry = eval_step(params, carry, inputs, targets)
        losses.append(loss)
    # every batch has the same B*T targets, so the mean of means is the mean over all targets
    return float(np.mean(jax.device_get(losses), dtype=np.float64))


# --- the loop ---------------------------------------------------------------------------------------------


class Diverged(Exception):
    """The loss became NaN or Inf."""


class SaveFailed(Exception):
    """A checkpoint could not be written (full disk, lost mount, ...); orbax left the previous ones intact."""


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


class _Rate:
    """Training tokens/s over the last `window` logged steps, not counting evaluation and saving pauses."""

    def __init__(self, tokens_per_step: int, step: int, now: float, window: int = 50):
        self.tokens_per_step = tokens_per_step
        self.points = collections.deque([(step, now)], maxlen=window)
        self.value = 0.0

    def tick(self, step: int, now: float) -> float:
        first_step, first_time = self.points[0]
        if now > first_time and step > first_step:
            self.value = self.tokens_per_step * (step - first_step) / (now - first_time)
        self.points.append((step, now))
        return self.value

    def restart(self, step: int, now: float) -> None:
        self.points.clear()
        self.points.append((step, now))


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to stop at the next step boundary (and save); a second Ctrl-C is
    the usual KeyboardInterrupt."""

    def __init__(self):
        self.signal_number = None

    def __enter__(self):
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, self._handle)
        return self

    def _handle(self, number, frame):
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def fit(
    cfg: Config,
    corpus,
    run_dir: Path,
    *,
    target_step: int | None = None,
    minutes: float | None = None,
    resume: bool = False,
    quiet: bool = False,
) -> int:
    """Train until `target_step` (default: train.max_epochs), `minutes` of wall time, or a signal; saves
    checkpoints, evaluates, logs. Returns the process exit code (0 done, 1 diverged, 130/143 signal)."""
    B, T = cfg.train.batch_size, cfg.train.seq_length
    dp = parallel.data_parallel()
    dp.check_batch_size(B)
    first, count = dp.local_rows(B)
    streams = train_streams(corpus.split("train"), B, T)
    streams = Streams(streams.data, B, T, first_stream=first, num_local=count)  # this process's streams
    steps_per_epoch = streams.steps
    val_data = corpus.split("val")
    val = eval_streams(val_data, B, T) if len(val_data) > 1 else None
    primary = jax.process_index() == 0  # only process 0 logs and shows progress
    quiet = quiet or not primary
    say = (lambda *a: None) if quiet else (lambda msg: tqdm.write(msg, file=sys.stderr))

    state = init_state(cfg, steps_per_epoch, B)
    state = jax.device_put(state, state_sharding(state, dp))
    mngr = checkpoint.manager(run_dir, keep=cfg.train.keep_checkpoints)
    wall_before, resumed = 0.0, None
    if resume:
        restored = checkpoint.restore_train(mngr, state, cfg)
        if restored is None:
            resumed = f"{run_dir} has no checkpoint yet: starting from step 0"
        else:
            state, meta = restored
            wall_before = float(meta.get("wall_s", 0.0))
            resumed = f"resuming {run_dir} from step {int(state.step)}"
    start_step = int(state.step)
    target = target_step if target_step is not None else cfg.train.max_epochs * steps_per_epoch
    keep = start_step if resume else None
    make_log = logs.CsvLog if primary else logs.NullLog
    try:
        train_log = make_log(run_dir / "train.csv", logs.TRAIN_COLUMNS, keep_through_step=keep)
        val_log = make_log(run_dir / "val.csv", logs.VAL_COLUMNS, keep_through_step=keep)
    except OSError as e:
        mngr.close()
        raise UserError(
            f"cannot write the logs of {run_dir} ({_describe(e)}): make the run's folder writable, or copy the "
            "run somewhere writable and --resume it there"
        ) from None
    if resumed:
        say(resumed)
    if start_step >= target:
        say(f"{run_dir} is already at step {start_step} (target {target}); nothing to do")
        train_log.close(), val_log.close(), mngr.close()
        return 0

    train_step, eval_step = make_train_step(cfg, steps_per_epoch, dp), make_eval_step(cfg.model)
    deadline = time.monotonic() + 60.0 * minutes if minutes is not None else None
    t_start = time.monotonic()
    rate = _Rate(B * T, start_step, t_start)
    last = {"loss": float("nan"), "val_loss": None}
    bar = tqdm(
        total=target,
        initial=start_step,
        unit="step",
        disable=True if quiet else None,  # None: a bar on a terminal only, never lines of it in a log file
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
    )

    def record(step: int, metrics) -> None:
        """Fetch a dispatched step's metrics (a host sync on that step only) and log them."""
        m = jax.device_get(metrics)
        now = time.monotonic()
        loss = float(m["loss"])
        tokens_per_s = rate.tick(step, now)
        if step == start_step + 1:
            rate.restart(step, now)  # the first step's time is mostly compilation
        train_log.write(
            step,
            round(step / steps_per_epoch, 6),
            loss,
            loss * model.BITS_PER_NAT,
            float(m["lr"]),
            float(m["grad_norm"]),
            round(tokens_per_s, 1),
            round(wall_before + now - t_start, 3),
        )
        last["loss"] = loss
        bar.set_postfix_str(
            f"loss {loss:.4f} bits {loss * model.BITS_PER_NAT:.3f} tok/s {tokens_per_s:,.0f}", refresh=False
        )
        if not math.isfinite(loss):
            raise Diverged(step)

    def run_eval(step: int) -> None:
        if val is None:
            return
        val_loss = evaluate(state.params, cfg.model, val, eval_step, dp)
        val_log.write(step, round(step / steps_per_epoch, 6), val_loss, val_loss * model.BITS_PER_NAT)
        val_log.flush()
        last["val_loss"] = (step, val_loss)
        say(f"step {step}: val loss {val_loss:.4f} nats, {val_loss * model.BITS_PER_NAT:.4f} bits/sample")
        rate.restart(step, time.monotonic())

    def save(step: int) -> None:
        train_log.flush(sync=True), val_log.flush(sync=True)
        val_loss = last["val_loss"][1] if last["val_loss"] and last["val_loss"][0] == step else None
        meta = {
            "config": config_lib.to_dict(cfg),
            "corpus": corpus.meta,
            "corpus_path": str(corpus.path),
            "step": step,
            "epoch": step / steps_per_epoch,
            "val_loss": val_loss,
            "cursor": {"epoch": step // steps_per_epoch, "batch": step % steps_per_epoch},
            "wall_s": wall_before + time.monotonic() - t_start,
            "jaxvoice_version": __version__,
        }
        try:
            checkpoint.save(mngr, state, meta, val_loss)
        except Exception as e:  # orbax and tensorstore wrap I/O errors in their own types
            raise SaveFailed(step) from e
        rate.restart(step, time.monotonic())

    exit_code, pending, step = 0, None, start_step
    try:
        with _StopFlag() as stop:
            while step < target:
                inputs, targets = streams.batch(step % steps_per_epoch)
                inputs, targets = dp.global_batch(inputs, B), dp.global_batch(targets, B)
                state, metrics = train_step(state, inputs, targets)
                if pending is not None:
                    record(*pending)  # one step late: the step just dispatched keeps the device busy
                step += 1
                pending = (step, metrics)
                bar.update(1)
                out_of_time = deadline is not None and time.monotonic() >= deadline
                stopping = stop.signal_number is not None or out_of_time or step == target
                if step % cfg.train.eval_every == 0 or step == target or out_of_time:  # and at the end
                    record(*pending)
                    pending = None
                    run_eval(step)
                if step % cfg.train.checkpoint_every == 0 or stopping:
                    if pending is not None:
                        record(*pending)
                        pending = None
                    save(step)
                if stopping:
                    if stop.signal_number is not None:
                        name = signal.Signals(stop.signal_number).name
                        say(f"{name}: saved step {step}; continue with --resume")
                        exit_code = 128 + stop.signal_number
                    elif out_of_time:
                        say(f"time budget of {minutes} min reached: saved step {step}")
                    break
    except Diverged as e:
        print(
            f"jaxvoice train: loss is NaN/Inf at step {e.args[0]}; stopped. The last good checkpoint is "
            f"kept; lower train.learning_rate or train.grad_clip and --resume",
            file=sys.stderr,
        )
        exit_code = 1
    except (OSError, SaveFailed) as e:
        error = e.__cause__ if isinstance(e, SaveFailed) else e
        print(
            f"jaxvoice train: could not write the run at step {step} ({_describe(error)}); stopped. The last "
            f"complete checkpoint is kept: free some space (or fix the problem) and --resume",
            file=sys.stderr,
        )
        exit_code = 1
    finally:
        bar.close()
        for close in (mngr.close, train_log.close, val_log.close):
            with contextlib.suppress(OSError):  # already reported: the disk is full or gone
                close()
    if exit_code == 0 and not quiet:
        val_text = ""
        if last["val_loss"]:
            vl = last["val_loss"][1]
            val_text = f", val {vl:.4f} nats = {vl * model.BITS_PER_NAT:.4f} bits/sample"
        print(f"trained to step {step}: loss {last['loss']:.4f} nats{val_text}; run in {run_dir}")
    return exit_code
