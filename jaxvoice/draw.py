"""Choosing each stream's next symbol from its logits and one uniform in [0, 1) (`jaxvoice.sample` draws the
uniforms): by inverse CDF, the count of cumulative probabilities <= u * total, cheaper per step than
`jax.random.categorical`; greedy, top-k and top-p (nucleus) as `Sampler` says. `Choice` binds the settings
for the step loops, and tells a loop with a kernel of its own (`jaxvoice.sample_frame`) when it may draw
there by the same rule."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxvoice import model

V = model.V


class Sampler(NamedTuple):
    """How a symbol is chosen from logits. Static: each distinct value compiles its own chunk function."""

    greedy: bool = False
    top_k: int = 0  # 0 = off
    use_top_p: bool = False


def _masked_logits(logits_BxV, top_k: int, use_top_p: bool, top_p) -> jax.Array:
    """-inf outside the top k (ties with the k-th kept) and outside the nucleus: the smallest set of the
    most probable symbols whose probability adds up to at least p (the symbol crossing p is kept)."""
    if top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV >= kth_Bx1, logits_BxV, -jnp.inf)
    if use_top_p:
        p_BxV = jax.nn.softmax(logits_BxV, axis=-1)
        sorted_BxV = -jnp.sort(-p_BxV, axis=-1)  # descending
        before_BxV = jnp.cumsum(sorted_BxV, axis=-1) - sorted_BxV  # mass of the more probable ones
        n_Bx1 = jnp.sum(before_BxV < top_p, axis=-1, keepdims=True)  # >= 1: before[0] == 0 < p
        threshold_Bx1 = jnp.take_along_axis(sorted_BxV, n_Bx1 - 1, axis=-1)
        logits_BxV = jnp.where(p_BxV >= threshold_Bx1, logits_BxV, -jnp.inf)
    return logits_BxV


def choose(logits_BxV: jax.Array, u_B: jax.Array, temperature, sampler: Sampler, top_p=1.0) -> jax.Array:
    """The next symbol of each stream (int32 [B]) from logits and one uniform in [0, 1) per stream."""
    if sampler.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scaled_BxV = logits_BxV / temperature
    masked = sampler.top_k or sampler.use_top_p
    if masked:
        scaled_BxV = _masked_logits(scaled_BxV, sampler.top_k, sampler.use_top_p, top_p)
    e_BxV = jnp.exp(scaled_BxV - jnp.max(scaled_BxV, axis=-1, keepdims=True))
    cdf_BxV = jnp.cumsum(e_BxV, axis=-1)
    target_Bx1 = u_B[:, None] * cdf_BxV[:, -1:]
    # The first symbol whose cdf exceeds u * total: a symbol of probability 0 (masked) is never it.
    token_B = jnp.minimum(jnp.sum(cdf_BxV <= target_Bx1, axis=-1), V - 1).astype(jnp.int32)
    if masked:  # u * total can round up to total: then the count is V; fall back to the most probable
        ok_B = jnp.take_along_axis(e_BxV, token_B[:, None], axis=-1)[:, 0] > 0
        token_B = jnp.where(ok_B, token_B, jnp.argmax(scaled_BxV, axis=-1).astype(jnp.int32))
    return token_B


class Choice(NamedTuple):
    """`choose` with its settings bound, as the step loops call it: `choice(logits_BxV, u_B)`. A family's
    own loop may instead draw natively by the same rule where `native_temperature` is not None (the plain
    inverse-CDF draw: no top-k/p; 0 for the greedy sampler), e.g. `tiered`'s frame kernel."""

    temperature: jax.Array | float
    sampler: Sampler
    top_p: jax.Array | float = 1.0

    def __call__(self, logits_BxV: jax.Array, u_B: jax.Array) -> jax.Array:
        return choose(logits_BxV, u_B, self.temperature, self.sampler, self.top_p)

    @property
    def native_temperature(self):
        if self.sampler.top_k or self.sampler.use_top_p:
            return None
        return 0.0 if self.sampler.greedy else self.temperature


def uniforms(key: jax.Array, start, steps: int, num_streams: int) -> jax.Array:
    """u [steps, B] for absolute steps start .. start + steps - 1: a function of (key, stream, step) only."""
    stream_keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(num_streams))
    positions = start + jnp.arange(steps)

    def one(k, t):
        return jax.random.uniform(jax.random.fold_in(k, t), ())

    return jax.vmap(lambda t: jax.vmap(lambda k: one(k, t))(stream_keys))(positions)
