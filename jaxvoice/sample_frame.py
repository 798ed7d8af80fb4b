"""The tiered sample level's frame as one CPU kernel (native/sample_frame.cc, built by setup.py as an optional
extension): all F samples of a frame of the MLP sample level (`jaxvoice.sample_level`), each drawn by the
sampler's rule without top-k/p (`jaxvoice.sample.choose`), in one XLA FFI call where XLA runs ~17 ops per
sample. The products are split between two threads, each keeping half of the weights in its core's cache;
at one stream the kernel times both ways and takes the second thread only where it pays (the same floats).
The second thread first computes the products given to be done ahead (the frame tier's recurrent products
for the next frame, `tiered_generation.sample_scan`), which do not wait on this frame's samples, and the
sample history's sums over the next frame's older values, where the call adds the history itself.

`tiered_generation.sample_scan` uses it where the sampler stored the weights packed (a single CPU device, see
`sample.layout_for`) and `model.kernels = "auto"`; `available()` is False where the extension was not built,
does not load or the CPU lacks AVX2/FMA, and then the XLA step runs. Tested against the XLA step in
tests/test_sample_frame.py; figures in docs/performance.md.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxvoice import native, packed_matmul, stored

log = logging.getLogger(__name__)
V = 256
PANEL = packed_matmul.PANEL
_TARGETS = {"float32": "JaxvoiceSampleFrameF32", "bfloat16": "JaxvoiceSampleFrameBF16"}


@functools.cache
def available() -> bool:
    """True where the kernel is built, loads, runs on this CPU, and is registered with XLA."""
    lib = native.load("sample_frame")
    if lib is None or lib.jaxvoice_sample_frame_isa() != 1 or not packed_matmul.available():
        return False
    for name in _TARGETS.values():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    # One tiny frame on the CPU whose every draw is symbol 7 (a kernel built against other XLA FFI headers
    # than this jaxlib's may refuse to run; then the XLA step is the answer, not an error mid-sampling).
    F, D = 2, 16
    out_b = np.full(V, -1000.0, np.float32)
    out_b[7] = 0.0
    try:
        with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
            sp = {
                "tables_FxVxD": jnp.zeros((F, V, D)),
                "in_b_D": jnp.zeros(D),
                "hidden": [],
                "out_DxV": stored.store(jnp.zeros((D, V)), "packed"),
                "out_b_V": jnp.asarray(out_b),
            }
            sp["frame_kernel"] = kernel_params(sp)
            window, cond, u = jnp.zeros((1, F), jnp.int32), jnp.zeros((1, F, D)), jnp.full((F, 1), 0.5)
            tokens, logits, _, _ = _call(sp, window, cond, u, 1.0, None, None, None)
        if np.array_equal(np.asarray(tokens), [[7, 7]]) and np.array_equal(np.asarray(logits)[0, 1], out_b):
            return True
        log.warning("jaxvoice's sample-frame kernel computes wrong frames here: using the XLA step")
    except Exception as e:  # noqa: BLE001 (any failure means: do not use it)
        log.warning(
            f"jaxvoice's sample-frame kernel does not run here ({type(e).__name__}): using the XLA step"
        )
    return False


@functools.cache
def reads_rows() -> bool:
    """True where one stream reads every product's weights row by row (`_rows`): CPUs with AVX-512, where
    that was measured faster; elsewhere the kernel reads the packed panels and the copies would be unused."""
    lib = native.load("sample_frame")
    return lib is not None and lib.jaxvoice_sample_frame_reads_rows() == 1


def kernel_params(sp: dict, rows: bool | None = None) -> dict:
    """What the kernel reads beyond the MLP sample level's generation params (`sample_level.sample_prepare`
    with its products stored packed, which it reads as they are): the hidden layers' biases stacked, once per
    model, and, where `rows` (default: `reads_rows()`), every product's weights also row by row. Without them
    the kernel reads the packed panels: the same floats, empty arrays in their place."""
    hidden, D = sp["hidden"], sp["tables_FxVxD"].shape[-1]
    dtype = sp["out_DxV"].dtype
    hidden_b = jnp.stack([layer["b_D"] for layer in hidden]) if hidden else jnp.zeros((0, D))
    if reads_rows() if rows is None else rows:
        out_rows = _rows(sp["out_DxV"].data)
        kept = [_rows(layer["w_DxD"].data) for layer in hidden]
        hidden_rows = jnp.stack(kept) if kept else jnp.zeros((0, D, -(-D // PANEL) * PANEL), dtype)
    else:
        hidden_rows, out_rows = jnp.zeros((0, 0, 0), dtype), jnp.zeros((0, 0), dtype)
    return {"hidden_rows": hidden_rows, "hidden_b": hidden_b.astype(jnp.float32), "out_rows": out_rows}


def _rows(packed_PxIx16: jax.Array) -> jax.Array:
    """Packed panels [P, I, 16] side by side, [I, P * 16]: each input's weights one contiguous run, which a
    product of one row of x reads (at one stream its time is the reading of its weights)."""
    panels, inputs, _ = packed_PxIx16.shape
    return packed_PxIx16.transpose(1, 0, 2).reshape(inputs, panels * PANEL)


def frame(sp: dict, window_BxF, cond_BxGxD, u_FxB, temperature, ahead=None, history=None, bias_FxD=None):
    """One frame of the sample level: (tokens_BxF int32, logits_BxFxV, products, history_next) of its F samples
    from the F inputs up to its first (the newest last), each sample's conditioning vectors ([B, F, C * D]:
    the first layer's, then each hidden layer's, `tiered_maps.conditioned_layers`) and uniform, and the
    temperature (0: the most probable symbol, as the greedy sampler). `sp`: the generation params with the
    kernel's own (`kernel_params`, under "frame_kernel"). Needs `available()`.

    With `bias_FxD` [F, C * D], the conditioning is given as `tiered_maps.upsampled` makes it: position t's is
    cond_BxGxD's row (G = 1: the frame's one; G = F: its own) plus bias_FxD[t], which the kernel adds as it
    reaches the position, rather than XLA writing all F first (the same floats).

    With `ahead` = (x_AxBxH, [W_a for each a]), W_a packed weights [ceil(G / 16), H, 16] as `packed_matmul`
    takes them (e.g. each frame layer's own), also products = [x_a @ W_a for each a] [A, B, ceil(G / 16) * 16]
    (the columns up to whole panels of 16), computed as `packed_matmul` does (the same floats) while the
    samples are drawn; otherwise products is None.

    With `history` = (old_BxFxQ, values_BxW, gain_BxQ), the model's sample history with gains
    (`sample_history`, its weights packed in `sp["frame_kernel"]`) is added to the first layer's conditioning here,
    not in `cond_BxGxD`: old = each position's sums over its W values before its window but the newest
    F - 1 (`sample_history.older_sums`), values = the window's last W in [-2, 2], gain = this frame's
    (`sample_history.frame_gains`); history_next = the next frame's old sums [B, F, Q], computed while the
    samples are drawn (the XLA frame step's sums, in the kernel's order); otherwise history_next is None."""
    if not available():
        raise RuntimeError("jaxvoice's sample_frame kernel is not built for this machine")
    return _call(sp, window_BxF, cond_BxGxD, u_FxB, temperature, ahead, history, bias_FxD)


def _call(sp, window_BxF, cond_BxGxD, u_FxB, temperature, ahead, history, bias_FxD):
    B, F = window_BxF.shape
    if bias_FxD is None:
        bias_FxD = jnp.zeros((0, cond_BxGxD.shape[-1]))
    out_w = sp["out_DxV"].data
    if ahead is None:
        ahead_x, ahead_w, G = jnp.zeros((0, B, 0)), [], 0
    else:
        ahead_x, ahead_w = ahead[0].astype(jnp.float32), list(ahead[1])
        G = ahead_w[0].shape[0] * PANEL  # whole panels (the packing's zero columns too)
    hidden_w = [layer["w_DxD"].data for layer in sp["hidden"]]  # the hidden layers' packed weights, as kept
    if history is None:
        old, values, gain = jnp.zeros((B, F, 0)), jnp.zeros((B, 0)), jnp.zeros((B, 0))
        filters = mapping = jnp.zeros((0, 0, PANEL), out_w.dtype)
    else:
        old, values, gain = (jnp.asarray(a, jnp.float32) for a in history)
        filters, mapping = sp["frame_kernel"]["history_WxQ"], sp["frame_kernel"]["history_QxD"]
    results = (
        jax.ShapeDtypeStruct((B, F), jnp.int32),
        jax.ShapeDtypeStruct((B, F, V), jnp.float32),
        jax.ShapeDtypeStruct((ahead_x.shape[0], B, G), jnp.float32),
        jax.ShapeDtypeStruct(old.shape, jnp.float32),
    )
    tokens, logits, products, history_next = jax.ffi.ffi_call(
        _TARGETS[jnp.dtype(out_w.dtype).name], results, vmap_method="sequential"
    )(
        window_BxF.astype(jnp.int32),
        cond_BxGxD.astype(jnp.float32),
        jnp.asarray(bias_FxD, jnp.float32),
        jnp.asarray(u_FxB, jnp.float32),
        jnp.asarray(temperature, jnp.float32).reshape(()),
        sp["tables_FxVxD"].astype(jnp.float32),
        sp["in_b_D"].astype(jnp.float32),
        sp["frame_kernel"]["hidden_rows"],
        sp["frame_kernel"]["hidden_b"],
        out_w,
        sp["frame_kernel"]["out_rows"],
        sp["out_b_V"].astype(jnp.float32),
        ahead_x,
        old,
        values,
        gain,
        filters,
        mapping,
        *hidden_w,
        *ahead_w,
    )
    return tokens, logits, None if ahead is None else products, None if history is None else history_next
