"""The sampler's CPU matrix products: y[M, O] = x[M, I] @ W with W packed in 16-column panels.

The kernel (native/packed_matmul.cc, built by setup.py as an optional extension) is an XLA FFI custom
call: it reads the weights panel by panel, float32 or bfloat16 (widened in registers), which streams them
faster than XLA's CPU dot at one stream; with AVX-512 (`many_rows()`) it also computes many streams per
pass over a weight row (figures: docs/performance.md). `available()` is False where the extension was not
built, is not loadable, or the CPU lacks AVX2/FMA: callers then use XLA's dot on the unpacked weights.
Only the sampler uses it, and only on CPU devices; training never does (it has no derivative).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxvoice import native

log = logging.getLogger(__name__)
PANEL = 16  # output columns per panel (the kernel's kPanel)
_TARGETS = {"float32": "JaxvoicePackedMatmulF32", "bfloat16": "JaxvoicePackedMatmulBF16"}


@functools.cache
def available() -> bool:
    """True where the kernel is built, loads, runs on this CPU, and is registered with XLA."""
    lib = native.load("packed_matmul")
    if lib is None or lib.jaxvoice_packed_matmul_isa() != 1:
        return False
    for name in _TARGETS.values():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    # One small product on the CPU: a kernel built against other XLA FFI headers than this jaxlib's may
    # refuse to run, and then XLA's dot is the answer, not an error in the middle of sampling. (Run now,
    # even when the first caller is tracing a function.)
    x_1x3 = np.arange(3, dtype=np.float32)[None]
    w_3x5 = np.arange(15, dtype=np.float32).reshape(3, 5)
    try:
        with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
            y = np.asarray(_call(jnp.asarray(x_1x3), pack(jnp.asarray(w_3x5)), 5))
        if np.array_equal(y, x_1x3 @ w_3x5):
            return True
        log.warning("jaxvoice's sampling kernel computes wrong products here: using XLA's dot")
    except Exception as e:  # noqa: BLE001 (any failure means: do not use it)
        log.warning(f"jaxvoice's sampling kernel does not run here ({type(e).__name__}): using XLA's dot")
    return False


@functools.cache
def many_rows() -> bool:
    """True where products of 3+ rows (streams) run in the kernel's AVX-512 tiles, faster than XLA's GEMM."""
    return available() and native.load("packed_matmul").jaxvoice_packed_matmul_many_rows() == 1


def pack(w_IxO: jax.Array, dtype: str = "float32") -> jax.Array:
    """[I, O] -> [ceil(O / 16), I, 16] in `dtype`, the columns past O zero."""
    n_in, n_out = w_IxO.shape
    panels = -(-n_out // PANEL)
    w = jnp.pad(w_IxO.astype(dtype), ((0, 0), (0, panels * PANEL - n_out)))
    return w.reshape(n_in, panels, PANEL).transpose(1, 0, 2)


def matmul(x_MxI: jax.Array, w_PxIx16: jax.Array, out_features: int) -> jax.Array:
    """x @ W (float32 [M, out_features]) for W packed by `pack`; needs `available()`."""
    if not available():
        raise RuntimeError("jaxvoice's packed_matmul kernel is not built for this machine")
    return _call(x_MxI, w_PxIx16, out_features)


def _call(x_MxI: jax.Array, w_PxIx16: jax.Array, out_features: int) -> jax.Array:
    target = _TARGETS[jnp.dtype(w_PxIx16.dtype).name]
    result = jax.ShapeDtypeStruct((x_MxI.shape[0], out_features), jnp.float32)
    return jax.ffi.ffi_call(target, result, vmap_method="sequential")(x_MxI.astype(jnp.float32), w_PxIx16)
