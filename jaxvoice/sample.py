"""Generation: a trained model run forward one symbol at a time, in chunks of steps inside one `lax.scan`.

`generate` yields uint8 chunks [B, n] (B parallel streams). Each chunk of `chunk` steps is one jitted call
(sampling included: no host round trip per symbol); chunks are chained by carrying (state, last token) and
the next chunk is dispatched before the previous one is converted to numpy, so the writer works while the
next chunk computes, and any length runs in constant memory. Every chunk is a full one (the tail is
trimmed), so a model compiles once per (model, streams, chunk, sampler) whatever the length.

Randomness is a function of (key, stream, absolute step) only: u[b, t] = uniform(fold_in(fold_in(key, b), t)),
so the same seed gives the same bytes for any chunk size, and streams differ. A symbol is drawn from the
uniform by inverse CDF (`jaxvoice.draw`), and the uniforms of a whole chunk are drawn in one vectorised call.

Any model steps with `model.step` (or its family's `sample_scan`) on the params its family's
`sample_prepare` made: their matrices stored as the `Layout` for the stream count says (`stored_weight`,
`jaxvoice.stored`), which the cells' `dot` multiplies by. A float32 LSTM stack with `model.kernels = "auto"`
steps with `fast_step`, its step rearranged for speed (`sampling_params`): layer 0's input projection is a row
of an (embed @ W_x + b) table, each gate row is one tanh (sigmoid(x) = (1 + tanh(x / 2)) / 2, the halving
folded exactly into the weights), layers above 0 do one product over [x, h], and the weights' layout
(`Layout`) is chosen per stream count, on a CPU in jaxvoice's own kernel (`packed_matmul`). Tested against
`model.step`; figures in docs/performance.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvoice import memory, model, packed_matmul, stored
from jaxvoice.config import ModelConfig
from jaxvoice.draw import Choice, Sampler, choose, uniforms  # noqa: F401 (public here, as before)
from jaxvoice.errors import UserError
from jaxvoice.parallel import DataParallel
from jaxvoice.sample_files import SymbolWriter, check_outputs, extension, output_paths  # noqa: F401 (public)

V = model.V
DEFAULT_CHUNK = 2048
SILENCE = 128  # the linear and μ-law code of 0.0: where an unprimed audio sample starts
BYTES_START = 10  # "\n": where an unprimed sample of a bytes corpus (often text) starts
PRIME_WINDOW = 4096  # steps per compiled priming scan (bounds its memory for long primes)
UNROLL = 4  # scan steps per loop iteration
WEIGHT_DTYPES = ("float32", "bfloat16")


def check_settings(
    *, length: int, num_streams: int, temperature: float, top_k: int | None, top_p: float | None, chunk: int
) -> None:
    """UserError for settings that cannot sample; the CLI calls this before loading anything."""
    if length < 1:
        raise UserError(f"length must be at least 1 sample, got {length}")
    if num_streams < 1:
        raise UserError(f"the number of streams must be at least 1, got {num_streams}")
    if not temperature > 0 or not np.isfinite(temperature):
        raise UserError(f"temperature must be a positive number, got {temperature}")
    if top_k is not None and not 1 <= top_k <= V:
        raise UserError(f"top-k must be between 1 and {V}, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"top-p must be in (0, 1], got {top_p}")
    if chunk < 1:
        raise UserError(f"chunk must be at least 1 step, got {chunk}")


def memory_needed(params: dict, cfg: ModelConfig, num_streams: int, chunk: int) -> dict[str, int]:
    """Bytes that sampling `num_streams` streams in chunks of `chunk` steps takes on top of the loaded params,
    by part (for memory.check_fits): the weights rearranged for sampling, the carried state (in, out and a
    broadcast copy; counted from the family's abstract carry), per step and stream the uniform, its key and
    the tokens, and per stream a step's logits with the softmax's temporaries and its output file's buffer.
    The per-step and per-stream figures were measured on peak RSS (docs/performance.md)."""
    state_bytes = memory.tree_bytes(jax.eval_shape(lambda: model.init_carry(cfg, num_streams)))
    return {
        "sampling weights": memory.tree_bytes(params),
        "stream state": 3 * state_bytes,
        "per-step uniforms, keys and tokens": 40 * chunk * num_streams,
        "per-stream logits and file buffers": (4 * V * 4 + 8192) * num_streams,
    }


# --- the sampling step ----------------------------------------------------------------------------------


class Layout(NamedTuple):
    """How the fast step stores its weights. Static: each distinct value compiles its own chunk function.

    `packed` stores each product's weights in 16-column panels for jaxvoice's own CPU kernel
    (`packed_matmul`), which streams them faster than XLA's CPU dot at one stream and, with AVX-512, computes
    many streams per pass over a weight row; used on one CPU device where the kernel is built, at any number
    of streams with AVX-512 and at up to `PACKED_MAX_STREAMS` without. Otherwise `transposed` keeps each
    product's weights as [out, in] rows, which XLA's CPU matrix-vector product streams faster at one stream
    (from a few streams on [in, out] is faster). `weights` "bfloat16" rounds the weights (not the state, sums
    or sampling) to bfloat16: half the bytes to read per step; a slightly different model."""

    transposed: bool = False
    weights: str = "float32"
    packed: bool = False


DEFAULT_LAYOUT = Layout()
# Without AVX-512 the kernel's AVX2 tiles lost to XLA's GEMM from a few streams on (docs/performance.md).
PACKED_MAX_STREAMS = 2


def layout_for(
    num_streams: int, weights: str = "float32", platform: str = "cpu", num_devices: int = 1
) -> Layout:
    """The fastest layout for `num_streams` streams per device. The kernel is a CPU custom call that XLA
    cannot split over devices, so only a single CPU device uses it."""
    if (
        platform == "cpu"
        and num_devices == 1
        and packed_matmul.available()
        and (num_streams <= PACKED_MAX_STREAMS or packed_matmul.many_rows())
    ):
        return Layout(weights=weights, packed=True)
    return Layout(transposed=num_streams == 1, weights=weights)


def _fast_path(cfg: ModelConfig) -> bool:
    """The LSTM stack's own sampling step (the registered "lstm" cell, in its stored weights' dtype), unless
    kernels are off."""
    return cfg.kind == "stack" and cfg.cell == "lstm" and cfg.kernels == "auto"


def sampling_params(params: dict, cfg: ModelConfig, layout: Layout = DEFAULT_LAYOUT) -> dict:
    """The LSTM params rearranged for `fast_step`; in float32 exact: only a power-of-two scaling,
    concatenation and (with `layout.transposed`) transposition.

    The i, f, o gate columns (order i, f, o, g) are halved, so one tanh over the whole gate row gives
    tanh(x / 2) for the sigmoids and tanh(x) for g: sigmoid(x) = (1 + tanh(x / 2)) / 2.
    """
    H = cfg.rnn_size
    scale_G = jnp.concatenate([jnp.full((3 * H,), 0.5, jnp.float32), jnp.ones((H,), jnp.float32)])

    layers = []
    for i, lp in enumerate(params["layers"]):
        wx, wh, b = lp["wx_IxG"] * scale_G, lp["wh_HxG"] * scale_G, lp["b_G"] * scale_G
        if i == 0:  # a row lookup per step: stays float32
            layers.append({"table_VxG": params["embed_VxE"] @ wx + b, "wh": stored_weight(wh, layout)})
        else:
            layers.append({"w_2H": stored_weight(jnp.concatenate([wx, wh]), layout), "b_G": b})
    return {"layers": layers, "out": stored_weight(params["out_HxV"], layout), "out_b_V": params["out_b_V"]}


def stored_weight(w_IxO: jax.Array, layout: Layout, rows: int = 1) -> stored.Stored:
    """A product's [in, out] weights as `layout` stores them (`cells.dot` and `stored.product` multiply).
    `rows`: how many rows per stream each use multiplies (e.g. a frame's F samples at once). The layouts
    are for a step's one row per stream; a product of several is a matrix product, which XLA's CPU dot does
    faster on [in, out] than the packed kernel or [out, in] (docs/performance.md), so it keeps them so."""
    if rows > 1:
        form = "columns"
    else:
        form = "packed" if layout.packed else "rows" if layout.transposed else "columns"
    return stored.store(w_IxO, form, layout.weights)


def fast_step(sp: dict, carry: tuple, token_B: jax.Array) -> tuple[jax.Array, tuple]:
    """`model.step` for an LSTM stack, on `sampling_params` (in their dtype): (logits_BxV, carry)."""
    H = carry[0][0].shape[-1]
    new_carry = []
    x_BxH = None
    for i, lp in enumerate(sp["layers"]):
        h_BxH, c_BxH = carry[i]
        if i == 0:
            pre_BxG = lp["table_VxG"][token_B] + stored.product(h_BxH, lp["wh"])
        else:
            xh_Bx2H = jnp.concatenate([x_BxH, h_BxH], axis=-1)
            pre_BxG = stored.product(xh_Bx2H, lp["w_2H"]) + lp["b_G"]
        t_BxG = jnp.tanh(pre_BxG)
        sig_Bx3H = 0.5 + 0.5 * t_BxG[:, : 3 * H]
        i_g, f_g, o_g = sig_Bx3H[:, :H], sig_Bx3H[:, H : 2 * H], sig_Bx3H[:, 2 * H :]
        c_BxH = f_g * c_BxH + i_g * t_BxG[:, 3 * H :]
        x_BxH = o_g * jnp.tanh(c_BxH)
        new_carry.append((x_BxH, c_BxH))
    logits_BxV = stored.product(x_BxH, sp["out"]) + sp["out_b_V"]
    return logits_BxV, tuple(new_carry)


def _compute_cfg(cfg: ModelConfig, layout: Layout) -> ModelConfig:
    """`cfg` computing in the stored weights' dtype: a bfloat16 store is not widened back, and a model that
    trained in bfloat16 (`model.dtype`; its params are float32) samples in float32 by default, on the fast
    float32 paths."""
    return cfg if cfg.dtype == layout.weights else dataclasses.replace(cfg, dtype=layout.weights)


# --- compiled pieces ------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("cfg", "layout"))
def _prepare(params: dict, cfg: ModelConfig, layout: Layout) -> dict:
    """The params as the step reads them: `sampling_params` (the LSTM stack's fast step), or the family's
    `sample_prepare` with its matrices stored as `layout` says."""
    if _fast_path(cfg):
        return sampling_params(params, cfg, layout)
    family = model.get_family(cfg)
    if family.sample_prepare is None:
        return params
    return family.sample_prepare(params, cfg, partial(stored_weight, layout=layout))


@partial(jax.jit, static_argnames=("cfg", "chunk", "sampler", "layout"))
def _run_chunk(sp, carry, token_B, key, start, temperature, top_p, *, cfg, chunk, sampler, layout):
    """`chunk` steps from (carry, token): (carry, last token, tokens_BxC uint8)."""
    B = token_B.shape[0]
    u_CxB = uniforms(key, start, chunk, B) if not sampler.greedy else jnp.zeros((chunk, B), jnp.float32)

    pick = Choice(temperature, sampler, top_p)
    family = model.get_family(cfg)
    if family.sample_scan is not None and not _fast_path(cfg):  # the family's own loop (e.g. frame by frame)
        return family.sample_scan(sp, carry, token_B, u_CxB, pick, cfg)
    step = fast_step if _fast_path(cfg) else partial(model.step, cfg=cfg)

    def body(state, u_B):
        carry, token = state
        logits_BxV, carry = step(sp, carry, token)
        token = pick(logits_BxV, u_B)
        return (carry, token), token.astype(jnp.uint8)

    (carry, token_B), tokens_CxB = jax.lax.scan(body, (carry, token_B), u_CxB, unroll=min(UNROLL, chunk))
    return carry, token_B, tokens_CxB.T


@partial(jax.jit, static_argnames=("cfg",))
def _prime_window(params, tokens_1xW, carry, cfg):
    # The logits are unused, so XLA drops the output projection: this is the recurrent scan only.
    return model.forward(params, tokens_1xW, carry, cfg)[1]


def aligned_prime(prime: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """`prime` without its first symbols where the model reads whole windows of M symbols (a frame-level
    model: M = its frame size, or its top frame size with 3 tiers): all but the last symbol must be whole
    windows, so at most M - 1 are left out."""
    return prime[(len(prime) - 1) % model.window_multiple(cfg) :]


def primed_carry(params: dict, cfg: ModelConfig, prime: np.ndarray):
    """The carry of one stream after running all of `prime` but its last symbol from a zero state (for a
    family with windows of M symbols, `prime` is `aligned_prime`'s)."""
    carry = model.init_carry(cfg, 1)
    body = np.asarray(prime, np.uint8)[:-1]
    window = PRIME_WINDOW - PRIME_WINDOW % model.window_multiple(cfg)
    for s in range(0, len(body), window):  # full windows share one compile; the rest compiles once
        carry = _prime_window(params, jnp.asarray(body[None, s : s + window]), carry, cfg)
    return carry


def generate(
    params: dict,
    model_cfg: ModelConfig,
    key: jax.Array,
    *,
    length: int,
    num_streams: int = 1,
    temperature: float = 1.0,
    prime: np.ndarray | None = None,
    greedy: bool = False,
    top_k: int | None = None,
    top_p: float | None = None,
    chunk: int = DEFAULT_CHUNK,
    start_token: int = SILENCE,
    dp: DataParallel | None = None,
    weights: str = "float32",
) -> Iterator[np.ndarray]:
    """Yield uint8 chunks [num_streams, n] adding up to `length` symbols per stream (n = chunk but the last).

    `weights` "bfloat16" runs the steps on weights rounded to bfloat16 (see `Layout`); the prime and the
    state stay float32. The steps compute in `weights`' dtype whatever `model.dtype` the model trained in
    (its params are float32 either way). `prime` (uint8, 1-D, shared by all streams) sets the state; its
    last symbol is the first input. Without it the state is zero and the first input is `start_token`.
    `temperature` scales the logits (ignored when `greedy`, which takes the argmax); `top_k` keeps the k
    most probable symbols, `top_p` the nucleus.
    The same key gives the same symbols for any `chunk`.

    With `dp`, the streams (and their state) are split over its devices and the params replicated; the
    streams are padded up to a multiple of the device count, so any `num_streams` uses every device. Stream
    b gets the same symbols on any number of devices (its randomness depends only on b and the step).
    """
    top_k = None if top_k == 0 else top_k  # 0 = off, as in the config
    multiple = model.window_multiple(model_cfg)
    chunk = -(-chunk // multiple) * multiple  # a frame-level model generates whole frames
    check_settings(
        length=length, num_streams=num_streams, temperature=temperature, top_k=top_k, top_p=top_p, chunk=chunk
    )
    top_k = None if top_k == V else top_k
    top_p = None if top_p == 1.0 else top_p
    if prime is not None:
        prime = np.asarray(prime)
        if prime.ndim != 1 or prime.size == 0 or prime.dtype != np.uint8:
            raise UserError("a prime must be a non-empty 1-D array of uint8 symbols")
    if weights not in WEIGHT_DTYPES:
        raise UserError(f"sampling weights must be one of {', '.join(WEIGHT_DTYPES)}, got '{weights}'")
    if not 0 <= start_token < V:
        raise UserError(f"start token must be a symbol 0..{V - 1}, got {start_token}")
    return _generate(
        params, model_cfg, key, length, num_streams, float(temperature), prime,
        Sampler(greedy=bool(greedy), top_k=0 if greedy else (top_k or 0),
                use_top_p=top_p is not None and not greedy),
        1.0 if top_p is None else float(top_p), chunk, start_token, dp, weights,
    )  # fmt: skip


def _generate(
    params, cfg, key, length, B, temperature, prime, sampler, top_p, chunk, start_token, dp, weights
):
    num_devices = 1 if dp is None else dp.num_devices
    B_run = -(-B // num_devices) * num_devices  # the padding streams are computed and dropped
    platform = jax.devices()[0].platform if dp is None else dp.mesh.devices.flat[0].platform
    # by the streams each device steps
    layout = layout_for(B_run // num_devices, weights, platform, num_devices)
    if prime is not None:
        prime = aligned_prime(prime, cfg)
    if prime is None or prime.size == 1:
        carry = model.init_carry(cfg, B_run)
        first = start_token if prime is None else int(prime[0])
    else:
        carry_1 = primed_carry(params, cfg, prime)
        carry = jax.tree.map(lambda c: jnp.broadcast_to(c, (B_run, *c.shape[1:])), carry_1)
        first = int(prime[-1])
    token_B = jnp.full((B_run,), first, jnp.int32)
    cfg = _compute_cfg(cfg, layout)  # the steps compute in the stored weights' dtype; the prime as trained
    sp = _prepare(params, cfg, layout)
    if num_devices > 1:  # jit follows the placement: each device steps its own streams, no collectives
        carry, token_B = (
            jax.device_put(carry, jax.tree.map(lambda _: dp.batch, carry)),
            jax.device_put(token_B, dp.batch),
        )
        sp = jax.device_put(sp, dp.replicated)
    temperature = jnp.float32(temperature)
    top_p = jnp.float32(top_p)
    pending, done = None, 0
    while done < length:
        carry, token_B, tokens_BxC = _run_chunk(
            sp, carry, token_B, key, jnp.int32(done), temperature, top_p,
            cfg=cfg, chunk=chunk, sampler=sampler, layout=layout,
        )  # fmt: skip
        if pending is not None:  # converted while the chunk just dispatched computes
            yield np.asarray(pending[0])[:B, : pending[1]]
        pending = (tokens_BxC, min(chunk, length - done))
        done += chunk
    yield np.asarray(pending[0])[:B, : pending[1]]
