"""The frame-level tier (SampleRNN, Mehri et al. 2017) as a model family: `model.kind = "tiered"`.

A frame tier, `model.num_layers` layers of the registered `model.cell` of width `model.rnn_size`, steps once
per frame of F = `model.frame_size` samples and reads the F samples before the frame (scaled to [-2, 2],
or embedded: `model.frame_input`). Its output, mapped by a learned linear upsampling to F conditioning
vectors, drives a sample level of width D = `model.sample_size` that predicts each sample from the F
samples before it: an MLP over their embeddings (`model.sample_level = "mlp"`, `model.sample_layers`
hidden layers), or one layer of the cell over every sample (`"rnn"`), given its embedding and its
conditioning vector. The recurrence runs F times less often than a flat stack's and spans F times more
audio per step; most of the work is whole-window matrix products. `model.dropout` (training only) drops
the inputs of frame layers above the first, the frame tier's output before the upsampling, and the sample
level's hidden activations (its regulariser: the MLP and the upsampling hold most of the parameters).

Windows are a multiple of F long and start at frame boundaries. The carry (batch-first, like every
family's) is {"frame": the frame tier's cells, "window": the last F input symbols [B, F], "sample": the
sample-level cell's state (rnn) or (), "cond": the current frame's conditioning [B, F, D], "pos": the
position in it [B]}. Generation (`sample_scan`) is a `lax.scan` over frames whose body steps the frame tier
once and scans the F samples of the frame; `step` does one sample (the frame tier at frame starts).

Shape letters: B batch, T samples (K = T / F frames), F frame size, E wordvec_size, H rnn_size, D
sample_size, V 256.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxvoice import cells, model, stored
from jaxvoice.config import ModelConfig
from jaxvoice.errors import UserError

V = model.V
SILENCE = 128  # the linear and μ-law code of 0.0: what the history of a fresh stream holds


def _dense_init(key, fan_in: int, fan_out: int) -> jax.Array:
    return jax.random.normal(key, (fan_in, fan_out), jnp.float32) / math.sqrt(fan_in)


def _frame_input_size(cfg: ModelConfig) -> int:
    return cfg.frame_size * (cfg.wordvec_size if cfg.frame_input == "embedded" else 1)


def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    F, E, H, D = cfg.frame_size, cfg.wordvec_size, cfg.rnn_size, cfg.sample_size
    cell = cells.get_cell(cfg.cell)
    keys = iter(jax.random.split(key, cfg.num_layers + cfg.sample_layers + 8))
    params = {
        "frame_layers": [
            cell.init(next(keys), _frame_input_size(cfg) if layer == 0 else H, H)
            for layer in range(cfg.num_layers)
        ],
        "up_HxFD": _dense_init(next(keys), H, F * D),
        "up_b_FD": jnp.zeros((F * D,), jnp.float32),
        "embed_VxE": jax.random.normal(next(keys), (V, E), jnp.float32),
        "out_DxV": _dense_init(next(keys), D, V),
        "out_b_V": jnp.zeros((V,), jnp.float32),
    }
    if cfg.frame_input == "embedded":
        params["frame_embed_VxE"] = jax.random.normal(next(keys), (V, E), jnp.float32)
    if cfg.sample_level == "mlp":
        params["in_FExD"] = _dense_init(next(keys), F * E, D)
        params["in_b_D"] = jnp.zeros((D,), jnp.float32)
        params["hidden"] = [
            {"w_DxD": _dense_init(next(keys), D, D), "b_D": jnp.zeros((D,), jnp.float32)}
            for _ in range(cfg.sample_layers - 1)
        ]
    else:
        params["sample_layer"] = cell.init(next(keys), E + D, D)
    return params


def init_carry(cfg: ModelConfig, batch: int) -> dict:
    cell = cells.get_cell(cfg.cell)
    F, D = cfg.frame_size, cfg.sample_size
    return {
        "frame": tuple(cell.initial_carry(batch, cfg.rnn_size) for _ in range(cfg.num_layers)),
        "window": jnp.full((batch, F), SILENCE, jnp.int32),
        "sample": cell.initial_carry(batch, D) if cfg.sample_level == "rnn" else (),
        "cond": jnp.zeros((batch, F, D), jnp.float32),
        "pos": jnp.zeros((batch,), jnp.int32),
    }


def _frame_inputs(params, frames_NxF, cfg) -> jax.Array:
    """The frame tier's input for each frame [N, F] of symbols: [N, F] scaled to [-2, 2], or [N, F * E]."""
    if cfg.frame_input == "embedded":
        return params["frame_embed_VxE"][frames_NxF].reshape(frames_NxF.shape[0], -1)
    return (frames_NxF.astype(jnp.float32) / (V - 1) - 0.5) * 4.0


def _conditioning(params, o_NxH, cfg) -> jax.Array:
    """F conditioning vectors [N, F, D] per frame tier output: the learned linear upsampling."""
    up_NxFD = model.dense(cfg, o_NxH, params["up_HxFD"]) + params["up_b_FD"]
    return up_NxFD.reshape(o_NxH.shape[0], cfg.frame_size, cfg.sample_size)


def _tables(params, cfg) -> jax.Array:
    """[F, V, D]: what each symbol at each window position adds to the MLP's first layer (its embedding
    times that position's rows of in_FExD), so that a generation step sums F rows instead of a product."""
    F, E, D = cfg.frame_size, cfg.wordvec_size, cfg.sample_size
    w_FxExD = params["in_FExD"].reshape(F, E, D).astype(jnp.dtype(cfg.dtype))
    return jnp.einsum("ve,fed->fvd", params["embed_VxE"].astype(w_FxExD.dtype), w_FxExD,
                      preferred_element_type=jnp.float32)  # fmt: skip


def _dropout(key, rate: float, x: jax.Array) -> jax.Array:
    """x with each element zeroed with probability `rate` and the rest scaled by 1 / (1 - rate)."""
    keep = 1.0 - rate
    return x * (jax.random.bernoulli(key, keep, x.shape).astype(x.dtype) / keep)


def _mlp_logits(params, windows_NxF, cond_NxD, cfg, tables_FxVxD=None, dropout_key=None):
    """The sample-level MLP: logits [N, V] of the sample after each window of F symbols, given its
    conditioning vector. The first layer is one GEMM over the F embeddings side by side, or (generation, with
    `_tables`) a sum of F table rows. With `dropout_key`, each hidden layer's output is dropped at rate
    `model.dropout`."""
    keys = iter(jax.random.split(dropout_key, cfg.sample_layers)) if dropout_key is not None else None
    drop = (lambda x: _dropout(next(keys), cfg.dropout, x)) if keys is not None else (lambda x: x)
    if tables_FxVxD is None:
        x_NxFE = params["embed_VxE"][windows_NxF].reshape(windows_NxF.shape[0], -1)
        first_NxD = model.dense(cfg, x_NxFE, params["in_FExD"])
    else:
        first_NxD = tables_FxVxD[jnp.arange(cfg.frame_size), windows_NxF].sum(axis=1)
    x_NxD = drop(jax.nn.relu(first_NxD + params["in_b_D"] + cond_NxD))
    for layer in params["hidden"]:
        x_NxD = drop(jax.nn.relu(model.dense(cfg, x_NxD, layer["w_DxD"]) + layer["b_D"]))
    return model.dense(cfg, x_NxD, params["out_DxV"]) + params["out_b_V"]


def _sample_cfg(cfg: ModelConfig) -> ModelConfig:
    """The sample-level rnn as a one-layer stack of the same cell, D wide."""
    import dataclasses

    return dataclasses.replace(cfg, rnn_size=cfg.sample_size, num_layers=1)


def logits(params, tokens_BxT, carry, cfg, dropout_key=None):
    """Time-major logits_TxBxV of the sample after each input, and the carry after the window."""
    F, D = cfg.frame_size, cfg.sample_size
    B, T = tokens_BxT.shape
    K = T // F
    x_BxT = tokens_BxT.astype(jnp.int32)
    # e[:, j] = the input j - (F - 1): the history of F - 1 symbols, then this window's.
    e_BxTF = jnp.concatenate([carry["window"][:, 1:], x_BxT], axis=1)
    # Frame k reads e[kF : kF + F] (the F samples up to its first target's input); its output conditions
    # the targets kF .. kF + F - 1.
    frames_KxBxF = e_BxTF[:, : K * F].reshape(B, K, F).transpose(1, 0, 2)
    inputs_NxI = _frame_inputs(params, frames_KxBxF.reshape(K * B, F), cfg)
    masks, sample_key = None, None
    if dropout_key is not None and cfg.dropout > 0:
        frame_key, sample_key = jax.random.split(dropout_key)
        masks = model.dropout_masks(frame_key, cfg, (K, B, cfg.rnn_size))
    o_KxBxH, frame_carry = model.run_layers(
        cfg, params["frame_layers"], carry["frame"], inputs_NxI, None, masks
    )
    if masks is not None:
        o_KxBxH = o_KxBxH * masks[0]
    cond_KxBxFxD = _conditioning(params, o_KxBxH.reshape(K * B, -1), cfg).reshape(K, B, F, D)
    cond_TxBxD = cond_KxBxFxD.transpose(0, 2, 1, 3).reshape(T, B, D)  # t = kF + i
    if cfg.sample_level == "mlp":
        # target t's window: e[t : t + F], the F inputs up to and including x_t
        windows_TxBxF = jnp.stack([e_BxTF[:, j : j + T] for j in range(F)], axis=-1).transpose(1, 0, 2)
        logits_NxV = _mlp_logits(
            params, windows_TxBxF.reshape(T * B, F), cond_TxBxD.reshape(T * B, D), cfg, dropout_key=sample_key
        )
        sample_carry = ()
    else:
        x_TxBxI = jnp.concatenate([params["embed_VxE"][x_BxT.T], cond_TxBxD], axis=-1)
        hs_TxBxD, (sample_carry,) = model.run_layers(
            _sample_cfg(cfg), [params["sample_layer"]], (carry["sample"],), x_TxBxI.reshape(T * B, -1), None
        )
        if sample_key is not None:
            hs_TxBxD = _dropout(sample_key, cfg.dropout, hs_TxBxD)
        logits_NxV = model.dense(cfg, hs_TxBxD.reshape(T * B, D), params["out_DxV"]) + params["out_b_V"]
    new_carry = {
        "frame": frame_carry,
        "window": e_BxTF[:, -F:],
        "sample": sample_carry,
        "cond": cond_KxBxFxD[-1],
        "pos": jnp.zeros((B,), jnp.int32),  # the next window starts a frame
    }
    return logits_NxV.reshape(T, B, V), new_carry


def _frame_step(params, carry, cfg):
    """At a frame start: the frame tier one step on the window (the F inputs up to now), and its F
    conditioning vectors."""
    inputs_BxI = _frame_inputs(params, carry["window"], cfg)
    o_BxH, frame_carry = model.step_layers(cfg, params["frame_layers"], carry["frame"], inputs_BxI)
    return dict(carry, frame=frame_carry, cond=_conditioning(params, o_BxH, cfg))


def _sample_step(params, carry, token_B, cfg, tables_FxVxD=None, position=None):
    """The sample level at position carry["pos"] of the frame: (logits_BxV, carry with pos + 1). A loop that
    knows the position (`position`, a Python int) saves reading it from the carry."""
    B = token_B.shape[0]
    if position is None:
        cond_BxD = jnp.take_along_axis(carry["cond"], carry["pos"][:, None, None], axis=1)[:, 0]
    else:
        cond_BxD = carry["cond"][:, position]
    if cfg.sample_level == "mlp":
        logits_BxV = _mlp_logits(params, carry["window"], cond_BxD, cfg, tables_FxVxD)
        sample_carry = ()
    else:
        x_BxI = jnp.concatenate([params["embed_VxE"][token_B], cond_BxD], axis=-1)
        h_BxD, (sample_carry,) = model.step_layers(_sample_cfg(cfg), [params["sample_layer"]],
                                                   (carry["sample"],), x_BxI)  # fmt: skip
        out_DxV = stored.as_dtype(params["out_DxV"], jnp.dtype(cfg.dtype))
        logits_BxV = cells.dot(h_BxD, out_DxV) + params["out_b_V"]
    pos = (carry["pos"] + 1) % cfg.frame_size
    return logits_BxV, dict(carry, sample=sample_carry, pos=pos.reshape(B))


def _push(carry, token_B):
    """The window with the newest input appended (its oldest dropped)."""
    return dict(carry, window=jnp.concatenate([carry["window"][:, 1:], token_B[:, None]], axis=1))


def step(params, carry, token_B, cfg):
    """One generation step from any position (the frame tier runs when a frame starts)."""
    carry = _push(carry, token_B.astype(jnp.int32))
    carry = jax.lax.cond(carry["pos"][0] == 0, lambda c: _frame_step(params, c, cfg), lambda c: c, carry)
    return _sample_step(params, carry, token_B.astype(jnp.int32), cfg)


def sample_prepare(params, cfg, store):
    """The params as the sampler reads them: the MLP's first layer as `_tables`, the other products' weights
    as `store(w)` keeps them (e.g. packed for jaxvoice's CPU kernel), the frame tier's too where its cell
    multiplies only through `cells.dot`."""
    sp = {name: value for name, value in params.items() if name != "in_FExD"}
    if cfg.sample_level == "mlp":
        sp["tables_FxVxD"] = _tables(params, cfg)
        sp["hidden"] = [dict(layer, w_DxD=store(layer["w_DxD"])) for layer in params["hidden"]]
    else:
        sp["sample_layer"] = cells.store_layer(cfg.cell, params["sample_layer"], store)
    sp["out_DxV"] = store(params["out_DxV"])
    sp["up_HxFD"] = store(params["up_HxFD"])  # read once per frame, but F x D wide: the largest product
    sp["frame_layers"] = [cells.store_layer(cfg.cell, layer, store) for layer in params["frame_layers"]]
    return sp


def sample_scan(sp, carry, token_B, u_CxB, choose, cfg):
    """C steps of generation from a frame start (C a multiple of F): a scan over the C / F frames whose body
    steps the frame tier once and scans the F samples of the frame, each chosen by `choose(logits, u)`.
    `token_B` is the input of the first step; what `step` computes, step by step. `sp` is `sample_prepare`'s
    (or the params themselves)."""
    F = cfg.frame_size
    C, B = u_CxB.shape
    tables_FxVxD = sp.get("tables_FxVxD")

    def frame(state, u_FxB):
        carry, token = state
        carry = _frame_step(sp, _push(carry, token), cfg)
        chosen = []
        for position in range(F):  # unrolled, so each step knows its position in the frame
            if position:
                carry = _push(carry, token)
            logits_BxV, carry = _sample_step(sp, carry, token, cfg, tables_FxVxD, position)
            token = choose(logits_BxV, u_FxB[position])
            chosen.append(token.astype(jnp.uint8))
        return (carry, token), jnp.stack(chosen)

    state = (carry, token_B.astype(jnp.int32))
    (carry, token_B), tokens_KxFxB = jax.lax.scan(frame, state, u_CxB.reshape(C // F, F, B))
    return carry, token_B, tokens_KxFxB.reshape(C, B).T


def check(cfg: ModelConfig) -> None:
    cells.get_cell(cfg.cell)
    if cfg.frame_size < 2:
        raise UserError(f"model.frame_size must be at least 2 for model.kind tiered, got {cfg.frame_size}")
    for key, value, options in (
        ("model.frame_input", cfg.frame_input, ("scaled", "embedded")),
        ("model.sample_level", cfg.sample_level, ("mlp", "rnn")),
    ):
        if value not in options:
            raise UserError(f"{key} must be one of {', '.join(options)}, got '{value}'")


TIERED = model.Family(
    init_params,
    init_carry,
    logits,
    step,
    check,
    window=lambda cfg: cfg.frame_size,
    sample_scan=sample_scan,
    sample_prepare=sample_prepare,
)
model.register_family("tiered", TIERED)
