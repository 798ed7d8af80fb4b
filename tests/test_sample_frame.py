"""The tiered sample level's frame kernel against the XLA step it replaces, and that it is built where it can
run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cpu_flags

from jaxvoice import (
    cells,
    model,
    packed_matmul,
    sample,
    sample_frame,
    sample_history,
    sample_level,
    stored,
    tiered_generation,
    tiered_maps,
)
from jaxvoice.config import ModelConfig

needs_kernel = pytest.mark.skipif(not sample_frame.available(), reason="the kernel is not built here")


def test_kernel_is_built_where_it_can_run():
    """setup.py builds it as an optional extension: a failed build must not pass unnoticed."""
    flags = cpu_flags()
    if "avx2" in flags and "fma" in flags:
        assert sample_frame.available()


def tiered(**kw) -> ModelConfig:
    base = dict(kind="tiered", cell="lstm", rnn_size=24, num_layers=1, wordvec_size=6, frame_size=8,
                sample_size=40, sample_layers=2, upsampling="shared", sample_input="both")  # fmt: skip
    return ModelConfig(**{**base, **kw})


def random_params(cfg, seed=0):
    """The model's init with every parameter moved a little (so that biases are not 0): logits of the size
    a trained model's have."""
    rng = np.random.default_rng(seed)
    init = model.init_params(jax.random.key(seed), cfg)
    return jax.tree.map(lambda p: p + jnp.asarray(0.05 * rng.standard_normal(p.shape), p.dtype), init)


def generation_params(cfg, params, weights="float32"):
    layout = sample.Layout(packed=True, weights=weights)
    sp = jax.jit(sample._prepare, static_argnums=(1, 2))(params, cfg, layout)
    assert "frame_kernel" in sp
    return sp, sample._compute_cfg(cfg, layout)


@needs_kernel
@pytest.mark.parametrize("weights", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("streams", "frame_size", "sample_size", "sample_layers", "temperature"),
    [(1, 8, 40, 2, 1.0), (2, 4, 10, 1, 0.7), (3, 16, 256, 2, 1.3), (5, 8, 48, 3, 1.0), (16, 2, 16, 2, 0.0),
     (1, 16, 256, 3, 0.0), (2, 8, 136, 1, 1.0)],
)  # fmt: skip
def test_a_frame_equals_the_xla_steps(streams, frame_size, sample_size, sample_layers, temperature, weights):
    """Teacher-forced on the kernel's own draws, its logits equal the XLA step's (1e-5), and each draw is the
    one `sample.choose` makes from those logits (temperature 0: the greedy sampler's)."""
    check_frame(streams, frame_size, sample_size, sample_layers, temperature, weights)


@needs_kernel
@pytest.mark.parametrize("cond_shift", [-100.0, 3.0])
def test_one_stream_frames_whose_relus_leave_no_input_or_nearly_all(cond_shift):
    """At one stream the products read only the weight rows of the inputs a ReLU left: with none left (the
    conditioning far below 0: the logits are the output bias) or nearly all of the first layer's, still the
    XLA step's."""
    check_frame(1, 8, 40, 2, 1.0, "float32", cond_shift)


@needs_kernel
@pytest.mark.parametrize(
    ("streams", "sample_layers", "weights"), [(1, 2, "float32"), (1, 1, "bfloat16"), (3, 2, "float32")]
)
def test_a_frame_without_the_row_kept_weights_equals_the_xla_steps(streams, sample_layers, weights):
    """Where the CPU lacks AVX-512 the row-kept copies are not built and one stream reads the packed panels
    (on an AVX-512 CPU this test is how that path runs here): still the XLA step's floats and draws."""
    check_frame(streams, 8, 40, sample_layers, 1.0, weights, rows=False)


@needs_kernel
def test_the_row_kept_weights_are_built_only_where_read():
    cfg = tiered()
    sp, _ = generation_params(cfg, random_params(cfg))
    kept = sp["frame_kernel"]["out_rows"].size > 0
    assert kept == sample_frame.reads_rows() == ("avx512f" in cpu_flags())
    assert (sp["frame_kernel"]["hidden_rows"].size > 0) == kept


@needs_kernel
@pytest.mark.parametrize(
    ("streams", "sample_layers", "weights", "rows"),
    [(1, 3, "float32", None), (3, 2, "float32", None), (1, 2, "bfloat16", None), (1, 3, "float32", False),
     (2, 1, "float32", None)],
)  # fmt: skip
def test_a_frame_whose_every_layer_is_conditioned_equals_the_xla_steps(streams, sample_layers, weights, rows):
    """model.sample_conditioning = "every": each hidden layer adds its own conditioning vector."""
    check_frame(streams, 8, 40, sample_layers, 1.0, weights, rows=rows, conditioning="every")


def check_frame(
    streams, frame_size, sample_size, sample_layers, temperature, weights, cond_shift=0.0, rows=None,
    conditioning="first",
):  # fmt: skip
    cfg = tiered(frame_size=frame_size, sample_size=sample_size, sample_layers=sample_layers,
                 sample_conditioning=conditioning)  # fmt: skip
    sp, compute_cfg = generation_params(cfg, random_params(cfg), weights)
    if rows is not None:
        sp["frame_kernel"] = sample_frame.kernel_params(sp, rows)
    rng = np.random.default_rng(streams)
    F, D = frame_size, sample_size * tiered_maps.conditioned_layers(cfg)
    window_BxF = jnp.asarray(rng.integers(0, 256, (streams, F)), jnp.int32)
    cond_BxFxD = jnp.asarray(rng.standard_normal((streams, F, D)) + cond_shift, jnp.float32)
    u_FxB = jnp.asarray(rng.random((F, streams)), jnp.float32)
    tokens_BxF, logits_BxFxV, _, _ = jax.jit(sample_frame.frame)(
        sp, window_BxF, cond_BxFxD, u_FxB, temperature
    )
    assert tokens_BxF.shape == (streams, F) and logits_BxFxV.shape == (streams, F, 256)

    inputs_BxT = jnp.concatenate([window_BxF, tokens_BxF], axis=1)
    step = jax.jit(sample_level.step_logits, static_argnums=4)
    sampler = sample.Sampler(greedy=temperature == 0.0)
    for p in range(F):
        want_BxV, _ = step(sp, inputs_BxT[:, p : p + F], cond_BxFxD[:, p], (), compute_cfg,
                           sp["tables_FxVxD"])  # fmt: skip
        np.testing.assert_allclose(logits_BxFxV[:, p], want_BxV, rtol=1e-5, atol=1e-5)
        chosen_B = sample.choose(logits_BxFxV[:, p], u_FxB[p], temperature or 1.0, sampler)
        np.testing.assert_array_equal(tokens_BxF[:, p], chosen_B, err_msg=f"position {p}")


def _generate(params, cfg, streams, **kw):
    chunks = sample.generate(params, cfg, jax.random.key(3), length=700, num_streams=streams, chunk=256, **kw)
    return np.concatenate(list(chunks), axis=1)


@needs_kernel
@pytest.mark.parametrize(
    ("tiers", "sample_layers", "streams", "settings"),
    [(2, 2, 1, {}), (2, 1, 1, {}), (2, 3, 2, {"temperature": 0.8}), (3, 2, 3, {}), (2, 2, 1, {"greedy": True}),
     (2, 2, 4, {"top_k": 20}), (3, 2, 1, {"top_p": 0.9, "temperature": 1.2}), (2, 4, 1, {"every": True}),
     (3, 3, 2, {"every": True})],
)  # fmt: skip
def test_generation_with_the_kernel_equals_the_xla_step(tiers, sample_layers, streams, settings):
    """`jaxvoice sample` of a tiered MLP model draws the same symbols with `model.kernels = "auto"` (the
    kernel, or with top-k/p the XLA step) as with "xla" (the equations), over chunks and frames. The
    preset's widths, so that the kernel's two threads meet (and the pool thread joins mid-frame) for real;
    "every": each of the MLP's layers conditioned (model.sample_conditioning)."""
    settings = dict(settings)
    conditioning = "every" if settings.pop("every", False) else "first"
    cfg = tiered(tiers=tiers, top_frame_size=32, rnn_size=64, frame_size=16, sample_size=256,
                 sample_layers=sample_layers, sample_conditioning=conditioning,
                 **(dict(sample_history=48, sample_history_rank=8) if conditioning == "every" else {}))  # fmt: skip
    params = random_params(cfg)
    with_kernel = _generate(params, cfg, streams, **settings)
    equations = _generate(params, dataclasses.replace(cfg, kernels="xla"), streams, **settings)
    assert with_kernel.shape == (streams, 700)
    np.testing.assert_array_equal(with_kernel, equations)
    assert len(np.unique(with_kernel)) > 1


@needs_kernel
@pytest.mark.parametrize(("cell", "layers", "streams"), [("gru", 2, 1), ("rnn", 1, 3), ("lstm", 2, 2)])
def test_generation_with_the_frame_products_ahead_equals_the_xla_step(cell, layers, streams):
    """The kernel computes every frame layer's recurrent product for the next frame while it draws (widths
    that are not whole panels of 16: the GRU's 3 x 24): the same symbols as the equations."""
    cfg = tiered(cell=cell, num_layers=layers, rnn_size=24, frame_size=16, sample_size=64)
    params = random_params(cfg)
    sp = sample._prepare(params, cfg, sample.Layout(packed=True))
    assert tiered_generation._recurrent_packed(sp, cfg) and len(sp["frame_layers"]) == layers
    with_kernel = _generate(params, cfg, streams)
    equations = _generate(params, dataclasses.replace(cfg, kernels="xla"), streams)
    np.testing.assert_array_equal(with_kernel, equations)
    assert len(np.unique(with_kernel)) > 1


@needs_kernel
@pytest.mark.parametrize(("streams", "weights"), [(1, "float32"), (3, "float32"), (2, "bfloat16")])
def test_the_products_ahead_are_packed_matmuls(streams, weights):
    """What the kernel computes ahead is `packed_matmul`'s product of the same weights, to the bit (so that
    the frame step given it is the step computing it), and the frame it draws meanwhile is unchanged."""
    cfg = tiered()
    sp, _ = generation_params(cfg, random_params(cfg), weights)
    rng = np.random.default_rng(streams)
    F, D, H, G = 8, 40, 24, 72
    w_AxIxO = [jnp.asarray(rng.standard_normal((H, G)), jnp.float32) for _ in range(2)]
    packed = [packed_matmul.pack(w, weights) for w in w_AxIxO]
    x_AxBxH = jnp.asarray(rng.standard_normal((2, streams, H)), jnp.float32)
    window_BxF = jnp.asarray(rng.integers(0, 256, (streams, F)), jnp.int32)
    cond_BxFxD = jnp.asarray(rng.standard_normal((streams, F, D)), jnp.float32)
    u_FxB = jnp.asarray(rng.random((F, streams)), jnp.float32)
    frame = jax.jit(sample_frame.frame)
    tokens_BxF, logits_BxFxV, ahead_AxBxP, _ = frame(
        sp, window_BxF, cond_BxFxD, u_FxB, 1.0, (x_AxBxH, packed)
    )
    assert ahead_AxBxP.shape == (2, streams, 80)  # whole panels
    for a in range(2):
        want_BxG = jax.jit(packed_matmul.matmul, static_argnums=2)(x_AxBxH[a], packed[a], G)
        np.testing.assert_array_equal(ahead_AxBxP[a, :, :G], want_BxG)
    for wrong in ([packed[0]], [packed[0][:, :-1], packed[1]]):  # one layer short; a layer of other inputs
        with pytest.raises(Exception, match="packed weights"):
            jax.block_until_ready(frame(sp, window_BxF, cond_BxFxD, u_FxB, 1.0, (x_AxBxH, wrong)))
    alone = frame(sp, window_BxF, cond_BxFxD, u_FxB, 1.0)
    assert alone[2] is None
    np.testing.assert_array_equal(alone[0], tokens_BxF)
    np.testing.assert_array_equal(alone[1], logits_BxFxV)


def test_a_product_given_ahead_is_for_its_rows_only():
    given = stored.Given(jnp.ones((2, 8)))
    np.testing.assert_array_equal(cells.dot(jnp.zeros((2, 4)), given), jnp.ones((2, 8)))
    with pytest.raises(ValueError, match="rows"):
        cells.dot(jnp.zeros((3, 4)), given)


@needs_kernel
def test_the_sampler_runs_the_kernel_where_it_can():
    """The compiled chunk calls the kernel for the plain draw on packed weights, and not for top-k, nor with
    `model.kernels = "xla"` (there the sampler has no kernel operands at all)."""
    cfg = tiered()
    params = random_params(cfg)
    layout = sample.Layout(packed=True)
    sp = sample._prepare(params, cfg, layout)
    carry, token = model.init_carry(cfg, 1), jnp.zeros((1,), jnp.int32)

    def lowered(sampler, sp=sp, cfg=cfg):
        static = dict(cfg=cfg, chunk=16, sampler=sampler, layout=layout)
        return sample._run_chunk.lower(sp, carry, token, jax.random.key(0), 0, 1.0, 1.0, **static).as_text()

    assert "JaxvoiceSampleFrame" in lowered(sample.Sampler())
    assert "JaxvoiceSampleFrame" in lowered(sample.Sampler(greedy=True))
    assert "JaxvoiceSampleFrame" not in lowered(sample.Sampler(top_k=5))
    xla_cfg = dataclasses.replace(cfg, kernels="xla")
    xla_sp = sample._prepare(params, xla_cfg, layout)
    assert "frame_kernel" not in xla_sp
    assert "JaxvoiceSampleFrame" not in lowered(sample.Sampler(), xla_sp, xla_cfg)


@needs_kernel
@pytest.mark.parametrize(
    ("upsampling", "conditioning", "streams", "rank"),
    [("shared", "every", 1, 8), ("per_position", "every", 2, 8), ("shared", "first", 3, 0),
     ("per_position", "first", 1, 0)],
)  # fmt: skip
def test_the_kernel_adds_each_positions_bias_as_the_upsampling_does(upsampling, conditioning, streams, rank):
    """Given the frame's upsampled vectors and each position's bias (`tiered_maps.upsampled`: one vector for
    the frame with the shared map, one per position without), the kernel draws the frame it draws from their
    sum (`tiered_maps.upsample`, what XLA wrote before): the same symbols, logits and older sums, to the bit,
    with the history it adds itself and without."""
    history_settings = dict(sample_history=48, sample_history_rank=rank) if rank else {}
    cfg = tiered(frame_size=16, sample_size=64, sample_layers=3, upsampling=upsampling,
                 sample_conditioning=conditioning, **history_settings)  # fmt: skip
    sp, _ = generation_params(cfg, random_params(cfg))
    assert tiered_generation._history_in_kernel(sp) == bool(rank)
    F, N = cfg.frame_size, tiered_maps.window_length(cfg)
    rng = np.random.default_rng(streams)
    window_BxN = jnp.asarray(rng.integers(0, 256, (streams, N)), jnp.int32)
    carry = dict(model.init_carry(cfg, streams), window=window_BxN)
    u_FxB = jnp.asarray(rng.random((F, streams)), jnp.float32)
    o_BxH, _ = tiered_generation._frame_tier(sp, carry, cfg)
    up_BxGxD, bias_FxD = tiered_maps.upsampled(cfg, o_BxH, sp[tiered_maps.up_weight(cfg)], sp["up_b_FD"], F)
    assert up_BxGxD.shape[1] == (1 if upsampling == "shared" else F)
    history = None
    if rank:
        gains_BxQ = sample_history.frame_gains(sp, o_BxH, cfg)
        last_BxW = tiered_generation._last_values(window_BxN, cfg)
        history = (sample_history.older_sums(sp, window_BxN, cfg), last_BxW, gains_BxQ)
    frame = jax.jit(sample_frame.frame)
    got = frame(sp, window_BxN[:, -F:], up_BxGxD, u_FxB, 1.0, None, history, bias_FxD)
    want = frame(sp, window_BxN[:, -F:], up_BxGxD + bias_FxD, u_FxB, 1.0, None, history)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    if rank:
        np.testing.assert_array_equal(got[3], want[3])
    assert len(np.unique(got[0])) > 1


@needs_kernel
@pytest.mark.parametrize(("upsampling", "rank"), [("shared", 8), ("per_position", 0)])
def test_a_scan_on_the_kernel_leaves_the_carry_the_equations_leave(upsampling, rank):
    """After a scan of frames on the kernel, whose frames take the upsampled vector and the bias apart, the
    carry (the frame tier's state, the window, the position, and the last frame's conditioning, which that
    scan sums once at its end) is the one the XLA step's scan leaves, and so are the symbols; where the kernel
    adds the sample history itself, the first layer's conditioning in the carry is without it (a step at the
    next frame's start makes its own)."""
    history_settings = dict(sample_history=48, sample_history_rank=rank) if rank else {}
    cfg = tiered(frame_size=16, sample_size=64, sample_layers=3, upsampling=upsampling,
                 sample_conditioning="every", **history_settings)  # fmt: skip
    params = random_params(cfg)
    B, F = 2, cfg.frame_size
    rng = np.random.default_rng(len(upsampling) + rank)
    carry = dict(
        model.init_carry(cfg, B),
        window=jnp.asarray(rng.integers(0, 256, (B, tiered_maps.window_length(cfg))), jnp.int32),
    )
    token_B = jnp.asarray(rng.integers(0, 256, B), jnp.int32)
    u_CxB = jnp.asarray(rng.random((4 * F, B)), jnp.float32)
    pick = sample.Choice(1.0, sample.Sampler())
    scan = jax.jit(tiered_generation.sample_scan, static_argnums=(4, 5))
    results = {}
    for kernels in ("auto", "xla"):
        kcfg = dataclasses.replace(cfg, kernels=kernels)
        sp = sample._prepare(params, kcfg, sample.Layout(packed=True))
        assert ("frame_kernel" in sp) == (kernels == "auto")
        results[kernels] = scan(sp, carry, token_B, u_CxB, pick, kcfg)
    (carry_k, token_k, tokens_k), (carry_x, token_x, tokens_x) = results["auto"], results["xla"]
    np.testing.assert_array_equal(tokens_k, tokens_x)
    np.testing.assert_array_equal(token_k, token_x)
    assert len(np.unique(tokens_k)) > 1
    assert jax.tree.structure(carry_k) == jax.tree.structure(carry_x)
    D = cfg.sample_size
    first = D if rank else 0  # with the history in the kernel: the layers above the first
    assert not np.allclose(carry_k["cond"], carry["cond"])  # the last frame's, not the one it started with
    cond_k, cond_x = carry_k.pop("cond")[..., first:], carry_x.pop("cond")[..., first:]
    np.testing.assert_allclose(cond_k, cond_x, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda k, x: np.testing.assert_allclose(k, x, rtol=1e-5, atol=1e-5), carry_k, carry_x)


@needs_kernel
@pytest.mark.parametrize(("streams", "rank"), [(1, 32), (3, 8), (2, 16)])
def test_the_kernel_adds_the_sample_history_as_the_frame_step_does(streams, rank):
    """With gains (`model.sample_history_rank`) the kernel adds the sample history to the first layer's
    conditioning itself, from the sums over the frame's older values: its frame is the one the XLA frame step's
    conditioning gives (logits to 1e-5, the same symbols), and the older sums it computes for the next frame
    while it draws are `sample_history.older_sums` of the window after the frame."""
    cfg = tiered(rnn_size=32, frame_size=16, sample_size=64, sample_layers=2, sample_conditioning="every",
                 sample_history=48, sample_history_rank=rank)  # fmt: skip
    params = random_params(cfg)
    sp, _ = generation_params(cfg, params)
    assert tiered_generation._history_in_kernel(sp)
    # bfloat16 weights: XLA adds it (its bfloat16 products round x too, the kernel's do not)
    assert not tiered_generation._history_in_kernel(generation_params(cfg, params, "bfloat16")[0])
    F = cfg.frame_size
    N = tiered_maps.window_length(cfg)
    rng = np.random.default_rng(rank)
    window_BxN = jnp.asarray(rng.integers(0, 256, (streams, N)), jnp.int32)
    carry = dict(model.init_carry(cfg, streams), window=window_BxN)
    u_FxB = jnp.asarray(rng.random((F, streams)), jnp.float32)
    frame = jax.jit(sample_frame.frame)
    o_BxH, _ = tiered_generation._frame_tier(sp, carry, cfg)
    cond_BxFxD = tiered_maps.conditioning(sp, o_BxH, cfg)
    gains_BxQ = sample_history.frame_gains(sp, o_BxH, cfg)
    history = (
        sample_history.older_sums(sp, window_BxN, cfg),
        tiered_generation._last_values(window_BxN, cfg),
        gains_BxQ,
    )
    tokens_BxF, logits_BxFxV, _, older_BxFxQ = frame(
        sp, window_BxN[:, -F:], cond_BxFxD, u_FxB, 1.0, None, history
    )
    want_cond = tiered_generation._frame_step(sp, carry, cfg)["cond"]
    want_tokens, want_logits, _, none = frame(sp, window_BxN[:, -F:], want_cond, u_FxB, 1.0)
    assert none is None and older_BxFxQ.shape == (streams, F, rank)
    np.testing.assert_allclose(logits_BxFxV, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(tokens_BxF, want_tokens)
    after_BxN = jnp.concatenate([window_BxN, tokens_BxF], axis=1)[:, -N:]
    np.testing.assert_allclose(
        older_BxFxQ, sample_history.older_sums(sp, after_BxN, cfg), rtol=1e-5, atol=1e-5
    )
