"""Training steps: an immutable TrainState, the jitted train and eval steps, optax, and evaluation.

The step is a module-level pure function, jitted once with the state donated. The epoch-start reset of the
carried hidden state, the streams `train.state_reset_prob` starts fresh and the dropout keys
(`fold_in(key, step)`) are functions of the step number inside jit, so a run resumed from a checkpoint
computes exactly what an uninterrupted run computes. The loss and
the optimizer are arguments: `make_train_step(cfg, n, loss_fn=my_loss, optimizer=optax.adamw(1e-3))`.
The loop that runs the steps is `jaxvoice.loop`; the run directory around it, `jaxvoice.run`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxvoice import memory, model, parallel
from jaxvoice.config import Config, ModelConfig, TrainConfig
from jaxvoice.streams import Streams

LossFn = Callable[
    ..., tuple[jax.Array, Any]
]  # model.loss's signature: (params, inputs, targets, carry, cfg, key)


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: updates done so far
    params: dict  # the weights the gradients update
    opt_state: Any
    carry: Any  # the model's carry (batch-first arrays), carried from batch to batch
    key: jax.Array  # raw uint32 key data (checkpoints as a plain array); dropout keys fold in the step
    averaged: dict | None = None  # with train.ema_decay > 0: the moving average of `params`

    @property
    def model_params(self) -> dict:
        """The params the run's model is: evaluated, saved for sampling, sampled at checkpoints (the moving
        average of the weights with train.ema_decay > 0, else the weights)."""
        return self.params if self.averaged is None else self.averaged


def ema_rate(ema_decay: float, step: jax.Array, warmup: float = 10.0) -> jax.Array:
    """The moving average's decay at update `step`: `ema_decay`, but (1 + step) / (warmup + step) while that
    is smaller, so that the first updates' weights (far from any good model) are soon forgotten: the average
    then spans about the last step / (warmup - 1) updates. With warmup 10 that stays below 0.9995 until step
    ~18,000, so in a run shorter than that the warm-up, not `ema_decay`, sets the span."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(ema_decay, (1.0 + step) / (warmup + step))


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
    """Adam after clipping: torch-rnn clamps each gradient element ('value'); 'norm' rescales globally. With
    `train.weight_decay` > 0, AdamW: the matrices and tables (not biases or gains) shrink by lr x decay
    per step, a regulariser for corpora of minutes that a model this size learns by heart."""
    clip = (
        optax.clip(train_cfg.grad_clip)
        if train_cfg.clip == "value"
        else optax.clip_by_global_norm(train_cfg.grad_clip)
    )
    schedule = make_schedule(train_cfg, steps_per_epoch)
    if not train_cfg.weight_decay:  # plain Adam's state, as every run before weight_decay had
        return optax.chain(clip, optax.adam(schedule))
    matrices = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(clip, optax.adamw(schedule, weight_decay=train_cfg.weight_decay, mask=matrices))


def init_state(
    cfg: Config,
    steps_per_epoch: int,
    batch_size: int,
    *,
    optimizer: optax.GradientTransformation | None = None,
) -> TrainState:
    """Step 0: params from train.seed, the optimizer's state (default: `make_optimizer`), a zero carry, and
    with train.ema_decay > 0 the moving average (a copy of the params)."""
    init_key, dropout_key = jax.random.split(jax.random.key(cfg.train.seed))
    params = model.init_params(init_key, cfg.model)
    optimizer = optimizer or make_optimizer(cfg.train, steps_per_epoch)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        carry=model.init_carry(cfg.model, batch_size),
        key=jax.random.key_data(dropout_key),
        averaged=jax.tree.map(jnp.copy, params) if cfg.train.ema_decay > 0 else None,
    )


_RESET_SALT = 0x5E7  # folded into the step's key for the state resets: a stream apart from dropout's


def _train_step(state: TrainState, inputs_BxT, targets_BxT, *, cfg, steps_per_epoch, loss_fn, optimizer):
    # A new epoch starts the streams from their beginnings: reset the carried state there.
    new_epoch = state.step % steps_per_epoch == 0
    B = inputs_BxT.shape[0]
    fresh = model.init_carry(cfg.model, B)
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    if cfg.train.state_reset_prob > 0:
        # and each stream, with chance p, at any window: a held-out split's streams and an unprimed sample
        # start from the fresh state, which epoch starts alone show a model once in an epoch
        reset_B = new_epoch | jax.random.bernoulli(
            jax.random.fold_in(step_key, _RESET_SALT), cfg.train.state_reset_prob, (B,)
        )
        at = lambda c: reset_B.reshape((B,) + (1,) * (c.ndim - 1))  # noqa: E731 (batch-first carries)
        carry = jax.tree.map(lambda c, f: jnp.where(at(c), f, c), state.carry, fresh)
    else:
        carry = jax.tree.map(lambda c, f: jnp.where(new_epoch, f, c), state.carry, fresh)
    dropout_key = step_key if cfg.model.dropout > 0 else None
    (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, inputs_BxT, targets_BxT, carry, cfg.model, dropout_key
    )
    updates, opt_state = (optimizer or make_optimizer(cfg.train, steps_per_epoch)).update(
        grads, state.opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    averaged = state.averaged
    if averaged is not None:  # Polyak averaging: a high learning rate's noise averaged out of the model
        rate = ema_rate(cfg.train.ema_decay, state.step, cfg.train.ema_warmup)
        averaged = jax.tree.map(lambda a, p: (rate * a + (1.0 - rate) * p).astype(a.dtype), averaged, params)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, carry=carry, averaged=averaged
    )
    if optimizer is None:
        lr = make_schedule(cfg.train, steps_per_epoch)(state.step)
    else:  # found where optax.inject_hyperparams keeps it; NaN where the optimizer does not say
        lr = optax.tree_utils.tree_get(opt_state, "learning_rate", jnp.nan)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": jnp.asarray(lr, jnp.float32)}


def state_sharding(state: TrainState, dp: parallel.DataParallel) -> TrainState:
    """Everything replicated but the carried state, which is split over devices with its streams."""
    return jax.tree.map(lambda _: dp.replicated, state).replace(
        carry=jax.tree.map(lambda _: dp.batch, state.carry)
    )


def make_train_step(
    cfg: Config,
    steps_per_epoch: int,
    dp: parallel.DataParallel | None = None,
    *,
    loss_fn: LossFn = model.loss,
    optimizer: optax.GradientTransformation | None = None,
):
    """`fn(state, inputs_BxT, targets_BxT) -> (state, metrics)`, jitted once, the state donated.

    `loss_fn` has `model.loss`'s signature and returns (mean loss, new carry); `optimizer` (default: torch-rnn's
    clip + Adam, `make_optimizer`) must be the one the state was made with (`init_state(optimizer=...)`).
    Metrics: loss, grad_norm and lr (NaN for an optimizer that does not expose `learning_rate`). With `dp`,
    the batch and carry are split over its mesh and params/optimizer state are replicated.
    """
    step = functools.partial(
        _train_step, cfg=cfg, steps_per_epoch=steps_per_epoch, loss_fn=loss_fn, optimizer=optimizer
    )
    if dp is None:
        return jax.jit(step, donate_argnums=0)
    abstract = jax.eval_shape(
        lambda: init_state(cfg, steps_per_epoch, cfg.train.batch_size, optimizer=optimizer)
    )
    shardings = state_sharding(abstract, dp)
    return jax.jit(
        step,
        in_shardings=(shardings, dp.batch, dp.batch),
        out_shardings=(shardings, dp.replicated),
        donate_argnums=0,
    )


def _eval_step(params, carry, inputs_BxT, targets_BxT, *, model_cfg: ModelConfig, loss_fn: LossFn):
    return loss_fn(params, inputs_BxT, targets_BxT, carry, model_cfg, None)


def make_eval_step(model_cfg: ModelConfig, loss_fn: LossFn = model.loss):
    """`fn(params, carry, inputs_BxT, targets_BxT) -> (mean nats, carry)`, jitted, the carry donated."""
    return jax.jit(functools.partial(_eval_step, model_cfg=model_cfg, loss_fn=loss_fn), donate_argnums=1)


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
        carry = jax.tree.map(
            lambda c: dp.put(np.asarray(c), batch_sharding), carry
        )  # the family's fresh state
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


# --- memory -------------------------------------------------------------------------------------------------


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
    needed = {
        "parameters": params_bytes,
        "gradients": params_bytes,
        "optimizer state": memory.tree_bytes(opt_state),
        "activations": memory.tree_bytes(kept),
    }
    if cfg.train.ema_decay > 0:
        needed["moving average"] = params_bytes
    return needed


def check_memory(cfg: Config, num_devices: int = 1, available: int | None = None) -> None:
    """UserError, before anything is allocated, if a training step of `cfg` cannot fit in the memory of one
    device (`available` bytes if given; else the host's free memory on a CPU, the allocator's on GPU/TPU).
    With data parallelism each of `num_devices` holds the params and 1/num_devices of the activations."""
    needed = memory_needed(cfg)
    needed["activations"] = -(-needed["activations"] // num_devices)
    available = memory.device_available() if available is None else available
    fix = "lower model.rnn_size, model.num_layers, train.batch_size or train.seq_length"
    memory.check_fits(needed, available, fix, what=f"training {cfg.model.num_layers} x {cfg.model.rnn_size}")
