"""model.py against an independent, obvious implementation (Python loop over time, separate sigmoids),
finite differences in float64, and the properties training relies on (carry, dropout, bf16, one compile).
Both implementations of the built-in cells run: the equations (model.kernels = "xla") and jaxvoice.fast
("auto", with the CPU kernels where they run).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxvoice import cells, model
from jaxvoice.config import ModelConfig

B, T = 3, 7
KINDS = ["lstm", "gru", "rnn"]
STATES = {"lstm": 2, "gru": 1, "rnn": 1}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
KERNELS = ["auto", "xla"]


def make_cfg(kind: str, **kw) -> ModelConfig:
    return ModelConfig(**{"cell": kind, "rnn_size": 8, "num_layers": 2, "wordvec_size": 5, **kw})


def stacked(carry) -> jax.Array:
    """The model's carry (a tuple of per-layer carries) as one [L, S, B, H] array."""
    return jnp.stack([jnp.stack(jax.tree.leaves(layer)) for layer in carry])


def unstacked(carry_LxSxBxH, kind: str):
    """[L, S, B, H] as the model's carry for `kind`."""
    return tuple((c[0], c[1]) if kind == "lstm" else c[0] for c in carry_LxSxBxH)


def setup(kind: str, seed: int = 0, **kw):
    """cfg, params (random everywhere, biases too, so a wrong bias path shows), tokens_BxT, targets_BxT and a
    random carry. Drawn with numpy into the shapes init_params gives: eager jax.random ops would each
    compile on their own, and compiling is most of this module's run time."""
    cfg = make_cfg(kind, **kw)
    shapes = jax.eval_shape(lambda: model.init_params(jax.random.key(0), cfg))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(0.4 * rng.standard_normal(s.shape), s.dtype), shapes)
    tokens = jnp.asarray(rng.integers(0, model.V, (B, T + 1), dtype=np.uint8))
    carry = jax.tree.map(
        lambda c: jnp.asarray(0.5 * rng.standard_normal(c.shape), jnp.float32), model.init_carry(cfg, B)
    )
    return cfg, params, tokens[:, :-1], tokens[:, 1:], carry


def to64(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


# jitted once here, so tests with the same shapes and config share the compiled programs
FORWARD = jax.jit(model.forward, static_argnums=3)
LOSS = jax.jit(model.loss, static_argnums=4)
LOSS_GRAD = jax.jit(jax.value_and_grad(model.loss, argnums=(0, 3), has_aux=True), static_argnums=4)
STEP = jax.jit(model.step, static_argnums=3)


def cell_step(kind: str):
    """One layer's step from its raw input, as the registered cell computes it."""
    cell = cells.get_cell(kind)
    return lambda lp, carry, x: cell.step(lp, carry, cell.project(lp, x))


# --- the reference: written for clarity, shares nothing with model.py -----------------------------------


def ref_cell(kind, lp, carry_SxBxH, x_BxI):
    sig = jax.nn.sigmoid
    h = carry_SxBxH[0]
    xw = x_BxI @ lp["wx_IxG"] + lp["b_G"]
    hw = h @ lp["wh_HxG"]
    if kind == "lstm":  # gate order i, f, o, g
        H = h.shape[-1]
        pre = xw + hw
        i, f, o, g = (pre[:, k * H : (k + 1) * H] for k in range(4))
        c = sig(f) * carry_SxBxH[1] + sig(i) * jnp.tanh(g)
        h = sig(o) * jnp.tanh(c)
        return jnp.stack([h, c])
    if kind == "gru":  # PyTorch's GRU: r multiplies (W_hn h), no recurrent bias
        H = h.shape[-1]
        xr, xz, xn = xw[:, :H], xw[:, H : 2 * H], xw[:, 2 * H :]
        hr, hz, hn = hw[:, :H], hw[:, H : 2 * H], hw[:, 2 * H :]
        r, z = sig(xr + hr), sig(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return ((1 - z) * n + z * h)[None]
    return jnp.tanh(xw + hw)[None]


def ref_forward(params, tokens_BxT, carry_LxSxBxH, kind, masks=None):
    """Time-step by time-step through the whole stack. `masks[l]` (BxTxH, already scaled) is dropout
    before layer l (l > 0) and, at l = 0, after the last layer. (A scan over time rather than a Python
    loop only to keep compile times short; `step` is checked against a Python loop.)"""
    L = carry_LxSxBxH.shape[0]
    masks_TxLxBxH = None if masks is None else jnp.stack(masks, 1).transpose(2, 1, 0, 3)

    def one_step(carry, inputs):
        token_B, mask_LxBxH = inputs
        x = params["embed_VxE"][token_B.astype(jnp.int32)]
        new = []
        for layer, lp in enumerate(params["layers"]):
            if layer > 0 and mask_LxBxH is not None:
                x = x * mask_LxBxH[layer]
            new.append(ref_cell(kind, lp, carry[layer], x))
            x = new[-1][0]
        if mask_LxBxH is not None:
            x = x * mask_LxBxH[0]
        return new, x @ params["out_HxV"] + params["out_b_V"]

    carry = [carry_LxSxBxH[layer] for layer in range(L)]
    carry, logits_TxBxV = jax.lax.scan(one_step, carry, (tokens_BxT.T, masks_TxLxBxH))
    return logits_TxBxV.transpose(1, 0, 2), jnp.stack(carry)


def ref_loss(params, tokens_BxT, targets_BxT, carry, kind, masks=None):
    logits, carry = ref_forward(params, tokens_BxT, carry, kind, masks)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, targets_BxT.astype(jnp.int32)[..., None], axis=-1)
    return nll.mean(), carry


REF_FORWARD = jax.jit(ref_forward, static_argnums=3)
REF_LOSS_GRAD = jax.jit(jax.value_and_grad(ref_loss, argnums=(0, 3), has_aux=True), static_argnums=4)


# --- shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_with_and_without_jit(kind):
    cfg, params, tokens, targets, carry = setup(kind)
    L, S, H, G = cfg.num_layers, STATES[kind], cfg.rnn_size, GATES[kind] * cfg.rnn_size
    zero = model.init_carry(cfg, B)
    assert stacked(zero).shape == (L, S, B, H) and len(zero) == L
    assert all(c.dtype == jnp.float32 and c.shape == (B, H) for c in jax.tree.leaves(zero))
    assert params["layers"][0]["wx_IxG"].shape == (cfg.wordvec_size, G)
    assert params["layers"][1]["wh_HxG"].shape == (H, G)
    for forward, loss, step in [(model.forward, model.loss, model.step), (FORWARD, LOSS, STEP)]:
        logits, new_carry = forward(params, tokens, carry, cfg)
        assert logits.shape == (B, T, model.V) and logits.dtype == jnp.float32
        assert jax.tree.structure(new_carry) == jax.tree.structure(zero)
        assert stacked(new_carry).shape == (L, S, B, H) and stacked(new_carry).dtype == jnp.float32
        nats, new_carry2 = loss(params, tokens, targets, carry, cfg)
        assert nats.shape == () and nats.dtype == jnp.float32
        np.testing.assert_allclose(stacked(new_carry2), stacked(new_carry), rtol=1e-6, atol=1e-6)
        step_logits, step_carry = step(params, carry, tokens[:, 0], cfg)
        assert step_logits.shape == (B, model.V) and stacked(step_carry).shape == (L, S, B, H)
    x = jnp.ones((B, cfg.wordvec_size))
    layer_carry, h = cell_step(kind)(params["layers"][0], carry[0], x)
    assert h.shape == (B, H) and jax.tree.structure(layer_carry) == jax.tree.structure(carry[0])
    _, h_jit = jax.jit(cell_step(kind))(params["layers"][0], carry[0], x)
    np.testing.assert_allclose(h_jit, h, rtol=1e-6, atol=1e-6)


def test_init_follows_torch_rnn():
    cfg = ModelConfig(cell="lstm", rnn_size=16, num_layers=2, wordvec_size=4)
    params = jax.jit(model.init_params, static_argnums=1)(jax.random.key(1), cfg)
    H = cfg.rnn_size
    for layer, lp in enumerate(params["layers"]):
        b = np.asarray(lp["b_G"])
        np.testing.assert_array_equal(b[H : 2 * H], 1.0)  # forget gate
        np.testing.assert_array_equal(np.delete(b, np.s_[H : 2 * H]), 0.0)
        fan_in = cfg.wordvec_size if layer == 0 else H
        std = np.std(np.concatenate([np.ravel(lp["wx_IxG"]), np.ravel(lp["wh_HxG"])]))
        assert 0.8 < std * np.sqrt(fan_in + H) < 1.2
    np.testing.assert_allclose(model.BITS_PER_NAT, 1 / np.log(2))


# --- values against the reference -----------------------------------------------------------------------


def with_kernels(cfg: ModelConfig, kernels: str) -> ModelConfig:
    return dataclasses.replace(cfg, kernels=kernels)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_reference_and_step_loop(kind, kernels):
    cfg, params, tokens, targets, carry = setup(kind)
    cfg = with_kernels(cfg, kernels)
    lp, x = params["layers"][0], jnp.asarray(np.random.default_rng(5).standard_normal((B, cfg.wordvec_size)))
    layer_carry, _ = cell_step(kind)(lp, carry[0], x)
    np.testing.assert_allclose(stacked([layer_carry])[0], ref_cell(kind, lp, stacked(carry)[0], x), atol=1e-5)
    logits, new_carry = FORWARD(params, tokens, carry, cfg)
    ref_logits, ref_carry = REF_FORWARD(params, tokens, stacked(carry), kind)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stacked(new_carry), ref_carry, atol=1e-5, rtol=1e-5)
    step_carry, step_logits = carry, []
    for t in range(T):
        lg, step_carry = STEP(params, step_carry, tokens[:, t], cfg)
        step_logits.append(lg)
    np.testing.assert_allclose(logits, jnp.stack(step_logits, 1), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stacked(new_carry), stacked(step_carry), atol=1e-5, rtol=1e-5)
    (nats, _), _ = LOSS_GRAD(params, tokens, targets, carry, cfg)
    (ref_nats, _), _ = REF_LOSS_GRAD(params, tokens, targets, stacked(carry), kind)
    np.testing.assert_allclose(nats, ref_nats, rtol=1e-6)


def assert_trees_close(got, want, rel: float):
    """Each leaf to `rel` of that leaf's largest magnitude."""
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
        scale = float(jnp.abs(w).max()) + 1e-3
        np.testing.assert_allclose(g / scale, w / scale, atol=rel, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_reference_autodiff(kind, kernels):
    """float32: the model's gradients (hand-written with kernels "auto") against autodiff of the reference,
    for the params and the incoming carry."""
    cfg, params, tokens, targets, carry = setup(kind)
    (_, new_carry), (got_params, got_carry) = LOSS_GRAD(
        params, tokens, targets, carry, with_kernels(cfg, kernels)
    )
    (_, ref_carry), want = REF_LOSS_GRAD(params, tokens, targets, stacked(carry), kind)
    np.testing.assert_allclose(stacked(new_carry), ref_carry, atol=1e-5)
    assert_trees_close((got_params, stacked(got_carry)), want, 1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_cell_gradients_finite_differences(kind):
    cfg, params, _, _, carry = setup(kind)
    x = np.random.default_rng(5).standard_normal((B, cfg.wordvec_size))
    with jax.enable_x64(True):
        lp, carry64, x64 = to64((params["layers"][0], carry[0], jnp.asarray(x)))
        check_grads(jax.jit(cell_step(kind)), (lp, carry64, x64), order=1, modes=["rev", "fwd"])


@pytest.mark.parametrize(
    ("kind", "dropout", "kernels"),
    [("lstm", 0.0, "auto"), ("lstm", 0.3, "auto"), ("gru", 0.3, "auto"), ("lstm", 0.3, "xla")],
)
def test_loss_gradients_finite_differences(kind, dropout, kernels):
    """float64 through the whole stack (the hand-written derivatives included), with and without dropout,
    in reverse and forward mode."""
    cfg, params, tokens, targets, carry = setup(kind, dropout=dropout)
    key = jax.random.key(9) if dropout else None
    with jax.enable_x64(True):
        cfg64 = dataclasses.replace(cfg, dtype="float64", kernels=kernels)
        params64, carry64 = to64((params, carry))
        loss = jax.jit(lambda p, c: model.loss(p, tokens, targets, c, cfg64, key)[0])
        assert loss(params64, carry64).dtype == jnp.float64
        check_grads(loss, (params64, carry64), order=1, modes=["rev", "fwd"], atol=1e-6, rtol=1e-6)


# --- properties training relies on ----------------------------------------------------------------------


def test_carry_is_the_state_at_the_window_end():
    """Two windows with the carry passed on == one long window; a zero carry instead gives another loss."""
    cfg, params, _, _, _ = setup("lstm")
    t = np.arange(2 * T + 1)
    signal = (128 + 100 * np.sin(2 * np.pi * t / 9.0)).astype(np.uint8)  # a signal with memory
    tokens = jnp.asarray(np.tile(signal, (B, 1)))
    x1, y1, x2, y2 = tokens[:, :T], tokens[:, 1 : T + 1], tokens[:, T : 2 * T], tokens[:, T + 1 : 2 * T + 1]
    zero = model.init_carry(cfg, B)
    first, carry1 = LOSS(params, x1, y1, zero, cfg)
    carried, carry2 = LOSS(params, x2, y2, carry1, cfg)
    fresh, _ = LOSS(params, x2, y2, zero, cfg)
    whole, carry_whole = LOSS(params, tokens[:, :-1], tokens[:, 1:], zero, cfg)
    assert abs(float(carried) - float(fresh)) > 1e-3
    np.testing.assert_allclose(stacked(carry2), stacked(carry_whole), atol=1e-5)
    np.testing.assert_allclose(whole, (first + carried) / 2, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_runs_and_is_close_to_float32(kind):
    cfg, params, tokens, targets, carry = setup(kind)
    cfg16 = dataclasses.replace(cfg, dtype="bfloat16")
    logits32, carry32 = FORWARD(params, tokens, carry, cfg)
    logits16, carry16 = FORWARD(params, tokens, carry, cfg16)
    assert logits16.dtype == jnp.float32 and stacked(carry16).dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.1)
    np.testing.assert_allclose(stacked(carry16), stacked(carry32), atol=0.05)
    step_logits, _ = STEP(params, carry, tokens[:, 0], cfg16)
    np.testing.assert_allclose(step_logits, logits32[:, 0], atol=0.1)
    if kind == "lstm":  # the fast layer's bf16 path
        (nats, _), grads = LOSS_GRAD(params, tokens, targets, carry, cfg16)
        (nats32, _), grads32 = LOSS_GRAD(params, tokens, targets, carry, cfg)
        assert abs(float(nats) - float(nats32)) < 0.05
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
        assert_trees_close(grads, grads32, 0.05)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_dropout(kind):
    cfg, params, tokens, targets, carry = setup(kind, dropout=0.5)
    plain1, _ = FORWARD(params, tokens, carry, cfg)
    plain2, _ = FORWARD(params, tokens, carry, cfg)
    np.testing.assert_array_equal(plain1, plain2)
    drop_a, _ = FORWARD(params, tokens, carry, cfg, jax.random.key(1))
    drop_a2, _ = FORWARD(params, tokens, carry, cfg, jax.random.key(1))
    drop_b, _ = FORWARD(params, tokens, carry, cfg, jax.random.key(2))
    np.testing.assert_array_equal(drop_a, drop_a2)
    assert not np.allclose(drop_a, plain1) and not np.allclose(drop_a, drop_b)
    no_rate, _ = FORWARD(params, tokens, carry, dataclasses.replace(cfg, dropout=0.0), jax.random.key(1))
    np.testing.assert_array_equal(no_rate, plain1)


def test_dropout_gradients_match_reference_with_same_masks():
    """The model's own masks (`dropout_masks`) fed to the reference: same loss, same gradients."""
    cfg, params, tokens, targets, carry = setup("lstm", dropout=0.4)
    key = jax.random.key(3)
    masks = jax.jit(model.dropout_masks, static_argnums=(1, 2))(key, cfg, (T, B, cfg.rnn_size))
    for m in masks:
        values = np.unique(np.asarray(m))
        assert np.all(np.isclose(values, 0.0) | np.isclose(values, 1 / (1 - cfg.dropout))), values
    masks = [m.transpose(1, 0, 2) for m in masks]  # TxBxH -> BxTxH for the reference
    (nats, _), got = LOSS_GRAD(params, tokens, targets, carry, cfg, key)
    ref = jax.jit(
        jax.value_and_grad(lambda p, c: ref_loss(p, tokens, targets, c, "lstm", masks), (0, 1), True)
    )
    (ref_nats, _), want = ref(params, stacked(carry))
    np.testing.assert_allclose(nats, ref_nats, rtol=1e-5)
    assert_trees_close((got[0], stacked(got[1])), want, 1e-5)


def test_no_recompilation_on_second_call():
    cfg, params, tokens, targets, carry = setup("lstm")
    grad_fn = jax.jit(jax.value_and_grad(model.loss, has_aux=True), static_argnums=4)
    (_, carry1), _ = grad_fn(params, tokens, targets, carry, cfg)
    (_, carry2), _ = grad_fn(params, tokens + 1, targets, carry1, cfg)
    (_, _), _ = grad_fn(params, tokens, targets, carry2, ModelConfig(**dataclasses.asdict(cfg)))
    assert grad_fn._cache_size() == 1
    step_fn = jax.jit(lambda p, c, t: model.step(p, c, t, cfg))  # a fresh function: its own cache
    _, c = step_fn(params, carry, tokens[:, 0])
    step_fn(params, c, tokens[:, 1])
    assert step_fn._cache_size() == 1
