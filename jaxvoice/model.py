"""Recurrent networks over 256 byte symbols as pure functions of a dict pytree.

Shape letters: B batch (parallel streams), T time steps, V vocabulary (256), E wordvec_size,
H rnn_size, G gate width (4H lstm, 3H gru, H rnn), L layers, S states per layer (2 lstm: h, c; else 1: h).

The carry of the whole stack is one array `carry_LxSxBxH`: one buffer to scan, shard over B and save.

Speed (see ../shared/PERF_NOTES.md and scripts/bench_train.py): the stack runs layer by layer, so each
layer's input projection for all T steps is one GEMM outside the scan (layer 0's is a row lookup of
embed @ W_x, the input being one-hot) and only `h @ W_h` and the gate math stay inside. The LSTM layer has a
hand-written backward (`_lstm_layer`): its reverse scan does only `dpre @ W_h.T` per step, and each weight
gradient is one GEMM over all steps afterwards (on a CPU with x^T copied out first, so that YNNPACK rather
than Eigen does it: +4.5% tokens/s on `small`, and +3.5% more for the output layer's, `_projection`);
everything in its backward that depends only on the forward pass is computed for all steps at once, outside
the reverse scan. Its gates take one tanh over the whole gate row: sigmoid(x) = (1 + tanh(x / 2)) / 2,
the halving a constant row multiplied in the tanh's own fusion (scaling the weights instead cost a pass over
them and their gradients every step, measured 1-4% slower).

On one CPU device with float32 weights, the LSTM layer's two time loops (the forward and the reverse
recurrence, nothing else) run in jaxvoice's own kernels (`lstm_recurrence`, XLA FFI custom calls) instead of
`lax.scan`: per step one pass per 16 hidden units with the gates' sums kept in registers (the backward derives
its per-step factors there too). The kernels also do the small passes around the loops that would each be a
pass over a [T, B, 4H] array in XLA: layer 0's row lookup, the bias, packing W_h, and the bias's and the
lookup table's gradients. On `small`'s shapes the loops alone take 12-13 + 14 ms instead of 30 + 40; with
all of the above the bench's `small` went from ~23k to ~30-32k tokens/s, voice_2016 ~+5% (its scans were
already near the GEMM rate). Everywhere else, and with `NATIVE_LSTM = False`, the scans below.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxvoice import lstm_recurrence
from jaxvoice.config import ModelConfig

V = 256
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
STATES = {"lstm": 2, "gru": 1, "rnn": 1}
BITS_PER_NAT = 1.0 / math.log(2.0)
# Two time steps per loop iteration in the LSTM layer's scans: halves the loop's fixed per-step costs
# (measured +7% tokens/s on `small`, no change on voice_2016; 4 was no better than 2).
SCAN_UNROLL = 2
# Whether LSTM layers may use the CPU kernels of `lstm_recurrence` where it is usable (read when tracing).
NATIVE_LSTM = True


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


def _mm(x, w):
    """x @ w in w's dtype (the compute dtype), accumulated and returned in at least float32."""
    return jnp.matmul(
        x.astype(w.dtype),
        w,
        preferred_element_type=jnp.promote_types(w.dtype, jnp.float32),
    )


def _lstm_gate_scale(H: int, dtype=jnp.float32) -> jax.Array:
    """0.5 on the i, f, o columns, 1 on g: tanh of the scaled row gives every gate from one tanh."""
    return jnp.concatenate([jnp.full((3 * H,), 0.5, dtype), jnp.ones((H,), dtype)])


# --- cells: (w_h, carry_SxBxH, xproj_BxG) -> carry_SxBxH; the input projection is done by the caller ---


def _lstm_from_scaled(c_BxH, pre_BxG):
    """The LSTM update from a gate row whose i, f, o columns are already halved; returns (h, c)."""
    H = c_BxH.shape[-1]
    a_BxG = jnp.tanh(pre_BxG)
    i, f, o = (0.5 + 0.5 * a_BxG[:, k * H : (k + 1) * H] for k in range(3))
    c_BxH = f * c_BxH + i * a_BxG[:, 3 * H :]
    return o * jnp.tanh(c_BxH), c_BxH


def _lstm_from_proj(wh_HxG, carry_SxBxH, xproj_BxG):
    pre_BxG = xproj_BxG + _mm(carry_SxBxH[0], wh_HxG)
    scale = _lstm_gate_scale(carry_SxBxH.shape[-1], pre_BxG.dtype)
    h_BxH, c_BxH = _lstm_from_scaled(carry_SxBxH[1].astype(pre_BxG.dtype), pre_BxG * scale)
    return jnp.stack([h_BxH, c_BxH])


def _gru_from_proj(wh_HxG, carry_SxBxH, xproj_BxG):
    # The cuDNN/PyTorch GRU: the reset gate multiplies (W_hn h + b_hn), so one fused recurrent GEMM serves
    # all three gates. The recurrent bias b_hn is folded into xproj for r and z only; for n it is 0 here.
    h_BxH = carry_SxBxH[0]
    hproj_BxG = _mm(h_BxH, wh_HxG)
    xr, xz, xn = jnp.split(xproj_BxG.astype(hproj_BxG.dtype), 3, axis=-1)
    hr, hz, hn = jnp.split(hproj_BxG, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return ((1.0 - z) * n + z * h_BxH)[None]


def _rnn_from_proj(wh_HxG, carry_SxBxH, xproj_BxG):
    return jnp.tanh(xproj_BxG + _mm(carry_SxBxH[0], wh_HxG))[None]


CELLS: dict[str, Callable] = {
    "lstm": _lstm_from_proj,
    "gru": _gru_from_proj,
    "rnn": _rnn_from_proj,
}


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


# --- one LSTM layer over T steps, with a hand-written backward ---


def _native(wh_HxG, seq_length: int) -> bool:
    """Whether this layer's time loops run in jaxvoice's CPU kernels (lstm_recurrence) instead of XLA scans."""
    return NATIVE_LSTM and lstm_recurrence.usable(wh_HxG, seq_length)


def _lstm_scan(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, keep):
    """The forward recurrence. Step t's input projection for row b is table_RxG[index_TxB[t, b]] + b_G: layer 0
    indexes `embed @ W_x` by the tokens; deeper layers give the projections of all T * B inputs in order and
    index None. Returns (h_T, c_T) and hs_TxBxH, or with `keep` what the backward needs too:
    (hs, h_prevs_T_HxN (the h each step's gates saw: h0, hs[:-1]; transposed, N = T * B, for the weight
    gradient), cs, a (each step's tanh'd gate row))."""
    B, H = h_BxH.shape
    T = table_RxG.shape[0] // B if index_TxB is None else index_TxB.shape[0]
    if _native(wh_HxG, T):  # the kernel reads the table's rows itself: no [T, B, 4H] gather or bias pass
        if index_TxB is None:
            index_TxB = jnp.arange(T * B, dtype=jnp.int32).reshape(T, B)
        hs_TxBxH, cs_TxBxH, a_TxBxG = lstm_recurrence.forward(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH)
        last = (hs_TxBxH[-1], cs_TxBxH[-1])
    else:
        last, outputs = _lstm_scan_xla(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, T, keep)
        if not keep:
            return last, outputs
        hs_TxBxH, cs_TxBxH, a_TxBxG = outputs
    if not keep:
        return last, hs_TxBxH
    h_prevs_TxBxH = jnp.concatenate([h_BxH[None].astype(hs_TxBxH.dtype), hs_TxBxH[:-1]])
    return last, (hs_TxBxH, _transposed(h_prevs_TxBxH), cs_TxBxH, a_TxBxG)


def _rows(table_RxG, index_TxB, T, B):
    """Each step's input projections [T, B, G]: the table's rows by index, or (index None) the table in order."""
    return table_RxG.reshape(T, B, -1) if index_TxB is None else table_RxG[index_TxB]


def _lstm_scan_xla(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, T, keep):
    """`_lstm_scan` as a `lax.scan`: (h_T, c_T) and hs_TxBxH, with `keep` (hs, cs, a)."""
    B, H = h_BxH.shape
    pre_TxBxG = _rows(table_RxG, index_TxB, T, B) + b_G
    scale_G = _lstm_gate_scale(H, pre_TxBxG.dtype)

    def step(hc, pre_BxG):
        a_BxG = jnp.tanh((pre_BxG + _mm(hc[0], wh_HxG)) * scale_G)
        i, f, o = (0.5 + 0.5 * a_BxG[:, k * H : (k + 1) * H] for k in range(3))
        c_BxH = f * hc[1] + i * a_BxG[:, 3 * H :]
        h_BxH = o * jnp.tanh(c_BxH)
        return (h_BxH, c_BxH), ((h_BxH, c_BxH, a_BxG) if keep else h_BxH)

    return jax.lax.scan(step, (h_BxH, c_BxH), pre_TxBxG, unroll=SCAN_UNROLL)


def _lstm_backward(res, cotangents, index_TxB=None, table_rows=0):
    """The reverse recurrence shared by both LSTM layer forms, from the forward's residuals: dpre_TxBxG, dh0,
    dc0, db_G (dpre summed over steps and rows) and, given the forward's index and its table's row count,
    dtable_RxG (dpre summed by the table row each step read; else None)."""
    wh_HxG, h0_BxH, c0_BxH, _, cs_TxBxH, a_TxBxG = res
    dhs_TxBxH, dhT_BxH, dcT_BxH = cotangents
    H = h0_BxH.shape[-1]
    f32 = dhs_TxBxH.dtype
    if _native(wh_HxG, cs_TxBxH.shape[0]):  # the kernel derives the factors below itself, per step
        dpre_TxBxG, dh0, dc0, db_G, dtable_RxG = lstm_recurrence.backward(
            a_TxBxG, cs_TxBxH, c0_BxH, dhs_TxBxH, wh_HxG, dhT_BxH, dcT_BxH, index_TxB, table_rows
        )
        return dpre_TxBxG, dh0.astype(h0_BxH.dtype), dc0.astype(c0_BxH.dtype), db_G, dtable_RxG
    c_prev_TxBxH = jnp.concatenate([c0_BxH[None].astype(cs_TxBxH.dtype), cs_TxBxH[:-1]])
    # Everything that depends only on the forward pass, for all steps at once (one wide fusion, outside
    # the scan): dpre = [dc, dc, dh, dc] * k and dc += dh * p, with dc flowing back through f. The 0.25s:
    # d sigmoid(x)/dx = 0.5 * (1 - tanh(x / 2)^2) times the 0.5 of the halving.
    ai, af, ao, g = (a_TxBxG[..., k * H : (k + 1) * H] for k in range(4))
    tc_TxBxH = jnp.tanh(cs_TxBxH)
    k_TxBxG = jnp.concatenate(
        [
            g * 0.25 * (1.0 - ai * ai),
            c_prev_TxBxH * 0.25 * (1.0 - af * af),
            tc_TxBxH * 0.25 * (1.0 - ao * ao),
            (0.5 + 0.5 * ai) * (1.0 - g * g),
        ],
        axis=-1,
    )
    p_TxBxH = (0.5 + 0.5 * ao) * (1.0 - tc_TxBxH * tc_TxBxH)
    f_TxBxH = 0.5 + 0.5 * af
    whT_GxH = wh_HxG.T

    def step(carry, xs):
        dh_BxH, dc_BxH = carry
        k_BxG, p_BxH, f_BxH, dh_out_BxH = xs
        dh_BxH = dh_BxH + dh_out_BxH
        dc_BxH = dc_BxH + dh_BxH * p_BxH
        dpre_BxG = jnp.concatenate([dc_BxH, dc_BxH, dh_BxH, dc_BxH], axis=-1) * k_BxG
        return (_mm(dpre_BxG, whT_GxH).astype(f32), dc_BxH * f_BxH), dpre_BxG

    xs = (k_TxBxG, p_TxBxH, f_TxBxH, dhs_TxBxH)
    (dh0, dc0), dpre_TxBxG = jax.lax.scan(
        step, (dhT_BxH.astype(f32), dcT_BxH.astype(f32)), xs, reverse=True, unroll=SCAN_UNROLL
    )
    dtable_RxG = None
    if index_TxB is not None:
        dtable_RxG = jnp.zeros((table_rows, dpre_TxBxG.shape[-1]), f32).at[index_TxB].add(dpre_TxBxG)
    return dpre_TxBxG, dh0.astype(h0_BxH.dtype), dc0.astype(c0_BxH.dtype), dpre_TxBxG.sum((0, 1)), dtable_RxG


def _transposed(x_TxBxK):
    """x as [K, T * B], the lhs of a weight gradient's GEMM."""
    T, B, K = x_TxBxK.shape
    x_KxN = x_TxBxK.reshape(T * B, K).T
    if jax.default_backend() == "cpu":
        # XLA would fold the transpose into the dot, and a dot that contracts the lhs's rows is not one for
        # YNNPACK but for Eigen, ~1.4x slower per FLOP here; copying x^T out first costs less (+4.5% tokens/s
        # on `small`). Accelerators' GEMMs take transposed operands as they are.
        x_KxN = jax.lax.optimization_barrier(x_KxN)
    return x_KxN


def _weight_grad(x_KxN, dpre_TxBxG, dtype):
    """sum over t, b of x^T dpre: one GEMM over all N = T * B rows, from x transposed."""
    dpre_NxG = dpre_TxBxG.reshape(x_KxN.shape[1], -1).astype(dtype)
    return jnp.matmul(
        x_KxN.astype(dtype), dpre_NxG, preferred_element_type=jnp.promote_types(dtype, jnp.float32)
    )


def _input_grad(dy_TxBxV, w_KxV):
    """dy @ w^T, the gradient of x @ w with respect to x (YNNPACK takes the transposed rhs as it is)."""
    return jax.lax.dot_general(
        dy_TxBxV.astype(w_KxV.dtype), w_KxV, (((2,), (1,)), ((), ())),
        preferred_element_type=jnp.promote_types(w_KxV.dtype, jnp.float32),
    )  # fmt: skip


@jax.custom_vjp
def _projection(x_TxBxK, w_KxV):
    """x @ w (`_mm`) whose backward computes dW as `_weight_grad` does (on a CPU: YNNPACK's GEMM, not Eigen's)."""
    return _mm(x_TxBxK, w_KxV)


def _projection_fwd(x_TxBxK, w_KxV):
    return _mm(x_TxBxK, w_KxV), (x_TxBxK, w_KxV)


def _projection_bwd(res, dy_TxBxV):
    x_TxBxK, w_KxV = res
    dx_TxBxK = _input_grad(dy_TxBxV, w_KxV)
    dw_KxV = _weight_grad(_transposed(x_TxBxK), dy_TxBxV, w_KxV.dtype)
    return dx_TxBxK.astype(x_TxBxK.dtype), dw_KxV.astype(w_KxV.dtype)


_projection.defvjp(_projection_fwd, _projection_bwd)


@jax.custom_vjp
def _lstm_layer(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH):
    """hs_TxBxH, h_T, c_T of one LSTM layer whose input projection at step t, row b is
    table_RxG[index_TxB[t, b]] + b_G: layer 0's table is embed @ W_x indexed by the tokens; a deeper layer's is
    `_projection(x, W_x)`, all T * B rows in order (index None), so its dW_x and dx come from that VJP."""
    (h_BxH, c_BxH), hs_TxBxH = _lstm_scan(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, keep=False)
    return hs_TxBxH, h_BxH, c_BxH


def _lstm_layer_fwd(table_RxG, index_TxB, b_G, wh_HxG, h0_BxH, c0_BxH):
    (hT, cT), kept = _lstm_scan(table_RxG, index_TxB, b_G, wh_HxG, h0_BxH, c0_BxH, keep=True)
    res = (wh_HxG, h0_BxH, c0_BxH, *kept[1:])
    return (kept[0], hT, cT), (res, table_RxG, index_TxB, b_G)


def _lstm_layer_bwd(res, cotangents):
    res, table_RxG, index_TxB, b_G = res
    wh_HxG, h_prevs_T_HxN = res[0], res[3]
    dpre_TxBxG, dh0, dc0, db_G, dtable_RxG = _lstm_backward(res, cotangents, index_TxB, table_RxG.shape[0])
    if index_TxB is None:  # the table is the projections in order: its gradient is dpre itself
        dtable_RxG = dpre_TxBxG.reshape(table_RxG.shape)
    dwh_HxG = _weight_grad(h_prevs_T_HxN, dpre_TxBxG, wh_HxG.dtype)
    return (
        dtable_RxG.astype(table_RxG.dtype),
        None,  # the index: integers
        db_G.astype(b_G.dtype),
        dwh_HxG.astype(wh_HxG.dtype),
        dh0,
        dc0,
    )


_lstm_layer.defvjp(_lstm_layer_fwd, _lstm_layer_bwd)


def _generic_layer(kind, pre_TxBxG, wh_HxG, carry_SxBxH):
    """GRU/RNN layer over T steps: plain scan, plain autodiff."""

    def step(carry_SxBxH, pre_BxG):
        carry_SxBxH = CELLS[kind](wh_HxG, carry_SxBxH, pre_BxG)
        return carry_SxBxH, carry_SxBxH[0]

    last_SxBxH, hs_TxBxH = jax.lax.scan(step, carry_SxBxH, pre_TxBxG)
    return hs_TxBxH, last_SxBxH


# --- the stack ---


def dropout_masks(key: jax.Array, cfg: ModelConfig, shape: tuple) -> list[jax.Array]:
    """Per layer l, the multiplier (0 or 1/(1-p)) for the input of layer l (l > 0) and, at l = 0, for the
    output of the last layer (torch-rnn puts dropout after every recurrent layer)."""
    keys = jax.random.split(key, cfg.num_layers)
    keep = 1.0 - cfg.dropout
    return [jax.random.bernoulli(k, keep, shape).astype(jnp.float32) / keep for k in keys]


def _compute_dtype(cfg: ModelConfig):
    return jnp.dtype(cfg.dtype)


def _hidden(params, tokens_BxT, carry_LxSxBxH, cfg, dropout_key):
    """The last layer's outputs hs_TxBxH (time-major; dropout applied) and the new carry."""
    dtype = _compute_dtype(cfg)
    acc = jnp.promote_types(dtype, jnp.float32)  # accumulation / elementwise dtype
    B, T = tokens_BxT.shape
    H = cfg.rnn_size
    tokens_TxB = tokens_BxT.T.astype(jnp.int32)
    masks = None
    if dropout_key is not None and cfg.dropout > 0:
        masks = dropout_masks(dropout_key, cfg, (T, B, H))
    new_carry = []
    hs_TxBxH = None
    for layer, lp in enumerate(params["layers"]):
        wx_IxG, b_G, wh_HxG = lp["wx_IxG"].astype(dtype), lp["b_G"].astype(acc), lp["wh_HxG"].astype(dtype)
        carry_SxBxH = carry_LxSxBxH[layer].astype(acc)
        if layer == 0:  # the input is one-hot: its projection is a row of embed @ W_x
            table_RxG, index_TxB = _mm(params["embed_VxE"].astype(acc), wx_IxG), tokens_TxB
        else:  # every step's projection, in order
            if masks is not None:
                hs_TxBxH = hs_TxBxH * masks[layer].astype(acc)
            table_RxG, index_TxB = _projection(hs_TxBxH, wx_IxG).reshape(T * B, -1), None
        if cfg.cell == "lstm":
            hs_TxBxH, h_BxH, c_BxH = _lstm_layer(
                table_RxG, index_TxB, b_G, wh_HxG, carry_SxBxH[0], carry_SxBxH[1]
            )
            new_carry.append(jnp.stack([h_BxH, c_BxH]))
        else:
            pre_TxBxG = _rows(table_RxG, index_TxB, T, B) + b_G
            hs_TxBxH, last_SxBxH = _generic_layer(cfg.cell, pre_TxBxG, wh_HxG, carry_SxBxH)
            new_carry.append(last_SxBxH)
    if masks is not None:
        hs_TxBxH = hs_TxBxH * masks[0].astype(acc)
    return hs_TxBxH, jnp.stack(new_carry).astype(carry_LxSxBxH.dtype)


def _logits(params, hs_TxBxH, cfg):
    dtype = _compute_dtype(cfg)
    return _projection(hs_TxBxH, params["out_HxV"].astype(dtype)) + params["out_b_V"]


def forward(
    params: dict,
    tokens_BxT: jax.Array,
    carry_LxSxBxH: jax.Array,
    cfg: ModelConfig,
    dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Logits [B, T, V] (float32) and the carry after the last step. Dropout only when a key is given."""
    hs_TxBxH, carry = _hidden(params, tokens_BxT, carry_LxSxBxH, cfg, dropout_key)
    return _logits(params, hs_TxBxH, cfg).transpose(1, 0, 2), carry


def loss(
    params: dict,
    tokens_BxT: jax.Array,
    targets_BxT: jax.Array,
    carry_LxSxBxH: jax.Array,
    cfg: ModelConfig,
    dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy in nats over all B*T targets, and the new carry (for the next window)."""
    hs_TxBxH, carry = _hidden(params, tokens_BxT, carry_LxSxBxH, cfg, dropout_key)
    logits_TxBxV = _logits(params, hs_TxBxH, cfg)
    targets_TxB = targets_BxT.T.astype(jnp.int32)
    # log-softmax and the target's logit in one pass over the logits; no one-hot array
    picked_TxB = jnp.sum(jnp.where(jnp.arange(V) == targets_TxB[..., None], logits_TxBxV, 0.0), axis=-1)
    nll_TxB = jax.nn.logsumexp(logits_TxBxV, axis=-1) - picked_TxB
    return nll_TxB.mean(), carry


def step(params: dict, carry_LxSxBxH: jax.Array, token_B: jax.Array, cfg: ModelConfig):
    """One generation step: logits_BxV for the next symbol after token_B, and the new carry."""
    dtype = _compute_dtype(cfg)
    acc = jnp.promote_types(dtype, jnp.float32)
    new_carry = []
    x_BxI = params["embed_VxE"][token_B.astype(jnp.int32)]
    for layer, lp in enumerate(params["layers"]):
        xproj_BxG = _mm(x_BxI, lp["wx_IxG"].astype(dtype)) + lp["b_G"].astype(acc)
        c = CELLS[cfg.cell](lp["wh_HxG"].astype(dtype), carry_LxSxBxH[layer].astype(acc), xproj_BxG)
        new_carry.append(c)
        x_BxI = c[0]
    logits_BxV = _mm(x_BxI, params["out_HxV"].astype(dtype)) + params["out_b_V"]
    return logits_BxV, jnp.stack(new_carry).astype(carry_LxSxBxH.dtype)
