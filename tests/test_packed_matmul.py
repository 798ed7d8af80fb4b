"""The sampler's CPU kernel against XLA's dot, and that it is built where it can run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cpu_flags

from jaxvoice import packed_matmul

needs_kernel = pytest.mark.skipif(not packed_matmul.available(), reason="the kernel is not built here")


def test_kernel_is_built_where_it_can_run():
    """setup.py builds it as an optional extension: a failed build must not pass unnoticed."""
    flags = cpu_flags()
    if "avx2" in flags and "fma" in flags:
        assert packed_matmul.available()
        assert packed_matmul.many_rows() == ("avx512f" in flags)


@needs_kernel
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "M,n_in,n_out",
    [
        (1, 680, 2720),
        (1, 9, 70),
        (2, 33, 16),
        (3, 100, 37),
        (5, 7, 256),
        (9, 40, 33),
        (16, 130, 48),
        (17, 64, 200),
    ],
)
def test_matmul_equals_dot(M, n_in, n_out, dtype):
    rng = np.random.default_rng(M * 1000 + n_out)
    x_MxI = jnp.asarray(rng.standard_normal((M, n_in)), jnp.float32)
    w_IxO = jnp.asarray(rng.standard_normal((n_in, n_out)), jnp.float32)
    packed = packed_matmul.pack(w_IxO, dtype)
    assert packed.shape == (-(-n_out // 16), n_in, 16) and packed.dtype == jnp.dtype(dtype)
    y_MxO = jax.jit(packed_matmul.matmul, static_argnums=2)(x_MxI, packed, n_out)
    # The kernel widens bfloat16 weights exactly and keeps x in float32: the reference is a float32 dot
    # of the rounded weights.
    ref_MxO = jnp.dot(x_MxI, w_IxO.astype(dtype).astype(jnp.float32), precision="highest")
    assert y_MxO.shape == (M, n_out) and y_MxO.dtype == jnp.float32
    np.testing.assert_allclose(y_MxO, ref_MxO, rtol=1e-5, atol=1e-4 * np.sqrt(n_in))


@needs_kernel
def test_matmul_inside_a_scan():
    """In a scan (as the sampler runs it) the result equals the one-off call's."""
    rng = np.random.default_rng(0)
    w = packed_matmul.pack(jnp.asarray(rng.standard_normal((32, 32)) * 0.2, jnp.float32))
    h0 = jnp.asarray(rng.standard_normal((1, 32)), jnp.float32)

    def body(h, _):
        h = jnp.tanh(packed_matmul.matmul(h, w, 32))
        return h, h[0, 0]

    _, firsts = jax.jit(lambda h: jax.lax.scan(body, h, None, length=50))(h0)
    h, expected = h0, []
    for _ in range(50):
        h = jnp.tanh(packed_matmul.matmul(h, w, 32))
        expected.append(h[0, 0])
    np.testing.assert_allclose(firsts, np.array(expected), rtol=1e-6)
