"""The fast implementations behind `model.kernels = "auto"`: the same functions as the cells' equations
(`jaxvoice.cells`), arranged for speed, with hand-written derivatives. Tested equal to the equations,
forward, reverse (`jax.grad`) and forward mode (`jax.jvp`), in tests/test_fast.py.

- `lstm_layer`: a whole LSTM layer over T steps. Only `h @ W_h` and the gate math stay in the time loop;
  the input projections of all steps are one GEMM before it (the first layer's a row lookup of
  embed @ W_x, its input being one-hot). Each gate row is one tanh: sigmoid(x) = (1 + tanh(x / 2)) / 2.
  Its reverse pass runs only `dpre @ W_h^T` per step and computes every weight gradient afterwards as one
  GEMM over all steps. On one CPU device with float32 weights and AVX-512, both time loops run in
  jaxvoice's own kernels (`lstm_recurrence`), which keep each step's gate sums in registers.
- `projection`: x @ W whose weight gradient on a CPU is a GEMM over a copied x^T, which XLA gives to
  YNNPACK rather than Eigen (the output layer, the GRU/RNN input projections); in bfloat16 its reverse
  pass's dx = dy W^T multiplies in bfloat16 as its forward does (`model.dense`).
- `linear_input_layer(step)`: a GRU or RNN layer with its input projections done the same way.

Derivatives are `jax.custom_jvp` rules whose tangent part is a `linear_call`: forward mode evaluates the
tangent recurrence, reverse mode its hand-written transpose. So `jax.grad`, `jax.jvp` and `jax.vmap` all
work here; derivatives under `vmap` (per-example gradients, `jacfwd`) and second derivatives need
`model.kernels = "xla"`.
Performance history: docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, linear_call

from jaxvoice import lstm_recurrence

SCAN_UNROLL = 2  # time steps per loop iteration of the XLA scans: halves the loop's fixed costs per step


def _dot(x, w):
    """x @ w in w's dtype with float32 sums (as cells.dot)."""
    return jnp.matmul(x.astype(w.dtype), w, preferred_element_type=jnp.promote_types(w.dtype, jnp.float32))


def _linear_tangent(forward: Callable, transpose: Callable, residuals, tangents: Sequence, like):
    """The tangent output of a custom_jvp rule whose tangent map is linear: `forward(res, tangents)` (None
    for a symbolic zero) in forward mode, `transpose(res, cotangent) -> cotangents` (one per tangent) in
    reverse mode. Only the tangents that are not symbolic zeros take part; `like` shapes a zero result."""
    live = [not isinstance(t, SymbolicZero) for t in tangents]
    if not any(live):
        return jax.tree.map(jnp.zeros_like, like)

    def forward_live(res, ts):
        it = iter(ts)
        return forward(res, [next(it) if alive else None for alive in live])

    def transpose_live(res, cotangent):
        return [ct for ct, alive in zip(transpose(res, cotangent), live, strict=True) if alive]

    return linear_call(
        forward_live, transpose_live, residuals, [t for t, a in zip(tangents, live, strict=True) if a]
    )


# --- x @ W with the weight gradient as YNNPACK's GEMM ---------------------------------------------------


def _transposed(x_TxBxK):
    """x ([..., K], e.g. [T, B, K]) as [K, N] (N all the rows), the lhs of a weight gradient's GEMM."""
    x_KxN = x_TxBxK.reshape(-1, x_TxBxK.shape[-1]).T
    if jax.default_backend() == "cpu":
        # XLA would fold the transpose into the dot, and a dot that contracts the lhs's rows is not one for
        # YNNPACK but for Eigen, slower per FLOP; copying x^T out first costs less. Accelerators' GEMMs take
        # transposed operands as they are.
        x_KxN = jax.lax.optimization_barrier(x_KxN)
    return x_KxN


def _weight_grad(x_KxN, dy_TxBxG, dtype):
    """sum over t, b of x^T dy: one GEMM over all N = T * B rows, from x transposed."""
    dy_NxG = dy_TxBxG.reshape(x_KxN.shape[1], -1).astype(dtype)
    return jnp.matmul(
        x_KxN.astype(dtype), dy_NxG, preferred_element_type=jnp.promote_types(dtype, jnp.float32)
    )


def _input_grad(dy_TxBxV, w_KxV):
    """dy @ w^T (YNNPACK takes the transposed rhs as it is); dy of any rank, its last axis V."""
    return jax.lax.dot_general(
        dy_TxBxV.astype(w_KxV.dtype), w_KxV, (((dy_TxBxV.ndim - 1,), (1,)), ((), ())),
        preferred_element_type=jnp.promote_types(w_KxV.dtype, jnp.float32),
    )  # fmt: skip


def _rows_weight_grad(x_TxBxK, dy_TxBxV, dtype):
    """sum over t, b of x^T dy, contracting x's rows where x is (a fused x is not recomputed column by
    column). On a CPU in float32 whatever the compute dtype: XLA's CPU compiler widens a bfloat16 product
    of this form to float32 anyway (jax 0.10.2), so dy is not rounded to bfloat16 and the same speed."""
    if jax.default_backend() == "cpu":
        dtype = jnp.float32
    rows = tuple(range(x_TxBxK.ndim - 1))
    return jax.lax.dot_general(
        x_TxBxK.astype(dtype), dy_TxBxV.astype(dtype), ((rows, rows), ((), ())),
        preferred_element_type=jnp.promote_types(dtype, jnp.float32),
    )  # fmt: skip


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def projection(x_TxBxK: jax.Array, w_KxV: jax.Array, copy_x: bool = True) -> jax.Array:
    """x @ w (float32 sums; x of any rank, e.g. [T, B, K]) whose reverse pass multiplies dx = dy @ w^T in w's
    dtype, and dW as one GEMM over all rows, over a copied x^T where `copy_x` (see `model.dense`). In
    bfloat16, dx takes the cotangent dy rounded to bfloat16, as the forward takes x, and runs at the
    bfloat16 rate (XLA's own derivative multiplies it in float32: half the rate or less here)."""
    return _dot(x_TxBxK, w_KxV)


@partial(projection.defjvp, symbolic_zeros=True)
def _projection_jvp(copy_x, primals, tangents):
    x, w = primals

    def forward(res, ts):
        x, w = res
        dx, dw = ts
        parts = ([_dot(dx, w)] if dx is not None else []) + ([_dot(x, dw)] if dw is not None else [])
        return sum(parts[1:], parts[0])

    def transpose(res, dy):
        x, w = res
        dw = _weight_grad(_transposed(x), dy, w.dtype) if copy_x else _rows_weight_grad(x, dy, w.dtype)
        return [_input_grad(dy, w).astype(x.dtype), dw.astype(w.dtype)]

    y = _dot(x, w)
    return y, _linear_tangent(forward, transpose, (x, w), tangents, y)


# --- the LSTM layer -------------------------------------------------------------------------------------


def _gate_scale(H: int, dtype=jnp.float32) -> jax.Array:
    """0.5 on the i, f, o columns, 1 on g: tanh of the scaled row gives every gate from one tanh."""
    return jnp.concatenate([jnp.full((3 * H,), 0.5, dtype), jnp.ones((H,), dtype)])


def _cell_update(a_BxG, c_BxH):
    """(h, c) from a tanh'd, scaled gate row a: sigmoid(x) = 0.5 + 0.5 tanh(x / 2)."""
    H = c_BxH.shape[-1]
    i, f, o = (0.5 + 0.5 * a_BxG[:, k * H : (k + 1) * H] for k in range(3))
    c_BxH = f * c_BxH + i * a_BxG[:, 3 * H :]
    return o * jnp.tanh(c_BxH), c_BxH


def _rows(table_RxG, index_TxB, T, B):
    """Each step's input projections [T, B, G]: the table's rows by index, or (index None) the table in order."""
    return table_RxG.reshape(T, B, -1) if index_TxB is None else table_RxG[index_TxB]


def _steps(table_RxG, index_TxB, h_BxH):
    return table_RxG.shape[0] // h_BxH.shape[0] if index_TxB is None else index_TxB.shape[0]


def _scan_xla(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, keep):
    """The forward recurrence as a `lax.scan`: (h_T, c_T) and hs_TxBxH, with `keep` (hs, cs, a)."""
    (B, H), T = h_BxH.shape, _steps(table_RxG, index_TxB, h_BxH)
    pre_TxBxG = _rows(table_RxG, index_TxB, T, B) + b_G
    scale_G = _gate_scale(H, pre_TxBxG.dtype)

    def step(hc, pre_BxG):
        a_BxG = jnp.tanh((pre_BxG + _dot(hc[0], wh_HxG)) * scale_G)
        h_BxH, c_BxH = _cell_update(a_BxG, hc[1])
        return (h_BxH, c_BxH), ((h_BxH, c_BxH, a_BxG) if keep else h_BxH)

    return jax.lax.scan(step, (h_BxH, c_BxH), pre_TxBxG, unroll=SCAN_UNROLL)


def _forward(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, keep, native):
    """The forward recurrence: step t, row b has the input projection table_RxG[index_TxB[t, b]] + b_G
    (index None: the table's rows in order). Returns (h_T, c_T) and hs_TxBxH, or with `keep` also what the
    reverse pass needs: (hs, h_prevs^T [H, T * B] (the h each step's gates saw), cs, a (tanh'd gate rows))."""
    B, T = h_BxH.shape[0], _steps(table_RxG, index_TxB, h_BxH)
    if native:  # the kernel reads the table's rows itself: no [T, B, 4H] gather or bias pass
        if index_TxB is None:
            index_TxB = jnp.arange(T * B, dtype=jnp.int32).reshape(T, B)
        hs_TxBxH, cs_TxBxH, a_TxBxG = lstm_recurrence.forward(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH)
        last = (hs_TxBxH[-1], cs_TxBxH[-1])
    else:
        last, outputs = _scan_xla(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, keep)
        if not keep:
            return last, outputs
        hs_TxBxH, cs_TxBxH, a_TxBxG = outputs
    if not keep:
        return last, hs_TxBxH
    h_prevs_TxBxH = jnp.concatenate([h_BxH[None].astype(hs_TxBxH.dtype), hs_TxBxH[:-1]])
    return last, (hs_TxBxH, _transposed(h_prevs_TxBxH), cs_TxBxH, a_TxBxG)


def _backward(res, cotangents, index_TxB, table_rows, native):
    """The reverse recurrence from the forward's residuals: dpre_TxBxG, dh0, dc0, db_G (dpre summed over steps
    and rows) and, given the forward's index and its table's row count, dtable_RxG (dpre summed by the table
    row each step read; else None)."""
    wh_HxG, h0_BxH, c0_BxH, _, cs_TxBxH, a_TxBxG = res
    dhs_TxBxH, dhT_BxH, dcT_BxH = cotangents
    H = h0_BxH.shape[-1]
    f32 = dhs_TxBxH.dtype
    if native:  # the kernel derives the factors below itself, per step
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
        return (_dot(dpre_BxG, whT_GxH).astype(f32), dc_BxH * f_BxH), dpre_BxG

    xs = (k_TxBxG, p_TxBxH, f_TxBxH, dhs_TxBxH)
    (dh0, dc0), dpre_TxBxG = jax.lax.scan(
        step, (dhT_BxH.astype(f32), dcT_BxH.astype(f32)), xs, reverse=True, unroll=SCAN_UNROLL
    )
    dtable_RxG = None
    if index_TxB is not None:
        dtable_RxG = jnp.zeros((table_rows, dpre_TxBxG.shape[-1]), f32).at[index_TxB].add(dpre_TxBxG)
    return dpre_TxBxG, dh0.astype(h0_BxH.dtype), dc0.astype(c0_BxH.dtype), dpre_TxBxG.sum((0, 1)), dtable_RxG


def _tangents(res, tangents, index_TxB, B):
    """Forward mode: the tangents of (hs, h_T, c_T) from those of (table, b, W_h, h0, c0) (None = zero).
    The inputs' part of each step (including h_prev dW_h) is one GEMM over all steps; only dh W_h and the
    gates' derivatives run in the time loop."""
    wh_HxG, h0_BxH, c0_BxH, h_prevs_T_HxN, cs_TxBxH, a_TxBxG = res
    dtable, db, dwh, dh0, dc0 = tangents
    T, _, G = a_TxBxG.shape
    H, acc = G // 4, cs_TxBxH.dtype  # the dtype of the forward's gate math: float32, or float64 in tests
    u_TxBxG = jnp.zeros((T, B, G), acc)
    if dtable is not None:
        u_TxBxG = u_TxBxG + _rows(dtable, index_TxB, T, B)
    if db is not None:
        u_TxBxG = u_TxBxG + db
    if dwh is not None:
        u_TxBxG = u_TxBxG + _dot(h_prevs_T_HxN.T, dwh).reshape(T, B, G)
    c_prev_TxBxH = jnp.concatenate([c0_BxH[None], cs_TxBxH[:-1]])
    da_scale_TxBxG = (1.0 - a_TxBxG * a_TxBxG) * _gate_scale(H, acc)

    def step(carry, xs):
        dh, dc = carry
        u_BxG, da_scale_BxG, a_BxG, c_prev_BxH, c_BxH = xs
        da = (u_BxG + _dot(dh, wh_HxG)) * da_scale_BxG
        i, f, o = (0.5 + 0.5 * a_BxG[:, k * H : (k + 1) * H] for k in range(3))
        di, df, do = (0.5 * da[:, k * H : (k + 1) * H] for k in range(3))
        dc = df * c_prev_BxH + f * dc + di * a_BxG[:, 3 * H :] + i * da[:, 3 * H :]
        tc = jnp.tanh(c_BxH)
        dh = do * tc + o * (1.0 - tc * tc) * dc
        return (dh, dc), dh

    zero = jnp.zeros(h0_BxH.shape, acc)
    start = (zero if dh0 is None else dh0.astype(acc), zero if dc0 is None else dc0.astype(acc))
    xs = (u_TxBxG, da_scale_TxBxG, a_TxBxG, c_prev_TxBxH, cs_TxBxH)
    (dhT, dcT), dhs = jax.lax.scan(step, start, xs)
    return dhs, dhT, dcT


@partial(jax.custom_jvp, nondiff_argnums=(6,))
def _lstm_layer(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, native):
    """hs_TxBxH, h_T, c_T of one LSTM layer whose input projection at step t, row b is
    table_RxG[index_TxB[t, b]] + b_G (index None: the table's rows in order)."""
    (h_BxH, c_BxH), hs_TxBxH = _forward(table_RxG, index_TxB, b_G, wh_HxG, h_BxH, c_BxH, False, native)
    return hs_TxBxH, h_BxH, c_BxH


@partial(_lstm_layer.defjvp, symbolic_zeros=True)
def _lstm_layer_jvp(native, primals, tangents):
    table_RxG, index_TxB, b_G, wh_HxG, h0_BxH, c0_BxH = primals
    (hT, cT), (hs, h_prevs_T, cs, a) = _forward(
        table_RxG, index_TxB, b_G, wh_HxG, h0_BxH, c0_BxH, True, native
    )
    rows, B = table_RxG.shape[0], h0_BxH.shape[0]
    dtable, _, db, dwh, dh0, dc0 = tangents  # the index is integers: its tangent is always a zero

    def forward(res, ts):
        return _tangents(res[:6], ts, res[6], B)

    def transpose(res, cotangents):
        dpre_TxBxG, dh0, dc0, db_G, dtable_RxG = _backward(res[:6], cotangents, res[6], rows, native)
        if res[6] is None:  # the table is the projections in order: its gradient is dpre itself
            dtable_RxG = dpre_TxBxG.reshape(rows, -1)
        dwh_HxG = _weight_grad(res[3], dpre_TxBxG, res[0].dtype)
        return [
            dtable_RxG.astype(table_RxG.dtype),
            db_G.astype(b_G.dtype),
            dwh_HxG.astype(wh_HxG.dtype),
            dh0,
            dc0,
        ]

    res = (wh_HxG, h0_BxH, c0_BxH, h_prevs_T, cs, a, index_TxB)
    out = (hs, hT, cT)
    return out, _linear_tangent(forward, transpose, res, [dtable, db, dwh, dh0, dc0], out)


def use_native(wh_HxG: jax.Array, steps: int) -> bool:
    """Whether a layer's time loops run in jaxvoice's CPU kernels (decided when tracing)."""
    return lstm_recurrence.usable(wh_HxG, steps)


def lstm_layer(p: dict, carry: tuple, table_RxI: jax.Array, index_TxB: jax.Array | None, native=None):
    """The registered LSTM cell over a layer's T steps: (hs_TxBxH, (h_T, c_T)), equal to scanning
    `cells.lstm_step` over `cells.linear_project` of the inputs. The inputs are rows of `table_RxI` by
    `index_TxB` (the first layer: the embeddings by token) or, with index None, [T * B, I] rows in order.
    `native` None uses the CPU kernels where `use_native` says they can run."""
    h_BxH, c_BxH = carry
    if index_TxB is None:
        T = table_RxI.shape[0] // h_BxH.shape[0]
        x_TxBxI = table_RxI.reshape(T, h_BxH.shape[0], -1)
        table_RxG = projection(x_TxBxI, p["wx_IxG"]).reshape(table_RxI.shape[0], -1)
    else:
        T = index_TxB.shape[0]
        table_RxG = _dot(table_RxI, p["wx_IxG"])  # one row per symbol, read by the tokens
    if native is None:
        native = use_native(p["wh_HxG"], T)
    hs_TxBxH, h_BxH, c_BxH = _lstm_layer(table_RxG, index_TxB, p["b_G"], p["wh_HxG"], h_BxH, c_BxH, native)
    return hs_TxBxH, (h_BxH, c_BxH)


def linear_input_layer(step: Callable) -> Callable:
    """A fast layer for a cell whose input part is `cells.linear_project` (x W_x + b): the projections of all
    T steps as one `projection` (its dW on YNNPACK), then `step` scanned over them."""

    def layer(p: dict, carry, table_RxI: jax.Array, index_TxB: jax.Array | None):
        B = jax.tree.leaves(carry)[0].shape[0]
        if index_TxB is None:
            T = table_RxI.shape[0] // B
            xproj_TxBxG = projection(table_RxI.reshape(T, B, -1), p["wx_IxG"]) + p["b_G"]
        else:
            xproj_TxBxG = (_dot(table_RxI, p["wx_IxG"]) + p["b_G"])[index_TxB]
        carry, hs_TxBxH = jax.lax.scan(lambda c, x: step(p, c, x), carry, xproj_TxBxG)
        return hs_TxBxH, carry

    return layer
