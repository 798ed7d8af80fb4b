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
cells, "top_cond": the current top frame's conditioning [B, R, H]}. Generation (`sample_scan`) is a
`lax.scan` over frames whose body steps the frame tier once and scans the F samples of the frame (with 3
tiers, inside a scan over top frames that steps the top tier once); `step` does one sample (each tier at
its frame starts).

Shape letters: B batch, T samples (K = T / F frames), F frame size, L top frame size, R = L / F, E
wordvec_size, H rnn_size, D sample_size, W sample_history, Q sample_history_rank, N the carried window,
V 256.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvoice import cells, model, sample_frame, sample_history, sample_level, stored
from jaxvoice.config import ModelConfig
from jaxvoice.errors import UserError

V = model.V
SILENCE = 128  # the linear and μ-law code of 0.0: what the history of a fresh stream holds


def _frame_input_size(cfg: ModelConfig, frame: int) -> int:
    return frame * (cfg.wordvec_size if cfg.frame_input == "embedded" else 1)


def _period(cfg: ModelConfig) -> int:
    """Samples per step of the slowest tier: windows and generation chunks are whole periods."""
    return cfg.top_frame_size if cfg.tiers == 3 else cfg.frame_size


def _window_length(cfg: ModelConfig) -> int:
    """N: the input symbols the carry keeps: a period, or with `model.sample_history` W the F + W that the
    history of a frame's last sample reaches back."""
    return max(_period(cfg), cfg.frame_size + cfg.sample_history)


def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    F, E, H, D = cfg.frame_size, cfg.wordvec_size, cfg.rnn_size, cfg.sample_size
    cell = cells.get_cell(cfg.cell)
    keys = iter(jax.random.split(key, cfg.num_layers + cfg.sample_layers + 8))
    frame_in = _frame_input_size(cfg, F) + (H if cfg.tiers == 3 else 0)  # 3 tiers: and the top tier's vector
    params = {
        "frame_layers": [
            cell.init(next(keys), frame_in if layer == 0 else H, H) for layer in range(cfg.num_layers)
        ],
        _up_weight(cfg): model.dense_init(next(keys), H, (1 if cfg.upsampling == "shared" else F) * D),
        "up_b_FD": jnp.zeros((F * D,), jnp.float32),
    }
    # the sample level's keys in the order they always were, so that inits stay the same
    embed_key, out_key = next(keys), next(keys)
    if cfg.frame_input == "embedded":
        params["frame_embed_VxE"] = jax.random.normal(next(keys), (V, E), jnp.float32)
    if cfg.tiers == 3:  # its own keys, so that a 2-tier model's init is what it always was
        R, L = cfg.top_frame_size // F, cfg.top_frame_size
        top_keys = iter(jax.random.split(jax.random.fold_in(key, 3), cfg.num_layers + 1))
        params["top_layers"] = [
            cell.init(next(top_keys), _frame_input_size(cfg, L) if layer == 0 else H, H)
            for layer in range(cfg.num_layers)
        ]
        params[_up_weight(cfg, top=True)] = model.dense_init(
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
        "window": jnp.full((batch, _window_length(cfg)), SILENCE, jnp.int32),
        "sample": cell.initial_carry(batch, D) if cfg.sample_level == "rnn" else (),
        "cond": jnp.zeros((batch, F, D), jnp.float32),
        "pos": jnp.zeros((batch,), jnp.int32),
    }
    if cfg.tiers == 3:
        carry["top"] = tuple(cell.initial_carry(batch, H) for _ in range(cfg.num_layers))
        carry["top_cond"] = jnp.zeros((batch, cfg.top_frame_size // F, H), jnp.float32)
    return carry


def _frame_inputs(params, frames_NxF, cfg) -> jax.Array:
    """The frame tier's input for each frame [N, F] of symbols: [N, F] scaled to [-2, 2], or [N, F * E]."""
    if cfg.frame_input == "embedded":
        return params["frame_embed_VxE"][frames_NxF].reshape(frames_NxF.shape[0], -1)
    return sample_level.scaled(frames_NxF)


def _up_weight(cfg: ModelConfig, top: bool = False) -> str:
    """The name of a tier's upsampling matrix: one map per position, or with `model.upsampling = "shared"`
    one map for all of them."""
    shared = cfg.upsampling == "shared"
    if top:
        return "top_up_HxH" if shared else "top_up_HxRH"
    return "up_HxD" if shared else "up_HxFD"


def _upsample(cfg, o_NxH, w, b_CW, count: int) -> jax.Array:
    """`count` vectors [N, count, W] per row of o: SampleRNN's learned linear upsampling (w [H, count * W],
    a map per position) or one map for every position (w [H, W]) plus a bias per position (b_CW). The
    shared map has count times fewer weights to fit; on minutes of audio it generalises better."""
    y_NxW = model.dense(cfg, o_NxH, w)
    if cfg.upsampling == "shared":
        return y_NxW[:, None, :] + b_CW.reshape(count, -1)
    return (y_NxW + b_CW).reshape(o_NxH.shape[0], count, -1)


def _conditioning(params, o_NxH, cfg) -> jax.Array:
    """F conditioning vectors [N, F, D] per frame tier output."""
    return _upsample(cfg, o_NxH, params[_up_weight(cfg)], params["up_b_FD"], cfg.frame_size)


def _top_conditioning(params, o_NxH, cfg) -> jax.Array:
    """R = top_frame_size / frame_size conditioning vectors [N, R, H] per top tier output, one per frame."""
    R = cfg.top_frame_size // cfg.frame_size
    return _upsample(cfg, o_NxH, params[_up_weight(cfg, top=True)], params["top_up_b_RH"], R)


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
    F, D, L, N = cfg.frame_size, cfg.sample_size, _period(cfg), _window_length(cfg)
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
    inputs_NxI = _frame_inputs(params, frames_KxBxF.reshape(K * B, F), cfg)
    if cfg.tiers == 3:
        # Top frame k reads the L inputs up to its first target's input, e[kL + N - L : kL + N]; its R
        # outputs join the inputs of frames kR .. kR + R - 1.
        K3, R = T // L, L // F
        top_KxBxL = e_BxTN[:, N - L : N - L + K3 * L].reshape(B, K3, L).transpose(1, 0, 2)
        top_inputs_NxI = _frame_inputs(params, top_KxBxL.reshape(K3 * B, L), cfg)
        o_KxBxH, new_carry["top"] = _run_tier(
            params["top_layers"], carry["top"], top_inputs_NxI, K3, cfg, top_key
        )
        above_KxBxRxH = _top_conditioning(params, o_KxBxH.reshape(K3 * B, -1), cfg).reshape(K3, B, R, -1)
        new_carry["top_cond"] = above_KxBxRxH[-1]
        above_NxH = above_KxBxRxH.transpose(0, 2, 1, 3).reshape(K * B, -1)  # frame kR + r
        inputs_NxI = jnp.concatenate([inputs_NxI, above_NxH], axis=-1)
    o_KxBxH, frame_carry = _run_tier(params["frame_layers"], carry["frame"], inputs_NxI, K, cfg, frame_key)
    cond_KxBxFxD = _conditioning(params, o_KxBxH.reshape(K * B, -1), cfg).reshape(K, B, F, D)
    cond_TxBxD = cond_KxBxFxD.transpose(0, 2, 1, 3).reshape(T, B, D)  # t = kF + i
    if cfg.sample_history:
        cond_TxBxD = cond_TxBxD + sample_history.conditioning(params, e_BxTN, N, T, cfg, o_KxBxH)
    logits_NxV, sample_carry = sample_level.window_logits(
        params, e_BxTN, N, cond_TxBxD, carry["sample"], cfg, sample_key
    )
    new_carry.update(
        frame=frame_carry,
        window=e_BxTN[:, -N:],
        sample=sample_carry,
        cond=cond_TxBxD[-F:].transpose(1, 0, 2),
        pos=jnp.zeros((B,), jnp.int32),  # the next window starts a period
    )
    return logits_NxV.reshape(T, B, V), new_carry


def _top_step(params, carry, cfg):
    """At a period start (3 tiers): the top tier one step on the last L inputs, and its R conditioning
    vectors for the frame tier."""
    inputs_BxI = _frame_inputs(params, carry["window"][:, -cfg.top_frame_size :], cfg)
    o_BxH, top_carry = model.step_layers(cfg, params["top_layers"], carry["top"], inputs_BxI)
    return dict(carry, top=top_carry, top_cond=_top_conditioning(params, o_BxH, cfg))


def _frame_step(params, carry, cfg, above_BxH=None):
    """At a frame start: the frame tier one step on the F inputs up to now (and, with 3 tiers, the top
    tier's vector for this frame, `above_BxH`), and its F conditioning vectors."""
    inputs_BxI = _frame_inputs(params, carry["window"][:, -cfg.frame_size :], cfg)
    if above_BxH is not None:
        inputs_BxI = jnp.concatenate([inputs_BxI, above_BxH], axis=-1)
    o_BxH, frame_carry = model.step_layers(cfg, params["frame_layers"], carry["frame"], inputs_BxI)
    cond_BxFxD = _conditioning(params, o_BxH, cfg)
    if cfg.sample_history:  # the window's last input is target 0's: e with N - 1 inputs before it
        window_BxN = carry["window"]
        history_FxBxD = sample_history.conditioning(
            params, window_BxN, window_BxN.shape[1], cfg.frame_size, cfg, o_BxH[None]
        )
        cond_BxFxD = cond_BxFxD + history_FxBxD.transpose(1, 0, 2)
    return dict(carry, frame=frame_carry, cond=cond_BxFxD)


def _sample_step(params, carry, cfg, tables_FxVxD=None, position=None):
    """The sample level at position carry["pos"] of the period: (logits_BxV, carry with pos + 1). A loop that
    knows the position in the frame (`position`, a Python int) saves reading it from the carry."""
    F = cfg.frame_size
    if position is None:
        cond_BxD = jnp.take_along_axis(carry["cond"], (carry["pos"] % F)[:, None, None], axis=1)[:, 0]
    else:
        cond_BxD = carry["cond"][:, position]
    logits_BxV, sample_carry = sample_level.step_logits(
        params, carry["window"][:, -F:], cond_BxD, carry["sample"], cfg, tables_FxVxD
    )
    pos = (carry["pos"] + 1) % _period(cfg)
    return logits_BxV, dict(carry, sample=sample_carry, pos=pos)


def _push(carry, token_B):
    """The window with the newest input appended (its oldest dropped)."""
    return dict(carry, window=jnp.concatenate([carry["window"][:, 1:], token_B[:, None]], axis=1))


def step(params, carry, token_B, cfg):
    """One generation step from any position (each tier runs when its frame starts)."""
    F, pos = cfg.frame_size, carry["pos"]
    carry = _push(carry, token_B.astype(jnp.int32))
    above_BxH = None
    if cfg.tiers == 3:
        carry = jax.lax.cond(pos[0] == 0, lambda c: _top_step(params, c, cfg), lambda c: c, carry)
        above_BxH = jnp.take_along_axis(carry["top_cond"], (pos // F)[:, None, None], axis=1)[:, 0]
    carry = jax.lax.cond(
        pos[0] % F == 0, lambda c: _frame_step(params, c, cfg, above_BxH), lambda c: c, carry
    )
    return _sample_step(params, carry, cfg)


def sample_prepare(params, cfg, store):
    """The params as the sampler reads them: the sample level's (`sample_level.sample_prepare`), the
    upsamplings' weights as `store(w)` keeps them (e.g. packed for jaxvoice's CPU kernel), the frame tiers'
    too where their cell multiplies only through `cells.dot`."""
    sp = dict(params, **sample_level.sample_prepare(params, cfg, store))
    sp.pop(sample_level.in_weight(cfg), None)  # generation reads its tables instead
    up = _up_weight(cfg)
    sp[up] = store(params[up])  # read once per frame, but (per position) F x D wide: the largest product
    sp["frame_layers"] = [cells.store_layer(cfg.cell, layer, store) for layer in params["frame_layers"]]
    if "frame_kernel" in sp and _recurrent_packed(sp, cfg):  # the kernel computes them ahead (sample_scan)
        ahead_w = jnp.stack([layer["wh_HxG"].data for layer in sp["frame_layers"]])
        sp["frame_kernel"] = dict(sp["frame_kernel"], ahead_w=ahead_w)
    for name in sample_history.STORED:
        if name in params:  # read by a frame's F rows at once
            sp[name] = store(params[name], rows=cfg.frame_size)
    if cfg.tiers == 3:
        sp[_up_weight(cfg, top=True)] = store(params[_up_weight(cfg, top=True)])
        sp["top_layers"] = [cells.store_layer(cfg.cell, layer, store) for layer in params["top_layers"]]
    return sp


def _recurrent_packed(sp, cfg) -> bool:
    """Whether every frame layer's recurrent weights are stored packed for a cell that says which state it
    multiplies by them (`cells.Cell.recurrent`): then the frame kernel can compute those products."""
    cell = cells.get_cell(cfg.cell)
    return cell.recurrent is not None and all(
        isinstance(w := layer.get("wh_HxG"), stored.Stored) and w.form == "packed"
        for layer in sp["frame_layers"]
    )


def _recurrent_products(sp, frame_carry, cfg) -> jax.Array:
    """[A, B, G]: each frame layer's recurrent product h W_h, as its step would compute it."""
    recurrent = cells.get_cell(cfg.cell).recurrent
    return jnp.stack(
        [
            cells.dot(recurrent(c), layer["wh_HxG"])
            for c, layer in zip(frame_carry, sp["frame_layers"], strict=True)
        ]
    )


def sample_scan(sp, carry, token_B, u_CxB, choose, cfg):
    """C steps of generation from a period start (C a multiple of it): a scan over the frames whose body
    steps the frame tier once and scans the F samples of the frame, each chosen by `choose(logits, u)`; with
    3 tiers, a scan over top frames whose body steps the top tier once and then scans its R frames.
    `token_B` is the input of the first step; what `step` computes, step by step. `sp` is `sample_prepare`'s
    (or the params themselves). Where `sp` has the frame kernel's operands and `choose` says it draws by the
    plain rule (`draw.Choice.native_temperature`), each frame's sample level is one kernel call, which also
    computes the frame tier's recurrent products for the next frame (where `sample_prepare` stacked their
    weights), on another core while it draws the samples."""
    F = cfg.frame_size
    C, B = u_CxB.shape
    tables_FxVxD = sp.get("tables_FxVxD")
    temperature = getattr(choose, "native_temperature", None)
    native = "frame_kernel" in sp and temperature is not None
    ahead = native and "ahead_w" in sp["frame_kernel"]
    recurrent = cells.get_cell(cfg.cell).recurrent

    def frame(state, xs):
        (carry, token, ahead_AxBxG), (above_BxH, u_FxB) = state, xs
        params = sp
        if ahead:  # the frame layers' recurrent products, computed while the last frame was drawn
            layers = [
                dict(lp, wh_HxG=stored.Given(y))
                for lp, y in zip(sp["frame_layers"], ahead_AxBxG, strict=True)
            ]
            params = dict(sp, frame_layers=layers)
        carry = _frame_step(params, _push(carry, token), cfg, above_BxH)
        if native:  # the sample level's F steps in one call of jaxvoice's CPU kernel
            window = carry["window"]
            h_AxBxH = jnp.stack([recurrent(c) for c in carry["frame"]]) if ahead else None
            tokens_BxF, _, ahead_AxBxP = sample_frame.frame(
                sp, window[:, -F:], carry["cond"], u_FxB, temperature, h_AxBxH
            )
            if ahead:  # the kernel's whole panels of 16 columns, cut to the product's G
                ahead_AxBxG = ahead_AxBxP[..., : sp["frame_layers"][0]["wh_HxG"].out_features]
            window = jnp.concatenate([window, tokens_BxF[:, :-1]], axis=1)[:, -window.shape[1] :]
            carry = dict(carry, window=window, pos=(carry["pos"] + F) % _period(cfg))
            return (carry, tokens_BxF[:, -1], ahead_AxBxG), tokens_BxF.T.astype(jnp.uint8)
        chosen = []
        for position in range(F):  # unrolled, so each step knows its position in the frame
            if position:
                carry = _push(carry, token)
            logits_BxV, carry = _sample_step(sp, carry, cfg, tables_FxVxD, position)
            token = choose(logits_BxV, u_FxB[position])
            chosen.append(token.astype(jnp.uint8))
        return (carry, token, ahead_AxBxG), jnp.stack(chosen)

    def top_frame(state, u_RxFxB):
        carry, token, ahead_AxBxG = state
        # the top tier reads the window with this step's input, which `frame` then pushes itself
        top = _top_step(sp, _push(carry, token), cfg)
        carry = dict(carry, top=top["top"], top_cond=top["top_cond"])
        xs = (carry["top_cond"].transpose(1, 0, 2), u_RxFxB)
        return jax.lax.scan(frame, (carry, token, ahead_AxBxG), xs)

    ahead_AxBxG = _recurrent_products(sp, carry["frame"], cfg) if ahead else None
    state = (carry, token_B.astype(jnp.int32), ahead_AxBxG)
    if cfg.tiers == 3:
        L = cfg.top_frame_size
        (carry, token_B, _), tokens = jax.lax.scan(top_frame, state, u_CxB.reshape(C // L, L // F, F, B))
    else:
        (carry, token_B, _), tokens = jax.lax.scan(frame, state, (None, u_CxB.reshape(C // F, F, B)))
    return carry, token_B, tokens.reshape(C, B).T


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
    ):
        if value not in options:
            raise UserError(f"{key} must be one of {', '.join(options)}, got '{value}'")


TIERED = model.Family(
    init_params,
    init_carry,
    logits,
    step,
    check,
    window=_period,
    sample_scan=sample_scan,
    sample_prepare=sample_prepare,
)
model.register_family("tiered", TIERED)
