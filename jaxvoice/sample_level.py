"""The tiered family's sample level (`jaxvoice.tiered`): what predicts each sample from the samples before it
and the conditioning vector its frame tier gave it.

Two forms (`model.sample_level`): SampleRNN's MLP over the F = `model.frame_size` samples up to the input
(`model.sample_layers` hidden layers of width D = `model.sample_size`), or one layer of the frame tier's
cell over every sample (`"rnn"`). A sample enters as its embedding (`model.sample_input = "embedded"`,
SampleRNN's), its value scaled to [-2, 2] (`"scaled"`) or both: the value lets the MLP form a linear
prediction from the F samples, as audio coders do, where embeddings alone make it learn each symbol's place
on the amplitude axis from data. The frame tier conditions the MLP's first layer (SampleRNN's) or, with
`model.sample_conditioning = "every"`, each of its layers.

Training runs it over whole windows (`window_logits`: the MLP's first layer one GEMM over F inputs side by
side); generation one sample at a time (`step_logits`), the MLP's first layer then a sum of F rows of
`tables` (each symbol's input at each position times its weights), made once by `sample_prepare`.

Shape letters: B batch, T samples, F frame size, E wordvec_size, I one sample's input width, D sample_size,
V 256.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from jaxvoice import cells, model, sample_frame, stored
from jaxvoice.config import ModelConfig

V = model.V


def scaled(symbols: jax.Array) -> jax.Array:
    """Symbols as values in [-2, 2] (SampleRNN's scaling of its frame inputs)."""
    return (symbols.astype(jnp.float32) / (V - 1) - 0.5) * 4.0


def _embedded(cfg: ModelConfig) -> bool:
    """Whether a sample enters as its embedding (`embed_VxE`)."""
    return cfg.sample_input in ("embedded", "both")


def input_size(cfg: ModelConfig) -> int:
    """I: the width of one sample as the sample level reads it."""
    return (cfg.wordvec_size if _embedded(cfg) else 0) + (1 if cfg.sample_input in ("scaled", "both") else 0)


def _inputs(params, symbols_NxS, cfg) -> jax.Array:
    """[N, S * I]: each of S samples as the sample level reads it, side by side."""
    parts = []
    if _embedded(cfg):
        parts.append(params["embed_VxE"][symbols_NxS])
    if cfg.sample_input in ("scaled", "both"):
        parts.append(scaled(symbols_NxS)[..., None])
    return jnp.concatenate(parts, axis=-1).reshape(symbols_NxS.shape[0], -1)


def in_weight(cfg: ModelConfig) -> str:
    """The name of the MLP's first layer: [F * E, D] over embeddings (its name from before
    `model.sample_input`, so older runs load unchanged), or [F * I, D]."""
    return "in_FExD" if cfg.sample_input == "embedded" else "in_FIxD"


def init_params(
    embed_key: jax.Array, out_key: jax.Array, keys: Iterator[jax.Array], cfg: ModelConfig
) -> dict:
    """The sample level's params: embeddings from `embed_key`, the output layer from `out_key`, the rest
    from `keys`."""
    F, E, D = cfg.frame_size, cfg.wordvec_size, cfg.sample_size
    params = {"out_DxV": model.dense_init(out_key, D, V), "out_b_V": jnp.zeros((V,), jnp.float32)}
    if _embedded(cfg):
        params["embed_VxE"] = jax.random.normal(embed_key, (V, E), jnp.float32)
    if cfg.sample_level == "mlp":
        params[in_weight(cfg)] = model.dense_init(next(keys), F * input_size(cfg), D)
        params["in_b_D"] = jnp.zeros((D,), jnp.float32)
        params["hidden"] = [
            {"w_DxD": model.dense_init(next(keys), D, D), "b_D": jnp.zeros((D,), jnp.float32)}
            for _ in range(cfg.sample_layers - 1)
        ]
    else:
        params["sample_layer"] = cells.get_cell(cfg.cell).init(next(keys), input_size(cfg) + D, D)
    return params


def _tables(params, cfg) -> jax.Array:
    """[F, V, D]: what each symbol at each window position adds to the MLP's first layer (its input times
    that position's rows of the layer's weights), so that a generation step sums F rows instead of a
    product."""
    F, D = cfg.frame_size, cfg.sample_size
    w_FxIxD = params[in_weight(cfg)].reshape(F, -1, D).astype(jnp.dtype(cfg.dtype))
    symbols_VxI = _inputs(params, jnp.arange(V)[:, None], cfg).astype(w_FxIxD.dtype)
    return jnp.einsum("vi,fid->fvd", symbols_VxI, w_FxIxD, preferred_element_type=jnp.float32)


def _dropout(key, rate: float, x: jax.Array) -> jax.Array:
    """x with each element zeroed with probability `rate` and the rest scaled by 1 / (1 - rate)."""
    keep = 1.0 - rate
    return x * (jax.random.bernoulli(key, keep, x.shape).astype(x.dtype) / keep)


def _mlp_logits(params, windows_NxF, cond_NxCD, cfg, tables_FxVxD=None, dropout_key=None, above=None):
    """The MLP: logits [N, V] of the sample after each window of F symbols, given its conditioning: the
    first layer's D, then each conditioned layer's above it (`tiered_maps.conditioned_layers`), or those
    added by `above(c, z_NxD)` (layer c's product plus its conditioning). The first layer is one GEMM over
    the F sample inputs side by side, or (generation, with `_tables`) a sum of F table rows. With
    `dropout_key`, each hidden layer's output is dropped at rate `model.dropout`."""
    D = cfg.sample_size
    if above is None:
        conditioned = cond_NxCD.shape[1] // D

        def above(c, z_NxD):
            return z_NxD + cond_NxCD[:, c * D : (c + 1) * D] if c < conditioned else z_NxD

    keys = iter(jax.random.split(dropout_key, cfg.sample_layers)) if dropout_key is not None else None
    drop = (lambda x: _dropout(next(keys), cfg.dropout, x)) if keys is not None else (lambda x: x)
    if tables_FxVxD is None:
        first_NxD = model.dense(cfg, _inputs(params, windows_NxF, cfg), params[in_weight(cfg)])
    else:
        first_NxD = tables_FxVxD[jnp.arange(cfg.frame_size), windows_NxF].sum(axis=1)
    x_NxD = drop(jax.nn.relu(first_NxD + params["in_b_D"] + cond_NxCD[:, :D]))
    # The ReLU outputs are fused into the next product, so their weight gradients take x as it is (copy_x):
    # a copied x^T recomputed each layer's sums in a transposing loop, 27 of an 88 ms step (Intel Xeon).
    for c, layer in enumerate(params["hidden"], start=1):
        z_NxD = above(c, model.dense(cfg, x_NxD, layer["w_DxD"], copy_x=False))
        x_NxD = drop(jax.nn.relu(z_NxD + layer["b_D"]))
    return model.dense(cfg, x_NxD, params["out_DxV"], copy_x=False) + params["out_b_V"]


def _rnn_cfg(cfg: ModelConfig) -> ModelConfig:
    """The sample-level rnn as a one-layer stack of the same cell, D wide."""
    return dataclasses.replace(cfg, rnn_size=cfg.sample_size, num_layers=1)


def window_logits(params, e_BxTL, L: int, cond_TxBxD, carry, cfg, dropout_key=None, above=None):
    """Training: (logits [T * B, V] time-major, the carry after the window) for the T targets of a window,
    from e = the L - 1 inputs before it and its T inputs [B, T + L - 1], and each target's conditioning of
    the first layer; `above` = (y [K, G, B, E], b [F, E]): the layers' above it, y + b for target kF + i
    (G = 1: one y for the frame's F, or F), E = (C - 1) * D (`tiered_maps.conditioned_layers`)."""
    F, D = cfg.frame_size, cfg.sample_size
    T, B = cond_TxBxD.shape[:2]
    if cfg.sample_level == "mlp":
        # target t's window: e[t + L - F : t + L], the F inputs up to and including x_t
        windows_TxBxF = jnp.stack([e_BxTL[:, L - F + j : L - F + j + T] for j in range(F)], axis=-1)
        add_above = None
        if above is not None:
            y_KxGxBxE, b_FxE = above

            def add_above(c, z_NxD):  # time-major rows t * B + b, t = kF + i
                if c * D > y_KxGxBxE.shape[-1]:
                    return z_NxD
                part = slice((c - 1) * D, c * D)
                z_KxFxBxD = z_NxD.reshape(T // F, F, B, D) + y_KxGxBxE[..., part] + b_FxE[None, :, None, part]
                return z_KxFxBxD.reshape(T * B, D)

        logits_NxV = _mlp_logits(
            params, windows_TxBxF.transpose(1, 0, 2).reshape(T * B, F), cond_TxBxD.reshape(T * B, D), cfg,
            dropout_key=dropout_key, above=add_above,
        )  # fmt: skip
        return logits_NxV, ()
    inputs_NxI = _inputs(params, e_BxTL[:, L - 1 :].T.reshape(T * B, 1), cfg)  # time-major rows, as cond's
    x_NxI = jnp.concatenate([inputs_NxI, cond_TxBxD.reshape(T * B, D)], axis=-1)
    hs_TxBxD, (carry,) = model.run_layers(_rnn_cfg(cfg), [params["sample_layer"]], (carry,), x_NxI, None)
    if dropout_key is not None:
        hs_TxBxD = _dropout(dropout_key, cfg.dropout, hs_TxBxD)
    return model.dense(cfg, hs_TxBxD.reshape(T * B, D), params["out_DxV"]) + params["out_b_V"], carry


def step_logits(params, window_BxF, cond_BxD, carry, cfg, tables_FxVxD=None):
    """Generation: (logits_BxV of the next sample, carry) from the last F inputs (the newest last) and the
    sample's conditioning vector. `params` may be `sample_prepare`'s."""
    if cfg.sample_level == "mlp":
        return _mlp_logits(params, window_BxF, cond_BxD, cfg, tables_FxVxD), ()
    x_BxI = jnp.concatenate([_inputs(params, window_BxF[:, -1:], cfg), cond_BxD], axis=-1)
    h_BxD, (carry,) = model.step_layers(_rnn_cfg(cfg), [params["sample_layer"]], (carry,), x_BxI)
    out_DxV = stored.as_dtype(params["out_DxV"], jnp.dtype(cfg.dtype))
    return cells.dot(h_BxD, out_DxV) + params["out_b_V"], carry


def sample_prepare(params, cfg, store) -> dict:
    """The sample level's params as generation reads them (`store(w)` keeps a product's weights as the
    sampler's layout wants): the MLP's first layer as `_tables` (under "tables_FxVxD"; drop
    `in_weight(cfg)`), the other products stored; where they are stored packed and `model.kernels` is
    "auto", also the operands of the frame kernel (`jaxvoice.sample_frame`, under "frame_kernel")."""
    sp = {"out_DxV": store(params["out_DxV"])}
    if cfg.sample_level == "mlp":
        sp["tables_FxVxD"] = _tables(params, cfg)
        sp["hidden"] = [dict(layer, w_DxD=store(layer["w_DxD"])) for layer in params["hidden"]]
        packed = isinstance(sp["out_DxV"], stored.Stored) and sp["out_DxV"].form == "packed"
        if packed and cfg.kernels == "auto" and sample_frame.available():
            sp["frame_kernel"] = sample_frame.kernel_params(sp)
    else:
        sp["sample_layer"] = cells.store_layer(cfg.cell, params["sample_layer"], store)
    return sp
