"""Recurrent networks over 256 byte symbols as pure functions of a dict pytree.

Shape letters: B batch (parallel streams), T time steps, V vocabulary (256), E wordvec_size,
H rnn_size, G gate width (4H lstm, 3H gru, H rnn), L layers, S states per layer (2 lstm: h, c; else 1: h).

The carry of the whole stack is one array `carry_LxSxBxH`: one buffer to scan, shard over B and save.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxvoice.config import ModelConfig

V = 256
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
STATES = {"lstm": 2, "gru": 1, "rnn": 1}


def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    """torch-rnn's initialisation: N(0, 1/sqrt(in + H)) weights, zero biases, LSTM forget bias 1."""
    H, G = cfg.rnn_size, GATES[cfg.cell] * cfg.rnn_size
    keys = jax.random.split(key, cfg.num_layers + 2)
    params = {"embed_VxE": jax.random.normal(keys[0], (V, cfg.wordvec_size), jnp.float32)}
    layers = []
    for layer in range(cfg.num_layers):
        fan_in = cfg.wordvec_size if layer == 0 else H
        std = 1.0 / math.sqrt(fan_in + H)
        kx, kh = jax.random.split(keys[layer + 1])
        bias_G = jnp.zeros((G,), jnp.float32)
        if cfg.cell == "lstm":  # gate order i, f, o, g
            bias_G = bias_G.at[H : 2 * H].set(1.0)
        layers.append(
            {
                "wx_IxG": std * jax.random.normal(kx, (fan_in, G), jnp.float32),
                "wh_HxG": std * jax.random.normal(kh, (H, G), jnp.float32),
                "b_G": bias_G,
            }
        )
    params["layers"] = layers
    bound = 1.0 / math.sqrt(H)
    params["out_HxV"] = jax.random.uniform(keys[-1], (H, V), jnp.float32, -bound, bound)
    params["out_b_V"] = jnp.zeros((V,), jnp.float32)
    return params


def init_carry(cfg: ModelConfig, batch_size: int) -> jax.Array:
    return jnp.zeros((cfg.num_layers, STATES[cfg.cell], batch_size, cfg.rnn_size), jnp.float32)


# --- cells: (w_h, carry_SxBxH, xproj_BxG) -> carry_SxBxH; the input projection is done by the caller ---


def _lstm_from_proj(wh_HxG, carry_SxBxH, xproj_BxG):
    h_BxH, c_BxH = carry_SxBxH[0], carry_SxBxH[1]
    pre_BxG = xproj_BxG + h_BxH.astype(wh_HxG.dtype) @ wh_HxG
    i, f, o, g = jnp.split(pre_BxG.astype(jnp.float32), 4, axis=-1)
    c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_BxH = jax.nn.sigmoid(o) * jnp.tanh(c_BxH)
    return jnp.stack([h_BxH, c_BxH])


def _gru_from_proj(wh_HxG, carry_SxBxH, xproj_BxG):
    # The cuDNN/PyTorch GRU: the reset gate multiplies (W_hn h + b_hn), so one fused recurrent GEMM serves
    # all three gates. The recurrent bias b_hn is folded into xproj for r and z only; for n it is 0 here.
    h_BxH = carry_SxBxH[0]
    hproj_BxG = (h_BxH.astype(wh_HxG.dtype) @ wh_HxG).astype(jnp.float32)
    xr, xz, xn = jnp.split(xproj_BxG.astype(jnp.float32), 3, axis=-1)
    hr, hz, hn = jnp.split(hproj_BxG, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return ((1.0 - z) * n + z * h_BxH)[None]


def _rnn_from_proj(wh_HxG, carry_SxBxH, xproj_BxG):
    h_BxH = carry_SxBxH[0]
    return jnp.tanh((xproj_BxG + h_BxH.astype(wh_HxG.dtype) @ wh_HxG).astype(jnp.float32))[None]


CELLS: dict[str, Callable] = {"lstm": _lstm_from_proj, "gru": _gru_from_proj, "rnn": _rnn_from_proj}


def cell(kind: str, layer_params: dict, carry_SxBxH: jax.Array, x_BxI: jax.Array) -> jax.Array:
    """One step of one layer: the new carry_SxBxH (its [0] is the output h)."""
    xproj_BxG = x_BxI @ layer_params["wx_IxG"] + layer_params["b_G"]
    return CELLS[kind](layer_params["wh_HxG"], carry_SxBxH, xproj_BxG)


def lstm(layer_params, carry_SxBxH, x_BxI):
    return cell("lstm", layer_params, carry_SxBxH, x_BxI)


def gru(layer_params, carry_SxBxH, x_BxI):
    return cell("gru", layer_params, carry_SxBxH, x_BxI)


def rnn(layer_params, carry_SxBxH, x_BxI):
    return cell("rnn", layer_params, carry_SxBxH, x_BxI)


# --- the stack ---


def _dropout(key, x, rate):
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def forward(
    params: dict,
    tokens_BxT: jax.Array,
    carry_LxSxBxH: jax.Array,
    cfg: ModelConfig,
    dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Logits [B, T, V] (float32) and the carry after the last step. Dropout only when a key is given.

    Layer by layer: each layer's input projection for all T steps is one GEMM (for layer 0 a row lookup of
    embed @ W_x, since the input is one-hot), and only the recurrent product stays inside `lax.scan`.
    """
    dtype = jnp.dtype(cfg.dtype)
    step_fn = CELLS[cfg.cell]
    tokens_TxB = tokens_BxT.T.astype(jnp.int32)
    use_dropout = dropout_key is not None and cfg.dropout > 0
    layer_keys = jax.random.split(dropout_key, cfg.num_layers) if use_dropout else None
    new_carry = []
    seq_TxBxH = None
    for layer, lp in enumerate(params["layers"]):
        if layer == 0:
            table_VxG = params["embed_VxE"] @ lp["wx_IxG"] + lp["b_G"]
            xproj_TxBxG = table_VxG.astype(dtype)[tokens_TxB]
        else:
            if use_dropout:
                seq_TxBxH = _dropout(layer_keys[layer], seq_TxBxH, cfg.dropout)
            xproj_TxBxG = seq_TxBxH @ lp["wx_IxG"].astype(dtype) + lp["b_G"].astype(dtype)
        wh_HxG = lp["wh_HxG"].astype(dtype)

        def scan_step(carry_SxBxH, xproj_BxG, wh_HxG=wh_HxG):
            carry_SxBxH = step_fn(wh_HxG, carry_SxBxH, xproj_BxG)
            return carry_SxBxH, carry_SxBxH[0].astype(dtype)

        last_SxBxH, seq_TxBxH = jax.lax.scan(scan_step, carry_LxSxBxH[layer], xproj_TxBxG)
        new_carry.append(last_SxBxH)
    if use_dropout:
        seq_TxBxH = _dropout(layer_keys[0], seq_TxBxH, cfg.dropout)
    logits_BxTxV = (
        jnp.einsum("tbh,hv->btv", seq_TxBxH, params["out_HxV"].astype(dtype)).astype(jnp.float32)
        + params["out_b_V"]
    )
    return logits_BxTxV, jnp.stack(new_carry)


def loss(
    params: dict,
    tokens_BxT: jax.Array,
    targets_BxT: jax.Array,
    carry_LxSxBxH: jax.Array,
    cfg: ModelConfig,
    dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy in nats over all B*T targets, and the new carry (for the next window)."""
    logits_BxTxV, carry = forward(params, tokens_BxT, carry_LxSxBxH, cfg, dropout_key)
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV)
    nll_BxT = -jnp.take_along_axis(logp_BxTxV, targets_BxT.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    return nll_BxT.mean(), carry


def step(params: dict, carry_LxSxBxH: jax.Array, token_B: jax.Array, cfg: ModelConfig):
    """One generation step: logits_BxV for the next symbol after token_B, and the new carry."""
    dtype = jnp.dtype(cfg.dtype)
    new_carry = []
    x_BxI = params["embed_VxE"][token_B.astype(jnp.int32)]
    for layer, lp in enumerate(params["layers"]):
        xproj_BxG = (x_BxI @ lp["wx_IxG"] + lp["b_G"]).astype(dtype)
        c = CELLS[cfg.cell](lp["wh_HxG"].astype(dtype), carry_LxSxBxH[layer], xproj_BxG)
        new_carry.append(c)
        x_BxI = c[0]
    logits_BxV = x_BxI @ params["out_HxV"] + params["out_b_V"]
    return logits_BxV, jnp.stack(new_carry)


BITS_PER_NAT = 1.0 / math.log(2.0)
