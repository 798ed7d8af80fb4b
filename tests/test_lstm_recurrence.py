"""The LSTM time-loop kernels against fast.py's XLA scans, the choice between them, and that they are built
where they can run. (test_model.py checks the model, kernels included on such a CPU, against an independent
reference and finite differences; here the two implementations are checked against each other.)"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cpu_flags

from jaxvoice import cells, fast, lstm_recurrence, model
from jaxvoice.config import ModelConfig

needs_kernel = pytest.mark.skipif(not lstm_recurrence.available(), reason="the kernels are not built here")


def test_kernels_are_built_where_they_can_run():
    """setup.py builds them as an optional extension: a failed build must not pass unnoticed."""
    if "avx512f" in cpu_flags():
        assert lstm_recurrence.available()


def random_layer(T, B, H, seed):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return (
        normal(T * B, 4 * H),
        normal(4 * H),
        normal(H, 4 * H) / np.sqrt(H),
        normal(B, H),
        normal(B, H),
        normal(T, B, H),
    )


# H 5 and 40: units that do not fill the last 16-lane panel; B 1, 7, 13: every remainder of the row tiles
# (6 forward, 12 backward); T 1: the backward's first step is also its last.
SHAPES = [(1, 1, 5), (4, 7, 40), (9, 13, 16), (3, 32, 64)]


@needs_kernel
@pytest.mark.parametrize("indexed", [False, True], ids=["projections", "table"])
@pytest.mark.parametrize("T,B,H", SHAPES)
def test_forward_and_backward_equal_the_scans(T, B, H, indexed):
    """Both input forms: the projections of every step in order (deeper layers), and rows of a table picked
    by an index (the first layer's embed @ W_x by the tokens), each plus the bias."""
    table, bias, wh, h0, c0, dhs = random_layer(T, B, H, seed=T * 100 + B)
    index, rows = None, 0
    if indexed:  # 11 rows for up to 9 * 32 steps and rows: most rows are read (and summed into) many times
        rng = np.random.default_rng(T)
        table = jnp.asarray(rng.standard_normal((11, 4 * H)), jnp.float32)
        index, rows = jnp.asarray(rng.integers(0, 11, (T, B)), jnp.int32), 11
    cotangents = (dhs, dhs[0] * 0.5, dhs[-1] * -0.3)
    results = {}
    for native in (False, True):
        (hT, cT), kept = fast._forward(table, index, bias, wh, h0, c0, True, native)
        grads = fast._backward((wh, h0, c0, *kept[1:]), cotangents, index, rows, native)
        results[native] = (hT, cT, *kept, *grads)
    names = ["h_T", "c_T", "hs", "h_prevs_T", "cs", "gates", "dpre", "dh0", "dc0", "db", "dtable"]
    if not indexed:  # no table: no table gradient
        assert results[True][-1] is None and results[False][-1] is None
        names, results = names[:-1], {native: got[:-1] for native, got in results.items()}
    for name, got, want in zip(names, results[True], results[False], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6, err_msg=name)


@needs_kernel
def test_an_index_outside_the_table_is_an_error():
    table, bias, wh, h0, c0, _ = random_layer(2, 3, 16, seed=0)
    index = jnp.asarray([[0, 1, 2], [3, 4, 6]], jnp.int32)
    with pytest.raises(Exception, match="index out of range"):
        jax.block_until_ready(lstm_recurrence.forward(table, index, bias, wh, h0, c0))
    jax.block_until_ready(lstm_recurrence.forward(table, index.at[1, 2].set(5), bias, wh, h0, c0))


@needs_kernel
def test_model_gradients_equal_with_and_without_the_kernels(monkeypatch):
    """Through the whole stack (embedding lookup layer, a deeper layer with its own projection, dropout):
    the loss, the new carry and every gradient agree between the fast layer with the kernels and with its
    XLA scans."""
    cfg = ModelConfig(cell="lstm", rnn_size=24, num_layers=3, wordvec_size=7, dropout=0.2)
    params = model.init_params(jax.random.key(1), cfg)
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, 256, (5, 12)), jnp.uint8)
    targets = jnp.asarray(rng.integers(0, 256, (5, 12)), jnp.uint8)
    carry = jax.tree.map(lambda c: jnp.asarray(0.3 * rng.standard_normal(c.shape), jnp.float32),
                         model.init_carry(cfg, 5))  # fmt: skip
    results = {}
    for native in (False, True):
        lstm = cells.get_cell("lstm")
        cell = lstm._replace(
            fast=lambda p, c, t, i, native=native: fast.lstm_layer(p, c, t, i, native=native)
        )
        monkeypatch.setitem(cells._CELLS, "lstm_native_" + str(native), cell)  # removed after the test
        cfg_n = dataclasses.replace(cfg, cell="lstm_native_" + str(native))
        grad = jax.jit(jax.value_and_grad(model.loss, argnums=(0, 3), has_aux=True), static_argnums=4)
        results[native] = grad(params, tokens, targets, carry, cfg_n, jax.random.key(3))
    for got, want in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False]), strict=True):
        scale = float(jnp.abs(want).max()) + 1e-3
        np.testing.assert_allclose(got / scale, want / scale, atol=1e-5)


def lowered_text(cfg: ModelConfig) -> str:
    params = model.init_params(jax.random.key(0), cfg)
    tokens = jnp.zeros((4, 6), jnp.uint8)
    grad = jax.value_and_grad(model.loss, has_aux=True)
    return (
        jax.jit(grad, static_argnums=4).lower(params, tokens, tokens, model.init_carry(cfg, 4), cfg).as_text()
    )


@needs_kernel
def test_used_for_float32_only():
    assert "JaxvoiceLstmForward" in lowered_text(ModelConfig(cell="lstm", rnn_size=16, num_layers=2))
    assert "JaxvoiceLstmBackward" in lowered_text(ModelConfig(cell="lstm", rnn_size=16, num_layers=2))
    assert "JaxvoiceLstm" not in lowered_text(ModelConfig(cell="lstm", rnn_size=16, dtype="bfloat16"))


@needs_kernel
def test_not_used_on_several_devices():
    """XLA cannot split a custom call over devices: with 4 (fake) CPU devices the model scans in XLA."""
    code = textwrap.dedent(
        f"""
        import jax
        assert jax.device_count() == 4
        sys_path = {str(Path(__file__).parent)!r}
        import sys; sys.path.insert(0, sys_path)
        from test_lstm_recurrence import lowered_text
        from jaxvoice.config import ModelConfig
        print("JaxvoiceLstm" in lowered_text(ModelConfig(cell="lstm", rnn_size=16, num_layers=2)))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
