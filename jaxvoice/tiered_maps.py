"""The maps the tiered family's training (`jaxvoice.tiered`) and generation (`jaxvoice.tiered_generation`)
both apply: a tier's input from the samples before its frame, and the learned upsampling of a tier's output
to the conditioning of the tier below. Shape letters as in `jaxvoice.tiered`."""

from __future__ import annotations

import jax

from jaxvoice import model, sample_level
from jaxvoice.config import ModelConfig


def frame_input_size(cfg: ModelConfig, frame: int) -> int:
    return frame * (cfg.wordvec_size if cfg.frame_input == "embedded" else 1)


def period(cfg: ModelConfig) -> int:
    """Samples per step of the slowest tier: windows and generation chunks are whole periods."""
    return cfg.top_frame_size if cfg.tiers == 3 else cfg.frame_size


def window_length(cfg: ModelConfig) -> int:
    """N: the input symbols the carry keeps: a period, or with `model.sample_history` W the F + W that the
    history of a frame's last sample reaches back."""
    return max(period(cfg), cfg.frame_size + cfg.sample_history)


def frame_inputs(params, frames_NxF, cfg) -> jax.Array:
    """The frame tier's input for each frame [N, F] of symbols: [N, F] scaled to [-2, 2], or [N, F * E]."""
    if cfg.frame_input == "embedded":
        return params["frame_embed_VxE"][frames_NxF].reshape(frames_NxF.shape[0], -1)
    return sample_level.scaled(frames_NxF)


def up_weight(cfg: ModelConfig, top: bool = False) -> str:
    """The name of a tier's upsampling matrix: one map per position, or with `model.upsampling = "shared"`
    one map for all of them."""
    shared = cfg.upsampling == "shared"
    if top:
        return "top_up_HxH" if shared else "top_up_HxRH"
    return "up_HxD" if shared else "up_HxFD"


def conditioned_layers(cfg: ModelConfig) -> int:
    """C: how many of the sample MLP's layers the frame tier conditions: its first, or with
    `model.sample_conditioning = "every"` each of its `model.sample_layers`."""
    every = cfg.sample_conditioning == "every" and cfg.sample_level == "mlp"
    return cfg.sample_layers if every else 1


def upsampled(cfg, o_NxH, w, b_CW, count: int) -> tuple[jax.Array, jax.Array]:
    """(y [N, G, W], b [count, W]) whose sum is `upsample`'s: G = 1 with the shared map, so that whoever
    adds them to a product can broadcast y over the positions rather than copy it to each."""
    y_NxW = model.dense(cfg, o_NxH, w)
    b_CxW = position_bias(b_CW, count)
    return y_NxW.reshape(o_NxH.shape[0], -1, b_CxW.shape[1]), b_CxW


def position_bias(b_CW, count: int) -> jax.Array:
    """[count, W]: the upsampling's bias of each position."""
    return b_CW.reshape(count, -1)


def upsample(cfg, o_NxH, w, b_CW, count: int) -> jax.Array:
    """`count` vectors [N, count, W] per row of o: SampleRNN's learned linear upsampling (w [H, count * W],
    a map per position) or one map for every position (w [H, W]) plus a bias per position (b_CW). The
    shared map has count times fewer weights to fit; on minutes of audio it generalises better."""
    y_NxGxW, b_CxW = upsampled(cfg, o_NxH, w, b_CW, count)
    return y_NxGxW + b_CxW


def conditioning(params, o_NxH, cfg) -> jax.Array:
    """F conditioning vectors [N, F, C * D] per frame tier output: layer c's the D from c * D
    (`conditioned_layers`)."""
    return upsample(cfg, o_NxH, params[up_weight(cfg)], params["up_b_FD"], cfg.frame_size)


def top_conditioning(params, o_NxH, cfg) -> jax.Array:
    """R = top_frame_size / frame_size conditioning vectors [N, R, H] per top tier output, one per frame."""
    R = cfg.top_frame_size // cfg.frame_size
    return upsample(cfg, o_NxH, params[up_weight(cfg, top=True)], params["top_up_b_RH"], R)
