"""The LSTM's time loops for training on a CPU: jaxvoice's own kernels (native/lstm_recurrence.cc).

`fast.py` keeps everything that is a whole-sequence GEMM (input projections, weight gradients) in XLA and
hands only the step-after-step part of a layer to these XLA FFI custom calls: the forward recurrence (the
gates' product, tanh and cell update fused per 16 hidden units) and the backward one (dh, dc and dpre).
Both give what `fast._scan_xla` / `fast._backward`'s scans give, to float32 rounding.

`usable(...)` decides at trace time: the kernels run on one CPU device with float32 weights where the
extension is built and the CPU has AVX-512; anywhere else (GPU, TPU, several devices, bfloat16, another CPU)
fast.py scans in XLA. (XLA cannot split a custom call over devices, so under data parallelism it would
gather the whole batch onto every device.) Under `jax.vmap` the calls run once per batch element.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxvoice import native

_FORWARD, _BACKWARD = "JaxvoiceLstmForward", "JaxvoiceLstmBackward"
log = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    """True where the kernels are built, load, run on this CPU and agree with the LSTM's equations
    (`cells.lstm_step`); a kernel that loads but disagrees or fails is reported once (a warning)."""
    lib = native.load("lstm_recurrence")
    if lib is None or lib.jaxvoice_lstm_recurrence_isa() != 1:
        return False
    for name in (_FORWARD, _BACKWARD):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    from jaxvoice import cells

    # One small step, now (even when the first caller is tracing): a kernel built against other XLA FFI
    # headers than this jaxlib's may refuse to run, and then the scan is the answer, not a failed training.
    rng = np.random.default_rng(0)
    B, H = 3, 5
    pre_BxG, wh_HxG, h_BxH, c_BxH = (
        rng.normal(size=shape).astype(np.float32) for shape in ((B, 4 * H), (H, 4 * H), (B, H), (B, H))
    )
    try:
        with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
            (_, c_expected), _ = cells.lstm_step({"wh_HxG": jnp.asarray(wh_HxG)}, (h_BxH, c_BxH), pre_BxG)
            # the rows in reverse order, half the bias in the table: the kernel's indexing and bias add
            table_BxG, index_1xB = pre_BxG[::-1] - 0.5, np.arange(B, dtype=np.int32)[None, ::-1]
            bias_G = np.full(4 * H, 0.5, np.float32)
            _, cs_TxBxH, _ = _forward(*map(jnp.asarray, (table_BxG, index_1xB, bias_G, wh_HxG, h_BxH, c_BxH)))
            if np.allclose(np.asarray(cs_TxBxH[0]), np.asarray(c_expected), rtol=1e-4, atol=1e-5):
                return True
            log.warning("jaxvoice's LSTM kernels disagree with the LSTM's equations here: using XLA's scans")
    except Exception as e:  # noqa: BLE001 (any failure means: do not use it)
        log.warning(f"jaxvoice's LSTM kernels do not run here ({type(e).__name__}): using XLA's scans")
    return False


def usable(wh_HxG: jax.Array, seq_length: int) -> bool:
    """Whether fast.py runs this layer's loops in the kernels (decided when tracing)."""
    return (
        jnp.dtype(wh_HxG.dtype) == jnp.float32
        and seq_length > 0
        and jax.default_backend() == "cpu"
        and jax.device_count() == 1
        and available()
    )


def _forward(table_RxG, index_TxB, b_G, wh_HxG, h0_BxH, c0_BxH):
    (T, B), G = index_TxB.shape, table_RxG.shape[1]
    H = G // 4
    results = (
        jax.ShapeDtypeStruct((T, B, H), jnp.float32),
        jax.ShapeDtypeStruct((T, B, H), jnp.float32),
        jax.ShapeDtypeStruct((T, B, G), jnp.float32),
    )
    f32 = lambda x: x.astype(jnp.float32)
    return jax.ffi.ffi_call(_FORWARD, results, vmap_method="sequential")(
        f32(table_RxG), index_TxB.astype(jnp.int32), f32(b_G), f32(wh_HxG), f32(h0_BxH), f32(c0_BxH)
    )


def forward(table_RxG, index_TxB, b_G, wh_HxG, h0_BxH, c0_BxH):
    """hs_TxBxH, cs_TxBxH, a_TxBxG of `model._lstm_scan(..., keep=True)`: each step's h, c and tanh'd gate row,
    where step t, row b has the input projection table_RxG[index_TxB[t, b]] + b_G (an index outside the table
    is an error)."""
    if not available():
        raise RuntimeError("jaxvoice's LSTM recurrence kernels are not built for this machine")
    return _forward(table_RxG, index_TxB, b_G, wh_HxG, h0_BxH, c0_BxH)


def backward(a_TxBxG, cs_TxBxH, c0_BxH, dhs_TxBxH, wh_HxG, dhT_BxH, dcT_BxH, index_TxB=None, table_rows=0):
    """dpre_TxBxG, dh0_BxH, dc0_BxH, db_G and dtable_RxG of the reverse recurrence in `model._lstm_backward`,
    from the forward's gates and cells (the kernel derives the per-step factors itself): db is dpre summed over
    steps and rows, dtable (with `index_TxB` of the forward and its table's row count; else None) dpre summed
    into the table row each step read."""
    if not available():
        raise RuntimeError("jaxvoice's LSTM recurrence kernels are not built for this machine")
    T, B, G = a_TxBxG.shape
    H = G // 4
    results = (
        jax.ShapeDtypeStruct((T, B, G), jnp.float32),
        jax.ShapeDtypeStruct((B, H), jnp.float32),
        jax.ShapeDtypeStruct((B, H), jnp.float32),
        jax.ShapeDtypeStruct((G,), jnp.float32),
        jax.ShapeDtypeStruct((table_rows if index_TxB is not None else 0, G), jnp.float32),
    )
    f32 = lambda x: x.astype(jnp.float32)
    index = jnp.zeros((0,), jnp.int32) if index_TxB is None else index_TxB.astype(jnp.int32)
    args = (a_TxBxG, cs_TxBxH, c0_BxH, dhs_TxBxH, wh_HxG, dhT_BxH, dcT_BxH)
    dpre, dh0, dc0, db, dtable = jax.ffi.ffi_call(_BACKWARD, results, vmap_method="sequential")(
        *map(f32, args), index
    )
    return dpre, dh0, dc0, db, (dtable if index_TxB is not None else None)
