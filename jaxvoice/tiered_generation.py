"""Generation for the tiered family (`jaxvoice.tiered`): one sample at a time from any position (`step`), the
params as the sampler reads them (`sample_prepare`), and whole frames in a `lax.scan` (`sample_scan`), each
frame's sample level one call of jaxvoice's CPU kernel where it can run (`jaxvoice.sample_frame`). Shape
letters as in `jaxvoice.tiered`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvoice import cells, model, packed_matmul, sample_frame, sample_history, sample_level, stored
from jaxvoice import tiered_maps as maps

HISTORY_IN_KERNEL = ("history_WxQ", "history_QxD")  # the history's weights the frame kernel reads, packed


def _top_step(params, carry, cfg):
    """At a period start (3 tiers): the top tier one step on the last L inputs, and its R conditioning
    vectors for the frame tier."""
    inputs_BxI = maps.frame_inputs(params, carry["window"][:, -cfg.top_frame_size :], cfg)
    o_BxH, top_carry = model.step_layers(cfg, params["top_layers"], carry["top"], inputs_BxI)
    return dict(carry, top=top_carry, top_cond=maps.top_conditioning(params, o_BxH, cfg))


def _frame_tier(params, carry, cfg, above_BxH=None):
    """At a frame start: the frame tier one step on the F inputs up to now (and, with 3 tiers, the top
    tier's vector for this frame, `above_BxH`): (its output o_BxH, its carry)."""
    inputs_BxI = maps.frame_inputs(params, carry["window"][:, -cfg.frame_size :], cfg)
    if above_BxH is not None:
        inputs_BxI = jnp.concatenate([inputs_BxI, above_BxH], axis=-1)
    return model.step_layers(cfg, params["frame_layers"], carry["frame"], inputs_BxI)


def _frame_step(params, carry, cfg, above_BxH=None):
    """At a frame start: the frame tier one step (`_frame_tier`) and its F conditioning vectors, the
    history's added to the first layer's."""
    o_BxH, frame_carry = _frame_tier(params, carry, cfg, above_BxH)
    cond_BxFxD = maps.conditioning(params, o_BxH, cfg)
    if cfg.sample_history:  # the window's last input is target 0's: e with N - 1 inputs before it
        window_BxN = carry["window"]
        history_FxBxD = sample_history.conditioning(
            params, window_BxN, window_BxN.shape[1], cfg.frame_size, cfg, o_BxH[None]
        )
        first_BxFxD = cond_BxFxD[..., : cfg.sample_size] + history_FxBxD.transpose(1, 0, 2)
        cond_BxFxD = jnp.concatenate([first_BxFxD, cond_BxFxD[..., cfg.sample_size :]], axis=-1)
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
    pos = (carry["pos"] + 1) % maps.period(cfg)
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
    up = maps.up_weight(cfg)
    sp[up] = store(params[up])  # read once per frame, but (per position) F x D wide: the largest product
    sp["frame_layers"] = [cells.store_layer(cfg.cell, layer, store) for layer in params["frame_layers"]]
    for name in sample_history.STORED:
        if name in params:  # read by a frame's F rows at once
            sp[name] = store(params[name], rows=cfg.frame_size)
    if (  # the kernel adds the history itself, in float32 as XLA does (bfloat16 products round x too)
        "frame_kernel" in sp
        and cfg.sample_history
        and cfg.sample_history_rank
        and sp["out_DxV"].data.dtype == jnp.float32
    ):
        history = {name: packed_matmul.pack(params[name]) for name in HISTORY_IN_KERNEL}
        sp["frame_kernel"] = dict(sp["frame_kernel"], **history)
    if cfg.tiers == 3:
        sp[maps.up_weight(cfg, top=True)] = store(params[maps.up_weight(cfg, top=True)])
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


def _history_in_kernel(sp) -> bool:
    """Whether the frame kernel adds the sample history itself: a history with gains, whose filters and map
    `sample_prepare` packed for the kernel."""
    return all(name in sp.get("frame_kernel", {}) for name in HISTORY_IN_KERNEL)


def _last_values(window_BxN, cfg) -> jax.Array:
    """[B, W]: the window's last W inputs in [-2, 2]: the newest F - 1 of this frame's history, and the next
    frame's older values (the frame kernel's history values)."""
    return sample_level.scaled(window_BxN[:, -cfg.sample_history :])


def sample_scan(sp, carry, token_B, u_CxB, choose, cfg):
    """C steps of generation from a period start (C a multiple of it): a scan over the frames whose body
    steps the frame tier once and scans the F samples of the frame, each chosen by `choose(logits, u)`; with
    3 tiers, a scan over top frames whose body steps the top tier once and then scans its R frames.
    `token_B` is the input of the first step; what `step` computes, step by step. `sp` is `sample_prepare`'s
    (or the params themselves). Where `sp` has the frame kernel's operands and `choose` says it draws by the
    plain rule (`draw.Choice.native_temperature`), each frame's sample level is one kernel call, which also
    computes the frame tier's recurrent products for the next frame (where each frame layer keeps its
    recurrent weights packed, `_recurrent_packed`), and the sample history's sums over the next frame's older
    values (`_history_in_kernel`), on another core while it draws the samples, and adds this frame's history
    (its newest values, the gains and the map) itself: a trained `voice_cpu_tiered` frame 1.08-1.13x faster
    than with the history's windows and small products in XLA (AMD EPYC Zen 4, 2026-12-05,
    docs/performance.md). The carry's "cond" is then the last frame's without the history's term (a step at
    the next frame's start makes its own)."""
    F = cfg.frame_size
    C, B = u_CxB.shape
    tables_FxVxD = sp.get("tables_FxVxD")
    temperature = getattr(choose, "native_temperature", None)
    native = "frame_kernel" in sp and temperature is not None
    ahead = native and _recurrent_packed(sp, cfg)
    history = native and _history_in_kernel(sp)
    # the kernel given the frame's upsampled vector and adding each position's bias itself (unless XLA adds a
    # history to the first layer's conditioning): the [F, C * D] sum is not written a frame
    upsampled = native and (history or not cfg.sample_history)
    recurrent = cells.get_cell(cfg.cell).recurrent

    def frame(state, xs):
        (carry, token, ahead_AxBxG, older_BxFxQ, up_BxGxD), (above_BxH, u_FxB) = state, xs
        bias_FxD = None
        params = sp
        if ahead:  # the frame layers' recurrent products, computed while the last frame was drawn
            layers = [
                dict(lp, wh_HxG=stored.Given(y))
                for lp, y in zip(sp["frame_layers"], ahead_AxBxG, strict=True)
            ]
            params = dict(sp, frame_layers=layers)
        carry = _push(carry, token)
        if upsampled:
            o_BxH, frame_carry = _frame_tier(params, carry, cfg, above_BxH)
            up_BxGxD, bias_FxD = maps.upsampled(cfg, o_BxH, sp[maps.up_weight(cfg)], sp["up_b_FD"], F)
            carry, newest = dict(carry, frame=frame_carry), None
            if history:  # the kernel adds the history to the first layer's conditioning
                gains_BxQ = sample_history.frame_gains(sp, o_BxH, cfg)
                newest = (older_BxFxQ, _last_values(carry["window"], cfg), gains_BxQ)
        else:
            carry, newest = _frame_step(params, carry, cfg, above_BxH), None
        if native:  # the sample level's F steps in one call of jaxvoice's CPU kernel
            window = carry["window"]
            given = None
            if (
                ahead
            ):  # each layer's state that its recurrent weights multiply, and the weights as it keeps them
                h_AxBxH = jnp.stack([recurrent(c) for c in carry["frame"]])
                given = (h_AxBxH, [layer["wh_HxG"].data for layer in sp["frame_layers"]])
            tokens_BxF, _, ahead_AxBxP, older_BxFxQ = sample_frame.frame(
                sp,
                window[:, -F:],
                up_BxGxD if upsampled else carry["cond"],
                u_FxB,
                temperature,
                given,
                newest,
                bias_FxD,
            )
            if ahead:  # the kernel's whole panels of 16 columns, cut to the product's G
                ahead_AxBxG = ahead_AxBxP[..., : sp["frame_layers"][0]["wh_HxG"].out_features]
            window = jnp.concatenate([window, tokens_BxF[:, :-1]], axis=1)[:, -window.shape[1] :]
            carry = dict(carry, window=window, pos=(carry["pos"] + F) % maps.period(cfg))
            state = (carry, tokens_BxF[:, -1], ahead_AxBxG, older_BxFxQ, up_BxGxD)
            return state, tokens_BxF.T.astype(jnp.uint8)
        chosen = []
        for position in range(F):  # unrolled, so each step knows its position in the frame
            if position:
                carry = _push(carry, token)
            logits_BxV, carry = _sample_step(sp, carry, cfg, tables_FxVxD, position)
            token = choose(logits_BxV, u_FxB[position])
            chosen.append(token.astype(jnp.uint8))
        return (carry, token, ahead_AxBxG, older_BxFxQ, up_BxGxD), jnp.stack(chosen)

    def top_frame(state, u_RxFxB):
        carry, token, *rest = state
        # the top tier reads the window with this step's input, which `frame` then pushes itself
        top = _top_step(sp, _push(carry, token), cfg)
        carry = dict(carry, top=top["top"], top_cond=top["top_cond"])
        xs = (carry["top_cond"].transpose(1, 0, 2), u_RxFxB)
        return jax.lax.scan(frame, (carry, token, *rest), xs)

    ahead_AxBxG = _recurrent_products(sp, carry["frame"], cfg) if ahead else None
    older_BxFxQ = None
    if history:  # the first frame's older sums: its window's W values before the newest F - 1
        window_BxN = _push(carry, token_B.astype(jnp.int32))["window"]
        older_BxFxQ = sample_history.older_sums(sp, window_BxN, cfg)
    up_BxGxD = None
    if upsampled:  # the last frame's upsampled vector, its conditioning's sum made once after the scan
        G = 1 if cfg.upsampling == "shared" else F
        up_BxGxD = jnp.zeros((B, G, carry["cond"].shape[-1]), jnp.float32)
    state = (carry, token_B.astype(jnp.int32), ahead_AxBxG, older_BxFxQ, up_BxGxD)
    if cfg.tiers == 3:
        L = cfg.top_frame_size
        state, tokens = jax.lax.scan(top_frame, state, u_CxB.reshape(C // L, L // F, F, B))
    else:
        state, tokens = jax.lax.scan(frame, state, (None, u_CxB.reshape(C // F, F, B)))
    carry, token_B, _, _, up_BxGxD = state
    if upsampled:  # as `tiered_maps.upsample` adds them
        carry = dict(carry, cond=up_BxGxD + maps.position_bias(sp["up_b_FD"], F))
    return carry, token_B, tokens.reshape(C, B).T
