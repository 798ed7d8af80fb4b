"""jaxvoice.fast (model.kernels = "auto") against the cells' equations ("xla"): values, reverse mode, forward
mode, and the transforms a researcher applies to the loss (grad, jvp, vmap), on every path: the LSTM with
the CPU kernels where they run, the LSTM's XLA scans, GRU and RNN with the projection trick, bfloat16."""

from __future__ import annotations

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvoice import fast, lstm_recurrence, model
from jaxvoice.config import ModelConfig

B, T = 4, 6


def setup(cell: str, **kw):
    cfg = ModelConfig(cell=cell, rnn_size=16, num_layers=2, wordvec_size=8, **kw)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init_params(jax.random.key(0), cfg))
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)
    carry = jax.tree.map(
        lambda c: jnp.asarray(0.4 * rng.standard_normal(c.shape), c.dtype), model.init_carry(cfg, B)
    )
    tokens = jnp.asarray(rng.integers(0, 256, (B, T + 1)), jnp.uint8)
    return cfg, params, carry, tokens[:, :-1], tokens[:, 1:]


def loss_of(cfg, tokens, targets):
    return lambda params, carry: model.loss(params, tokens, targets, carry, cfg)[0]


def close(got, want, rel=2e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = float(jnp.abs(w).max()) + 1e-3
        np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(w) / scale, atol=rel)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_grad_jvp_and_vmap_of_the_loss_with_kernels_on_and_off(cell):
    cfg, params, carry, tokens, targets = setup(cell)
    results = {}
    for kernels in ("auto", "xla"):
        f = loss_of(dataclasses.replace(cfg, kernels=kernels), tokens, targets)
        grads = jax.jit(jax.grad(f, argnums=(0, 1)))(params, carry)
        tangents = jax.tree.map(
            lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape), (params, carry)
        )
        value, jvp = jax.jit(lambda p, c, t, f=f: jax.jvp(f, (p, c), t))(params, carry, tangents)
        batched = jax.tree.map(lambda x: jnp.stack([x, 0.9 * x, 1.1 * x]), params)
        vmapped = jax.jit(jax.vmap(f, in_axes=(0, None)))(batched, carry)
        results[kernels] = (value, grads, jvp, vmapped)
        # forward mode agrees with reverse mode: <grad, t> == jvp(t)
        inner = sum(
            jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(tangents), strict=True)
        )
        np.testing.assert_allclose(float(inner), float(jvp), rtol=2e-4, atol=1e-6)
        f_jit = jax.jit(f)  # one compilation for the three, where eager dispatch cost seconds
        one_by_one = [f_jit(jax.tree.map(lambda x, s=s: s * x, params), carry) for s in (1.0, 0.9, 1.1)]
        np.testing.assert_allclose(vmapped, one_by_one, rtol=1e-5)
    close(results["auto"], results["xla"])


@pytest.mark.skipif(not lstm_recurrence.available(), reason="the kernels are not built for this machine")
def test_the_kernels_are_the_fast_path_here_and_agree_in_both_modes():
    """With the kernels (where they run) and with fast.py's XLA scans: same gradients and jvp."""
    cfg, params, carry, tokens, targets = setup("lstm")
    table, index = params["embed_VxE"], tokens.T.astype(jnp.int32)
    lp = params["layers"][0]
    out = {}
    for native in (True, False):

        def layer(lp, carry, native=native):
            hs, (h, c) = fast.lstm_layer(lp, carry, table, index, native=native)
            return jnp.sum(jnp.sin(hs)) + jnp.sum(h * c)

        grads = jax.jit(jax.grad(layer, argnums=(0, 1)))(lp, carry[0])
        _, jvp = jax.jit(lambda lp, c: jax.jvp(layer, (lp, c), jax.tree.map(jnp.ones_like, (lp, c))))(
            lp, carry[0]
        )
        out[native] = (grads, jvp)
    close(out[True], out[False], 1e-5)


def test_bfloat16_compute_with_and_without_kernels_setting():
    cfg, params, carry, tokens, targets = setup("lstm", dtype="bfloat16")
    got = jax.jit(jax.grad(loss_of(cfg, tokens, targets)))(params, carry)
    want = jax.jit(jax.grad(loss_of(dataclasses.replace(cfg, kernels="xla"), tokens, targets)))(params, carry)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got))
    close(got, want, 0.03)


@pytest.mark.parametrize("copy_x", [True, False])
def test_projection_matches_a_plain_matmul_in_both_modes(copy_x):
    rng = np.random.default_rng(1)
    x, w = (
        jnp.asarray(rng.standard_normal((3, 4, 5)), jnp.float32),
        jnp.asarray(rng.standard_normal((5, 7)), jnp.float32),
    )
    plain = lambda x, w: jnp.sum(jnp.tanh(x @ w))
    trick = lambda x, w: jnp.sum(jnp.tanh(fast.projection(x, w, copy_x)))
    close(jax.grad(trick, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w))
    t = (jnp.ones_like(x), jnp.ones_like(w))
    close(jax.jvp(trick, (x, w), t), jax.jvp(plain, (x, w), t))
    close(jax.grad(lambda w: trick(x, w))(w), jax.grad(lambda w: plain(x, w))(w))  # x not differentiated


def _dot_operand_dtypes(jaxpr) -> list:
    """The operand dtypes of every dot_general in a jaxpr, its inner jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for param in eqn.params.values():
            for inner in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(inner, jax.extend.core.ClosedJaxpr):
                    inner = inner.jaxpr
                if isinstance(inner, jax.extend.core.Jaxpr):
                    found += _dot_operand_dtypes(inner)
    return found


def test_a_bfloat16_dense_multiplies_its_reverse_pass_in_bfloat16():
    """model.dense in bfloat16: the reverse pass's dx = dy W^T takes bfloat16 operands as the forward's
    product does (XLA's own derivative multiplies in float32, at a fraction of the rate), dW float32 ones on
    a CPU (where XLA widens that product anyway); the gradients are the equations' to bfloat16's
    precision."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((64, 48)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((48, 32)) / 7, jnp.float32)
    grads = {}
    for kernels in ("auto", "xla"):
        cfg = ModelConfig(dtype="bfloat16", kernels=kernels)
        f = lambda x, w, cfg=cfg: jnp.sum(jnp.tanh(model.dense(cfg, x, w, copy_x=False)))
        grad = jax.grad(f, (0, 1))
        dots = _dot_operand_dtypes(jax.make_jaxpr(grad)(x, w).jaxpr)
        if kernels == "auto":
            dw = "float32" if jax.default_backend() == "cpu" else "bfloat16"
            assert sorted(dots) == sorted([("bfloat16", "bfloat16")] * 2 + [(dw, dw)])
        else:  # what the change is for: XLA's derivative takes the float32 cotangent as it is
            assert any("float32" in operands for operands in dots)
        grads[kernels] = jax.jit(grad)(x, w)
    assert all(g.dtype == jnp.float32 for g in grads["auto"])
    close(grads["auto"], grads["xla"], 0.03)
