"""The frame-level tier (SampleRNN, Mehri et al. 2017) as a model family: `model.kind = "tiered"`.

A frame tier, `model.num_layers` layers of the registered `model.cell` of width `model.rnn_size`, steps once
per frame of F = `model.frame_size` samples and reads the F samples before the frame (scaled to [-2, 2],
or embedded: `model.frame_input`). Its output, mapped by a learned linear upsampling to F conditioning
vectors (a map per position, as SampleRNN's; or `model.upsampling = "shared"`: one map and a bias per
position, which generalises better on minutes of audio), drives a sample level of width D =
`model.sample_size` (`jaxvoice.sample_level`) that predicts each sample from the F samples before it: an MLP
over them (`model.sample_level = "mlp"`), or one layer of the cell over every sample (`"rnn"`), each sample
embedded, scaled or both (`model.sample_input`). The recurrence runs F times less often than a flat
stack's and spans F times more audio per step; most of the work is whole-window matrix products.
`model.dropout` (training only) drops the inputs of frame layers above the first, the frame tier's output
before the upsampling, and the sample level's hidden activations (its regulariser: the MLP and the
upsampling hold most of the parameters).

With `model.sample_history = W`, each sample's conditioning also gets what the W samples before the sample
level's window say (`jaxvoice.sample_history`: a long-term predictor, optionally with gains the frame tier
sets every frame), added once per frame in generation.

With `model.tiers = 3`, a top tier of the same layers steps once per L = `model.top_frame_size` samples
(a multiple of F) on the L samples before it; its output, upsampled to R = L / F vectors of width H, joins
the inputs of the frame tier's R steps (SampleRNN's 3-tier model).

Windows are a multiple of the period P (F, or L with 3 tiers) long and start at period boundaries. The
carry (batch-first, like every family's) is {"frame": the frame tier's cells, "window": the last N input
symbols [B, N] (N = P, or F + W with a longer history), "sample": the sample-level cell's state (rnn) or (), "cond": the current frame's
conditioning [B, F, D], "pos": the position in the period [B]}, and with 3 tiers {"top": the top tier's
cells, "top_cond": the current top frame's conditioning [B, R, H]}. Generation
(`jaxvoice.tiered_generation`) is a `lax.scan` over frames whose body steps the frame tier once and scans
the F samples of the frame (with 3 tiers, inside a scan over top frames that steps the top tier once);
`step` does one sample (each tier at its frame starts). The maps both share are in
`jaxvoice.tiered_maps`.

Shape letters: B batch, T samples (K = T / F frames), F frame size, L top frame size, R = L / F, E
wordvec_size, H rnn_size, D sample_size, W sample_history, Q sample_history_rank, N the carried window,
V 256.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvoice import cells, model, sample_history, sample_level
from jaxvoice import tiered_generation as generation
from jaxvoice import tiered_maps as maps
from jaxvoice.config import ModelConfig
from jaxvoice.errors import UserError

V = model.V
SILENCE = 128  # the linear and μ-law code of 0.0: what the history of a fresh stream holds


def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    F, E, H, D = cfg.frame_size, cfg.wordvec_size, cfg.rnn_size, cfg.sample_size
    C = maps.conditioned_layers(cfg)
    cell = cells.get_cell(cfg.cell)
    keys = iter(jax.random.split(key, cfg.num_layers + cfg.sample_layers + 8))
    frame_in = maps.frame_input_size(cfg, F) + (
        H if cfg.tiers == 3 else 0
    )  # 3 tiers: and the top tier's vector
    params = {
        "frame_layers": [
            cell.init(next(keys), frame_in if layer == 0 else H, H) for layer in range(cfg.num_layers)
        ],
        maps.up_weight(cfg): model.dense_init(
            next(keys), H, (1 if cfg.upsampling == "shared" else F) * C * D
        ),
        "up_b_FD": jnp.zeros((F * C * D,), jnp.float32),
    }
    # the sample level's keys in the order they always were, so that inits stay the same
    embed_key, out_key = next(keys), next(keys)
    if cfg.frame_input == "embedded":
        params["frame_embed_VxE"] = jax.random.normal(next(keys), (V, E), jnp.float32)
    if cfg.tiers == 3:  # its own keys, so that a 2-tier model's init is what it always was
        R, L = cfg.top_frame_size // F, cfg.top_frame_size
        top_keys = iter(jax.random.split(jax.random.fold_in(key, 3), cfg.num_layers + 1))
        params["top_layers"] = [
            cell.init(next(top_keys), maps.frame_input_size(cfg, L) if layer == 0 else H, H)
            for layer in range(cfg.num_layers)
        ]
        params[maps.up_weight(cfg, top=True)] = model.dense_init(
            next(top_keys), H, (1 if cfg.upsampling == "shared" else R) * H
        )
        params["top_up_b_RH"] = jnp.zeros((R * H,), jnp.float32)
    params.update(sample_history.init_params(key, cfg))  # {} without a history
    params.update(sample_level.init_params(embed_key, out_key, keys, cfg))
    return params


def init_carry(cfg: ModelConfig, batch: int) -> dict:
    cell = cells.get_cell(cfg.cell)
    F, H, D = cfg.frame_size, cfg.rnn_size, cfg.sample_size
    carry = {
        "frame": tuple(cell.initial_carry(batch, H) for _ in range(cfg.num_layers)),
        "window": jnp.full((batch, maps.window_length(cfg)), SILENCE, jnp.int32),
        "sample": cell.initial_carry(batch, D) if cfg.sample_level == "rnn" else (),
        "cond": jnp.zeros((batch, F, maps.conditioned_layers(cfg) * D), jnp.float32),
        "pos": jnp.zeros((batch,), jnp.int32),
    }
    if cfg.tiers == 3:
        carry["top"] = tuple(cell.initial_carry(batch, H) for _ in range(cfg.num_layers))
        carry["top_cond"] = jnp.zeros((batch, cfg.top_frame_size // F, H), jnp.float32)
    return carry


def _run_tier(layers, carry, inputs_NxI, K, cfg, key):
    """A frame tier's layers over K steps: (o_KxBxH, carry), with dropout (a key) on the inputs of layers
    above the first and on the output."""
    masks = None
    if key is not None:
        masks = model.dropout_masks(key, cfg, (K, inputs_NxI.shape[0] // K, cfg.rnn_size))
    o_KxBxH, carry = model.run_layers(cfg, layers, carry, inputs_NxI, None, masks)
    return (o_KxBxH if masks is None else o_KxBxH * masks[0]), carry


def logits(params, tokens_BxT, carry, cfg, dropout_key=None):
    """Time-major logits_TxBxV of the sample after each input, and the carry after the window."""
    F, D, L, N = cfg.frame_size, cfg.sample_size, maps.period(cfg), maps.window_length(cfg)
    B, T = tokens_BxT.shape
    K = T // F
    x_BxT = tokens_BxT.astype(jnp.int32)
    # e[:, j] = the input j - (N - 1): the history of N - 1 symbols, then this window's.
    e_BxTN = jnp.concatenate([carry["window"][:, 1:], x_BxT], axis=1)
    frame_key, sample_key, top_key = None, None, None
    if dropout_key is not None and cfg.dropout > 0:
        frame_key, sample_key = jax.random.split(dropout_key)
        top_key = jax.random.fold_in(frame_key, 3)
    new_carry = {}
    # Frame k reads the F inputs up to its first target's input, e[kF + N - F : kF + N]; its output
    # conditions the targets kF .. kF + F - 1.
    frames_KxBxF = e_BxTN[:, N - F : N - F + K * F].reshape(B, K, F).transpose(1, 0, 2)
    inputs_NxI = maps.frame_inputs(params, frames_KxBxF.reshape(K * B, F), cfg)
    if cfg.tiers == 3:
        # Top frame k reads the L inputs up to its first target's input, e[kL + N - L : kL + N]; its R
        # outputs join the inputs of frames kR .. kR + R - 1.
        K3, R = T // L, L // F
        top_KxBxL = e_BxTN[:, N - L : N - L + K3 * L].reshape(B, K3, L).transpose(1, 0, 2)
        top_inputs_NxI = maps.frame_inputs(params, top_KxBxL.reshape(K3 * B, L), cfg)
        o_KxBxH, new_carry["top"] = _run_tier(
            params["top_layers"], carry["top"], top_inputs_NxI, K3, cfg, top_key
        )
        above_KxBxRxH = maps.top_conditioning(params, o_KxBxH.reshape(K3 * B, -1), cfg).reshape(K3, B, R, -1)
        new_carry["top_cond"] = above_KxBxRxH[-1]
        above_NxH = above_KxBxRxH.transpose(0, 2, 1, 3).reshape(K * B, -1)  # frame kR + r
        inputs_NxI = jnp.concatenate([inputs_NxI, above_NxH], axis=-1)
    o_KxBxH, frame_carry = _run_tier(params["frame_layers"], carry["frame"], inputs_NxI, K, cfg, frame_key)
    y_NxGxCD, b_FxCD = maps.upsampled(
        cfg, o_KxBxH.reshape(K * B, -1), params[maps.up_weight(cfg)], params["up_b_FD"], F
    )
    cond_KxBxFxD = (y_NxGxCD[..., :D] + b_FxCD[:, :D]).reshape(K, B, F, D)
    cond_TxBxD = cond_KxBxFxD.transpose(0, 2, 1, 3).reshape(T, B, D)  # t = kF + i
    if cfg.sample_history:
        cond_TxBxD = cond_TxBxD + sample_history.conditioning(params, e_BxTN, N, T, cfg, o_KxBxH)
    # the layers above the first (model.sample_conditioning = "every"): y [K, G, B, E] and b [F, E], added
    # to their products as broadcasts rather than copied to each target
    G, E = y_NxGxCD.shape[1], y_NxGxCD.shape[2] - D
    above = (y_NxGxCD[..., D:].reshape(K, B, G, E).transpose(0, 2, 1, 3), b_FxCD[:, D:])
    logits_NxV, sample_carry = sample_level.window_logits(
        params, e_BxTN, N, cond_TxBxD, carry["sample"], cfg, sample_key, above
    )
    new_carry.update(
        frame=frame_carry,
        window=e_BxTN[:, -N:],
        sample=sample_carry,
        cond=jnp.concatenate(
            [cond_TxBxD[-F:].transpose(1, 0, 2), (above[0][-1] + above[1][:, None]).transpose(1, 0, 2)],
            axis=-1,
        ),
        pos=jnp.zeros((B,), jnp.int32),  # the next window starts a period
    )
    return logits_NxV.reshape(T, B, V), new_carry


def check(cfg: ModelConfig) -> None:
    cells.get_cell(cfg.cell)
    if cfg.frame_size < 2:
        raise UserError(f"model.frame_size must be at least 2 for model.kind tiered, got {cfg.frame_size}")
    if cfg.tiers not in (2, 3):
        raise UserError(f"model.tiers must be 2 or 3 for model.kind tiered, got {cfg.tiers}")
    if cfg.tiers == 3 and (cfg.top_frame_size <= cfg.frame_size or cfg.top_frame_size % cfg.frame_size):
        raise UserError(
            f"model.top_frame_size must be a multiple of model.frame_size ({cfg.frame_size}) above it for "
            f"model.tiers 3, got {cfg.top_frame_size}"
        )
    sample_history.check(cfg)
    for key, value, options in (
        ("model.frame_input", cfg.frame_input, ("scaled", "embedded")),
        ("model.upsampling", cfg.upsampling, ("per_position", "shared")),
        ("model.sample_level", cfg.sample_level, ("mlp", "rnn")),
        ("model.sample_input", cfg.sample_input, ("embedded", "scaled", "both")),
        ("model.sample_conditioning", cfg.sample_conditioning, ("first", "every")),
    ):
        if value not in options:
            raise UserError(f"{key} must be one of {', '.join(options)}, got '{value}'")
    if cfg.sample_conditioning == "every" and cfg.sample_level != "mlp":
        raise UserError(
            'model.sample_conditioning = "every" conditions the layers of an MLP sample level: set '
            'model.sample_level = "mlp" or model.sample_conditioning = "first"'
        )


TIERED = model.Family(
    init_params,
    init_carry,
    logits,
    generation.step,
    check,
    window=maps.period,
    sample_scan=generation.sample_scan,
    sample_prepare=generation.sample_prepare,
)
model.register_family("tiered", TIERED)
