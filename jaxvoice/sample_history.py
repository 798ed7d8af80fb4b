"""The tiered family's sample history (`jaxvoice.tiered`): what the W = `model.sample_history` samples before
the sample level's window add to each sample's conditioning.

A linear map of their values in [-2, 2]: a long-term predictor, as speech coders have, that reaches a pitch
period or a bass note's cycle back at the sample's own resolution, where the frame tier sees the past only
through a vector per frame and the sample level sees one frame. With `model.sample_history_rank = Q` the
map goes through Q channels, each scaled by a gain the frame tier sets every frame: a predictor that follows
the pitch or the note, as a speech coder's is re-fitted every frame (a fixed map cannot follow a period
that changes), in fewer weights.

Every sample it reads is older than its sample's frame and the gain is per frame, so generation adds it
once per frame, into the conditioning the frame step makes; with gains and jaxvoice's CPU frame kernel, the
kernel adds it (`jaxvoice.sample_frame`), from sums over the older values it computes a frame ahead.

Shape letters: B batch, T targets (K = T / F frames), F frame size, H rnn_size, D sample_size,
W sample_history, Q sample_history_rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvoice import model, sample_level, stored
from jaxvoice.config import ModelConfig
from jaxvoice.errors import UserError

# the products generation reads F rows of per frame, as the upsampling's: worth storing packed
STORED = ("history_WxD", "history_WxQ", "history_QxD")


def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    """The history's params ({} without one); `key` is the tiered model's own, folded here so that adding a
    history leaves the other params' inits what they were."""
    W, Q, H, D = cfg.sample_history, cfg.sample_history_rank, cfg.rnn_size, cfg.sample_size
    if not W:
        return {}
    if not Q:
        return {"history_WxD": model.dense_init(jax.random.fold_in(key, 5), W, D)}
    in_key, out_key = jax.random.split(jax.random.fold_in(key, 5))
    return {
        "history_WxQ": model.dense_init(in_key, W, Q),
        "history_QxD": model.dense_init(out_key, Q, D),
        # the frame tier's gain per channel starts at 1: a low-rank linear map that learns to adapt
        "history_gain_HxQ": jnp.zeros((H, Q), jnp.float32),
        "history_gain_b_Q": jnp.ones((Q,), jnp.float32),
    }


def conditioning(params, e_BxS, N: int, T: int, cfg: ModelConfig, o_KxBxH) -> jax.Array:
    """[T, B, D]: what the history adds to the conditioning of T targets, from e = the N - 1 inputs before
    target 0's and the rest [B, >= N - 1 + T - F] (N the tiered carry's window), and the frame tier's outputs
    o [K, B, H] of the targets' frames (which set the gains)."""
    F, Q = cfg.frame_size, cfg.sample_history_rank
    B = e_BxS.shape[0]
    if not Q:
        return _filtered(cfg, e_BxS, N, T, params["history_WxD"])
    K = T // F
    gain_Kx1xBxQ = frame_gains(params, o_KxBxH.reshape(K * B, -1), cfg).reshape(K, 1, B, Q)  # a frame's F
    channels_KxFxBxQ = _filtered(cfg, e_BxS, N, T, params["history_WxQ"]).reshape(K, F, B, Q) * gain_Kx1xBxQ
    return model.dense(cfg, channels_KxFxBxQ.reshape(T * B, Q), params["history_QxD"]).reshape(T, B, -1)


def frame_gains(params, o_NxH, cfg: ModelConfig) -> jax.Array:
    """[N, Q]: each channel's gain for the frames whose frame-tier outputs are o [N, H]."""
    return model.dense(cfg, o_NxH, params["history_gain_HxQ"]) + params["history_gain_b_Q"]


def older_sums(params, window_BxN, cfg: ModelConfig) -> jax.Array:
    """[B, F, Q]: for each position t of a frame, its channels' sums over the W values before its window but
    the newest F - 1, which the last frame draws: the frame's older values (e[N - F - W : N - F] of its
    carry's window [B, N], whose last input is the frame's first target's) times the filters with those
    newest as 0. Generation's frame kernel continues each sum over the newest (`jaxvoice.sample_frame`)."""
    F, W = cfg.frame_size, cfg.sample_history
    B, N = window_BxN.shape
    values_BxW = sample_level.scaled(window_BxN[:, N - F - W : N - F])
    rows_FxBxW = _windows(jnp.pad(values_BxW, ((0, 0), (0, F - 1))), F, W)  # row t: values[t:], then t zeros
    sums = model.dense(cfg, rows_FxBxW.reshape(F * B, W), params["history_WxQ"])
    return sums.reshape(F, B, -1).transpose(1, 0, 2)


def _filtered(cfg: ModelConfig, e_BxS, N: int, T: int, w_WxC) -> jax.Array:
    """[T, B, C]: for each target t, the W values before its window (e[t + N - F - W : t + N - F], in
    [-2, 2]) times w [W, C]. In training, a correlation of the signal with C filters of length W: a product
    of each target's W values would copy every value W times first (the preset's step ~10% slower)."""
    F, W = cfg.frame_size, cfg.sample_history
    start = N - F - W
    if isinstance(w_WxC, stored.Stored):  # generation: a frame's F rows, on the weights stored for it
        B = e_BxS.shape[0]
        values_TxBxW = _windows(sample_level.scaled(e_BxS[:, start : start + T + W - 1]), T, W)
        return model.dense(cfg, values_TxBxW.reshape(T * B, W), w_WxC).reshape(T, B, -1)
    values_Bx1xS = sample_level.scaled(e_BxS[:, start : start + T + W - 1])[:, None, :]
    filters_Cx1xW = w_WxC.astype(jnp.dtype(cfg.dtype)).T[:, None, :]
    y_BxCxT = jax.lax.conv_general_dilated(
        values_Bx1xS.astype(filters_Cx1xW.dtype), filters_Cx1xW, (1,), "VALID",
        dimension_numbers=("NCH", "OIH", "NCH"),
        preferred_element_type=jnp.promote_types(filters_Cx1xW.dtype, jnp.float32),
    )  # fmt: skip
    return y_BxCxT.transpose(2, 0, 1)


def _windows(values_BxS: jax.Array, T: int, W: int) -> jax.Array:
    """[T, B, W]: row t = values[:, t : t + W], for S >= T + W - 1 values. Built by doubling (rows r, then
    the same rows shifted by r), log2(T) concatenations: XLA's CPU code for T static slices stacked, or for
    their gather, cost 24 and 11 us a frame of 16 x 512 where this costs 5 (2026-12-03, Intel Xeon), in a
    tiered sample of ~15 us."""
    rows = 1 << max(T - 1, 0).bit_length()  # T rounded up to a power of 2; past S the rows read padding
    x = jnp.pad(values_BxS[:, : T + W - 1], ((0, 0), (0, rows - T)))[None]
    count = 1
    while count < rows:  # rows 0 .. count - 1 shifted by 0, then by count
        length = x.shape[-1] - count
        x = jnp.concatenate([x[..., :length], x[..., count : count + length]], axis=0)
        count *= 2
    return x[:T, :, :W]


def check(cfg: ModelConfig) -> None:
    if cfg.sample_history_rank and not cfg.sample_history:
        raise UserError(
            "model.sample_history_rank needs a history to read: set model.sample_history > 0 (e.g. 256) "
            "or model.sample_history_rank = 0"
        )
