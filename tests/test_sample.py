"""Sampling: the sampler against fixed distributions, the fast step against model.step, chunking, priming,
files written while sampling, and the `jaxvoice sample` command on a real trained run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile as sf
from conftest import assert_user_error, jaxvoice_cmd, run_jaxvoice, sawtooth, write_audio
from scipy import stats

from jaxvoice import cells, model, packed_matmul, sample, stored
from jaxvoice.config import ModelConfig
from jaxvoice.errors import UserError

SMALL = ModelConfig(cell="lstm", rnn_size=16, num_layers=2, wordvec_size=8)
ALPHA = 1e-3  # chi-square tests: the false-alarm rate the threshold is computed for


def constant_params(logp_V: np.ndarray, cfg: ModelConfig = SMALL) -> dict:
    """Params whose logits are `logp_V` at every step, whatever the state: out_HxV = 0, out_b_V = logp."""
    params = model.init_params(jax.random.key(0), cfg)
    params["out_HxV"] = jnp.zeros_like(params["out_HxV"])
    params["out_b_V"] = jnp.asarray(logp_V, jnp.float32)
    return params


def spread_distribution(seed: int) -> np.ndarray:
    """A random distribution over 256 symbols with every p >= 1/512 (so chi-square cells are well filled)."""
    rng = np.random.default_rng(seed)
    p = 0.5 * rng.dirichlet(np.ones(256)) + 0.5 / 256
    return p / p.sum()


def draw(params, cfg=SMALL, *, length=4000, streams=8, seed=0, **kw) -> np.ndarray:
    chunks = sample.generate(params, cfg, jax.random.key(seed), length=length, num_streams=streams, **kw)
    return np.concatenate(list(chunks), axis=1)


def assert_matches(tokens: np.ndarray, p_V: np.ndarray) -> None:
    """Chi-square goodness of fit over the symbols of positive probability; none outside them."""
    counts = np.bincount(tokens.reshape(-1), minlength=256)
    support = p_V > 0
    assert counts[~support].sum() == 0, np.nonzero(counts * ~support)
    expected = tokens.size * p_V[support] / p_V[support].sum()
    assert expected.min() >= 5, "too few samples for a chi-square test"
    statistic = ((counts[support] - expected) ** 2 / expected).sum()
    threshold = stats.chi2.ppf(1 - ALPHA, df=int(support.sum()) - 1)
    assert statistic < threshold, (statistic, threshold)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


# --- the sampler on fixed distributions ------------------------------------------------------------------


def test_temperature_one_matches_distribution():
    p = spread_distribution(1)
    assert_matches(draw(constant_params(np.log(p))), p)


def test_a_wrong_distribution_fails_the_check():
    """The chi-square check has power: the same draws against a slightly different distribution fail."""
    p = spread_distribution(1)
    tokens = draw(constant_params(np.log(p)))
    shifted = np.roll(p, 1)
    with pytest.raises(AssertionError):
        assert_matches(tokens, shifted)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_scales_logits(temperature):
    logp = np.log(spread_distribution(2))
    tokens = draw(constant_params(logp), temperature=temperature)
    assert_matches(tokens, softmax(logp / temperature))


def test_greedy_is_argmax_and_low_temperature_concentrates():
    p = np.full(256, 0.5 / 254)
    p[7], p[100] = 0.3, 0.2
    params = constant_params(np.log(p))
    assert (draw(params, greedy=True, length=300) == 7).all()
    cold = draw(params, temperature=0.05)
    warm = draw(params, temperature=1.0)
    # At T = 0.05 symbol 100 has weight (2/3)^20 ~ 3e-4 of symbol 7's; at T = 1 symbol 7 is 30%.
    assert (cold == 7).mean() > 0.995
    assert 0.27 < (warm == 7).mean() < 0.33


def test_top_k_keeps_the_k_most_probable():
    p = spread_distribution(3)
    top = np.argsort(p)[::-1][:5]
    kept = np.zeros(256)
    kept[top] = p[top]
    assert_matches(draw(constant_params(np.log(p)), top_k=5), kept)


def test_top_p_keeps_the_nucleus():
    p = spread_distribution(4)
    order = np.argsort(p)[::-1]
    cum = np.cumsum(p[order])
    for top_p in (0.05, 0.3):
        n = int(np.searchsorted(cum, top_p)) + 1  # smallest set with mass >= p
        assert abs(cum[n - 1] - top_p) > 1e-4 and (n == 1 or abs(cum[n - 2] - top_p) > 1e-4)
        nucleus = np.zeros(256)
        nucleus[order[:n]] = p[order[:n]]
        assert_matches(draw(constant_params(np.log(p)), top_p=top_p), nucleus)


def test_top_k_and_top_p_together():
    p = spread_distribution(5)
    order = np.argsort(p)[::-1]
    top8 = p[order[:8]] / p[order[:8]].sum()
    n = int(np.searchsorted(np.cumsum(top8), 0.5)) + 1
    expected = np.zeros(256)
    expected[order[:n]] = top8[:n]
    assert n < 8
    assert_matches(draw(constant_params(np.log(p)), top_k=8, top_p=0.5), expected)


# --- the step, chunks, seeds ------------------------------------------------------------------------------


LAYOUTS = [
    pytest.param(False, False, id="in_out"),
    pytest.param(True, False, id="out_in"),
    pytest.param(False, True, id="packed", marks=pytest.mark.skipif(
        not packed_matmul.available(), reason="the kernel is not built here")),
]  # fmt: skip


@pytest.mark.parametrize("transposed,packed", LAYOUTS)
def test_fast_step_matches_model_step(transposed, packed):
    cfg = ModelConfig(cell="lstm", rnn_size=24, num_layers=3, wordvec_size=8)
    params = model.init_params(jax.random.key(3), cfg)
    params["layers"][1]["b_G"] = jax.random.normal(jax.random.key(4), params["layers"][1]["b_G"].shape)
    layout = sample.Layout(transposed=transposed, packed=packed)
    sp = sample.sampling_params(params, cfg, layout)
    tokens = jax.random.randint(jax.random.key(5), (20, 3), 0, 256)
    ref = fast = model.init_carry(cfg, 3)
    ref_step = jax.jit(model.step, static_argnums=3)
    fast_step = jax.jit(sample.fast_step)
    for token_B in tokens:
        logits_ref, ref = ref_step(params, ref, token_B, cfg)
        logits_fast, fast = fast_step(sp, fast, token_B)
        np.testing.assert_allclose(logits_fast, logits_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(ref)).max() > 0.1  # the state moved: the comparison is not of zeros


@pytest.mark.parametrize("transposed,packed", LAYOUTS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_cells_step_on_stored_weights_as_on_their_own(cell, transposed, packed):
    """The built-in cells multiply only through `cells.dot` (`dot_only`), so their step, unchanged, runs on
    weights the sampler stores its way and gives what it gives on the plain ones."""
    cfg = ModelConfig(cell=cell, rnn_size=24, num_layers=2, wordvec_size=8)
    assert cells.get_cell(cell).dot_only
    layers = model.init_params(jax.random.key(3), cfg)["layers"]
    store = partial(sample.stored_weight, layout=sample.Layout(transposed=transposed, packed=packed))
    stored_layers = [cells.store_layer(cell, lp, store) for lp in layers]
    assert isinstance(stored_layers[1]["wh_HxG"], stored.Stored)
    step = jax.jit(lambda layers, carry, x: model.step_layers(cfg, layers, carry, x))
    carry = ref = model.init_carry(cfg, 3)
    for x_BxE in jax.random.normal(jax.random.key(5), (6, 3, 8)):
        h_ref, ref = step(layers, ref, x_BxE)
        h, carry = step(stored_layers, carry, x_BxE)
        np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(h_ref)).max() > 0.1


@pytest.mark.parametrize("transposed,packed", LAYOUTS)
def test_products_of_many_rows_stay_in_columns_in_every_layout(transposed, packed):
    """A product a step applies to several rows per stream (a frame's samples) is a matrix product: it is
    stored [in, out] for XLA's dot whatever the layout says for one-row products, in the layout's dtype
    (its inputs rounded to it too, as every stored product's), and multiplies as the plain matrix does."""
    w_IxO = jax.random.normal(jax.random.key(1), (40, 24))
    x_MxI = jax.random.normal(jax.random.key(2), (16, 40))
    for weights in ("float32", "bfloat16"):
        layout = sample.Layout(transposed=transposed, weights=weights, packed=packed)
        one_row, many_rows = sample.stored_weight(w_IxO, layout), sample.stored_weight(w_IxO, layout, rows=16)
        assert many_rows.form == "columns" and many_rows.dtype == jnp.dtype(weights)
        assert one_row.form == ("packed" if packed else "rows" if transposed else "columns")
        expected = x_MxI.astype(weights).astype(jnp.float32) @ w_IxO.astype(weights).astype(jnp.float32)
        np.testing.assert_allclose(stored.product(x_MxI, many_rows), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("transposed,packed", LAYOUTS)
def test_bfloat16_weights_step_close_to_float32(transposed, packed):
    """Rounded weights: a slightly different model, within bf16's rounding of the float32 one."""
    cfg = ModelConfig(cell="lstm", rnn_size=64, num_layers=2, wordvec_size=16)
    params = model.init_params(jax.random.key(3), cfg)
    layout = sample.Layout(transposed=transposed, weights="bfloat16", packed=packed)
    sp = sample.sampling_params(params, cfg, layout)
    assert sp["layers"][1]["w_2H"].dtype == jnp.bfloat16 and sp["out"].dtype == jnp.bfloat16
    fast_step = jax.jit(sample.fast_step)
    ref = fast = model.init_carry(cfg, 2)
    worst = 0.0
    for token_B in jax.random.randint(jax.random.key(5), (30, 2), 0, 256):
        logits_ref, ref = model.step(params, ref, token_B, cfg)
        logits_fast, fast = fast_step(sp, fast, token_B)
        worst = max(worst, float(np.abs(np.asarray(logits_fast) - np.asarray(logits_ref)).max()))
    assert 0 < worst < 0.02, worst  # rounded (not equal), and close
    np.testing.assert_allclose(fast, ref, atol=0.02)


@pytest.mark.parametrize("streams", [2, 8])  # the packed kernel's stream counts (where built) and XLA's dot
def test_bfloat16_weights_sample_deterministically(streams):
    # 64 units: with 16, rounding the weights moves the logits too little to change 300 draws.
    cfg = ModelConfig(cell="lstm", rnn_size=64, num_layers=2, wordvec_size=16)
    params = model.init_params(jax.random.key(8), cfg)
    a = draw(params, cfg, length=300, streams=streams, weights="bfloat16")
    np.testing.assert_array_equal(a, draw(params, cfg, length=300, streams=streams, weights="bfloat16"))
    assert a.shape == (streams, 300) and (a != draw(params, cfg, length=300, streams=streams)).any()


def test_layout_for_uses_the_kernel_only_where_it_can():
    kernel = packed_matmul.available()
    assert sample.layout_for(1).packed == kernel
    assert sample.layout_for(1, "bfloat16") == sample.Layout(
        weights="bfloat16", packed=kernel, transposed=not kernel
    )
    # many streams: the kernel's AVX-512 tiles beat XLA's GEMM; its AVX2 ones do not
    assert sample.layout_for(16).packed == packed_matmul.many_rows()
    assert sample.layout_for(3).packed == packed_matmul.many_rows()
    assert not sample.layout_for(1, platform="gpu").packed
    assert not sample.layout_for(1, num_devices=4).packed  # XLA cannot split a custom call over devices


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_generate_equals_a_reference_loop(cell):
    """model.step one symbol at a time, drawing by inverse CDF in float64 from the same uniforms."""
    cfg = ModelConfig(cell=cell, rnn_size=16, num_layers=2, wordvec_size=8)
    params = model.init_params(jax.random.key(6), cfg)
    key, steps, streams, temperature = jax.random.key(7), 60, 3, 0.8
    got = draw(params, cfg, length=steps, streams=streams, seed=7, temperature=temperature, chunk=16)
    u_TxB = np.asarray(sample.uniforms(key, 0, steps, streams), np.float64)
    carry, token = model.init_carry(cfg, streams), jnp.full((streams,), sample.SILENCE, jnp.int32)
    step = jax.jit(model.step, static_argnums=3)
    expected = []
    for t in range(steps):
        logits, carry = step(params, carry, token, cfg)
        logits = np.asarray(logits, np.float64) / temperature
        picks = []
        for b in range(streams):
            cdf = np.cumsum(softmax(logits[b]))
            picks.append(min(int(np.searchsorted(cdf, u_TxB[t, b] * cdf[-1], side="right")), 255))
        token = jnp.asarray(picks, jnp.int32)
        expected.append(picks)
    np.testing.assert_array_equal(got, np.asarray(expected).T)


def test_chunking_does_not_change_the_output():
    params = model.init_params(jax.random.key(8), SMALL)
    prime = np.arange(50, dtype=np.uint8)
    one_shot = draw(params, length=1000, streams=2, chunk=1000, prime=prime)
    for chunk in (77,):
        np.testing.assert_array_equal(
            draw(params, length=1000, streams=2, chunk=chunk, prime=prime), one_shot
        )


def test_chunks_have_the_promised_shapes():
    params = model.init_params(jax.random.key(8), SMALL)
    chunks = list(sample.generate(params, SMALL, jax.random.key(0), length=250, num_streams=3, chunk=100))
    assert [c.shape for c in chunks] == [(3, 100), (3, 100), (3, 50)]
    assert all(c.dtype == np.uint8 for c in chunks)


def test_seeds_and_streams_differ_and_repeat():
    params = model.init_params(jax.random.key(9), SMALL)
    a = draw(params, length=300, streams=4, seed=1)
    np.testing.assert_array_equal(a, draw(params, length=300, streams=4, seed=1))
    assert (a != draw(params, length=300, streams=4, seed=2)).mean() > 0.5
    for i in range(4):
        for j in range(i):
            assert (a[i] != a[j]).mean() > 0.5


def test_one_compile_for_any_length():
    params = model.init_params(jax.random.key(10), SMALL)
    draw(params, length=100, streams=2, chunk=64)
    compiled = sample._run_chunk._cache_size()
    for length in (1, 63, 65, 200, 333):
        assert draw(params, length=length, streams=2, chunk=64).shape == (2, length)
    assert sample._run_chunk._cache_size() == compiled


def test_priming_in_windows_equals_one_forward(monkeypatch):
    params = model.init_params(jax.random.key(11), SMALL)
    prime = np.random.default_rng(0).integers(0, 256, 40).astype(np.uint8)
    _, expected = model.forward(params, jnp.asarray(prime[None, :-1]), model.init_carry(SMALL, 1), SMALL)
    monkeypatch.setattr(sample, "PRIME_WINDOW", 7)
    np.testing.assert_allclose(sample.primed_carry(params, SMALL, prime), expected, rtol=1e-5, atol=1e-6)


def test_bad_settings_are_user_errors():
    params = model.init_params(jax.random.key(0), SMALL)
    bad = [
        {"length": 0}, {"length": -3}, {"temperature": 0.0}, {"temperature": -1.0},
        {"temperature": float("nan")}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 300}, {"top_k": -1},
        {"num_streams": 0}, {"chunk": 0}, {"prime": np.zeros(0, np.uint8)}, {"weights": "float16"},
    ]  # fmt: skip
    for kw in bad:
        settings = {"length": 10, **kw}
        with pytest.raises(UserError):
            next(iter(sample.generate(params, SMALL, jax.random.key(0), **settings)))


# --- a trained model continues its period when primed ----------------------------------------------------


PERIOD = 16


def held_sawtooth(n: int, phase: int = 0) -> np.ndarray:
    """8 levels, each held for 2 samples (period 16): after a level, what comes next depends on the state."""
    i = np.arange(phase, phase + n)
    return ((i % PERIOD) // 2 * 32).astype(np.uint8)


@pytest.fixture(scope="module")
def periodic_model():
    cfg = ModelConfig(cell="lstm", rnn_size=32, num_layers=1, wordvec_size=16)
    params = model.init_params(jax.random.key(0), cfg)
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    batch, window = 16, 48

    @jax.jit
    def update(params, opt_state, key):
        starts = jax.random.randint(key, (batch,), 0, PERIOD)
        seq = ((starts[:, None] + jnp.arange(window + 1)) % PERIOD) // 2 * 32
        grad_fn = jax.value_and_grad(model.loss, has_aux=True)
        (loss, _), grads = grad_fn(params, seq[:, :-1], seq[:, 1:], model.init_carry(cfg, batch), cfg)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    for step in range(400):
        params, opt_state, loss = update(params, opt_state, jax.random.key(step))
    return params, cfg, float(loss)


def test_primed_model_continues_the_period(periodic_model):
    params, cfg, loss = periodic_model
    assert loss < 0.05, loss  # the model learnt the signal (otherwise the test below says nothing)
    for phase in range(4):  # ends on the first and on the second sample of a level
        prime = held_sawtooth(40, phase)
        truth = held_sawtooth(120, phase + 40)
        greedy = draw(params, cfg, length=120, streams=1, prime=prime, greedy=True)[0]
        np.testing.assert_array_equal(greedy, truth)
        sampled = draw(params, cfg, length=120, streams=4, prime=prime, seed=phase)
        # With a loss < 0.05 nats each step follows the rule with probability > 0.95 (a slip shifts the
        # phase, and the model goes on from there: so count steps that follow the rule, not matches).
        x = np.concatenate([np.broadcast_to(prime, (4, 40)), sampled], axis=1).astype(int)
        rule = np.where(x[:, :-2] == x[:, 1:-1], (x[:, 1:-1] + 32) % 256, x[:, 1:-1])
        assert (x[:, 40:] == rule[:, 38:]).mean() > 0.9


# --- writing files ------------------------------------------------------------------------------------------


def test_output_paths():
    assert sample.output_paths("x/out.wav", 1) == [Path("x/out.wav")]
    assert [p.name for p in sample.output_paths("x/out.wav", 3)] == ["out_0.wav", "out_1.wav", "out_2.wav"]


@pytest.mark.parametrize("codec_name", ["linear", "mulaw", "bytes"])
def test_symbol_writer_is_complete_after_every_write(tmp_path, codec_name):
    from jaxvoice import codec

    symbols = np.random.default_rng(0).integers(0, 256, 3000).astype(np.uint8)
    path = tmp_path / f"x{sample.extension(codec_name)}"
    with sample.SymbolWriter(path, codec_name, 8000) as writer:
        for end in (1000, 3000):
            writer.write(symbols[end - (1000 if end == 1000 else 2000) : end])
            if codec_name == "bytes":
                assert path.read_bytes() == symbols[:end].tobytes()
                continue
            info = sf.info(str(path))
            assert (info.frames, info.samplerate) == (end, 8000)
            if codec_name == "linear":
                assert info.subtype == "PCM_U8"
                assert (np.frombuffer(path.read_bytes()[-end:], np.uint8) == symbols[:end]).all()
            else:
                assert info.subtype == "PCM_16"
                audio, _ = sf.read(str(path), dtype="float32")
                np.testing.assert_allclose(audio, codec.decode("mulaw", symbols[:end]), atol=1 / 32768)


@pytest.mark.parametrize(
    ("name", "codec_name", "fmt", "subtype"),
    [
        ("x.flac", "linear", "FLAC", "PCM_S8"),
        ("x.aiff", "linear", "AIFF", "PCM_U8"),
        ("x.caf", "mulaw", "CAF", "PCM_16"),
        ("x.rf64", "mulaw", "RF64", "PCM_16"),
    ],
)
def test_symbol_writer_writes_the_format_the_extension_names(tmp_path, name, codec_name, fmt, subtype):
    """Lossless formats hold the symbols exactly (linear: 8-bit PCM; mulaw: decoded as a WAV would be), and
    the file appears, complete, only when the writer closes."""
    from jaxvoice import codec

    symbols = np.random.default_rng(1).integers(0, 256, 3000).astype(np.uint8)
    path = tmp_path / name
    with sample.SymbolWriter(path, codec_name, 8000) as writer:
        writer.write(symbols[:1000])
        writer.write(symbols[1000:])
        assert not path.exists()  # being written under a temporary name
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.frames, info.samplerate) == (fmt, subtype, 3000, 8000)
    audio, _ = sf.read(str(path), dtype="float32")
    expected = codec.linear_decode(symbols) if codec_name == "linear" else codec.decode("mulaw", symbols)
    np.testing.assert_allclose(audio, expected, atol=1 / 32768 if codec_name == "mulaw" else 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_symbol_writer_lossy_and_raw_bytes(tmp_path):
    symbols = np.random.default_rng(2).integers(100, 156, 4000).astype(np.uint8)
    with sample.SymbolWriter(tmp_path / "x.ogg", "linear", 8000) as writer:
        writer.write(symbols)
    assert sf.info(str(tmp_path / "x.ogg")).subtype == "VORBIS"
    with sample.SymbolWriter(tmp_path / "x.mp3", "bytes", None) as writer:  # a bytes corpus: raw, any name
        writer.write(symbols)
    assert (tmp_path / "x.mp3").read_bytes() == symbols.tobytes()


def test_a_failed_or_interrupted_writer_leaves_a_complete_file_or_nothing(tmp_path):
    symbols = np.full(500, 130, np.uint8)
    with pytest.raises(RuntimeError), sample.SymbolWriter(tmp_path / "failed.flac", "linear", 8000) as writer:
        writer.write(symbols)
        raise RuntimeError("the model failed")
    with (
        pytest.raises(KeyboardInterrupt),
        sample.SymbolWriter(tmp_path / "kept.flac", "linear", 8000) as writer,
    ):
        writer.write(symbols)
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.flac"]
    assert sf.info(str(tmp_path / "kept.flac")).frames == 500


def test_extensions_that_cannot_be_written_are_refused_before_sampling(tmp_path):
    from jaxvoice import sample_files

    with pytest.raises(UserError, match=r"'\.xyz'.*\.wav, \.flac"):
        sample_files.output_format(tmp_path / "x.xyz", "linear", 8000)
    if ".opus" in sample_files.writable_extensions():  # Opus takes 8, 12, 16, 24 and 48 kHz only
        assert sample_files.output_format(tmp_path / "x.opus", "linear", 8000).name == "OGG"
        with pytest.raises(UserError, match="11025 Hz"):
            sample_files.output_format(tmp_path / "x.opus", "linear", 11025)
    assert not list(tmp_path.iterdir())


# --- the command ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A real run: a sawtooth WAV -> `jaxvoice prepare` -> `jaxvoice train` (tiny, small sizes, 2 checkpoints)."""
    root = tmp_path_factory.mktemp("sample_run")
    wav = write_audio(root / "saw.wav", sawtooth(250.0, 8000, 4.0), 8000)
    run_jaxvoice("prepare", wav, "-o", root / "corpus", "--rate", 8000, "--quiet", check=True)
    run_jaxvoice(
        "train", "--config", "tiny", "--data", root / "corpus", "--out", root / "run", "--steps", 40,
        "--set", "model.rnn_size=32", "--set", "train.batch_size=8", "--set", "train.seq_length=32",
        "--set", "train.checkpoint_every=20", "--set", "train.eval_every=20", "--quiet", check=True,
    )  # fmt: skip
    return root / "run"


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy, so each test sees an empty samples/ folder."""
    return shutil.copytree(trained_run, tmp_path / "run")


def test_cli_writes_one_file_per_stream_with_the_prime(run_copy, tmp_path):
    prime = write_audio(tmp_path / "prime.wav", sawtooth(250.0, 8000, 0.1), 8000, subtype="PCM_U8")
    prime_bytes = prime.read_bytes()[-800:]  # the data chunk: 800 unsigned 8-bit samples
    out = tmp_path / "out.wav"
    proc = run_jaxvoice(
        "sample", "--run", run_copy, "--length", 3000, "--num", 3, "-o", out, "--chunk", 512,
        "--prime", prime, "--include-prime",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = []
    for i in range(3):
        info = sf.info(str(tmp_path / f"out_{i}.wav"))
        assert (info.frames, info.samplerate, info.subtype) == (3800, 8000, "PCM_U8")
        data.append((tmp_path / f"out_{i}.wav").read_bytes()[-3800:])
        assert data[-1][:800] == prime_bytes
    assert not out.exists()
    assert len({d[800:] for d in data}) == 3
    assert proc.stdout.count("wrote ") == 3
    # 6 chunks: the summary gives the rate after the first one, whose time includes compiling
    summary = proc.stdout.splitlines()[-1]
    assert "the first chunk took" in summary and " samples/s)" in summary, summary


def test_cli_every_checkpoint_then_one_again(run_copy):
    from jaxvoice import checkpoint

    steps = checkpoint.available_steps(run_copy)
    assert len(steps) >= 2
    args = ["sample", "--run", run_copy, "--seconds", 0.5, "--seed", 3]
    proc = run_jaxvoice(*args, "--checkpoint", "all")
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in (run_copy / "samples").iterdir())
    assert written == sorted(f"step_{s}.wav" for s in steps)
    assert all(sf.info(str(run_copy / "samples" / name)).frames == 4000 for name in written)
    path = run_copy / "samples" / f"step_{steps[-1]}.wav"
    first = path.read_bytes()
    again = run_jaxvoice(*args, "--checkpoint", "latest", "--force", "-q")
    assert again.returncode == 0 and again.stdout == "", again.stderr
    assert path.read_bytes() == first  # --force replaced it, with the same bytes for the same seed


def test_cli_bfloat16_weights_write_a_sample(trained_run, tmp_path):
    out = tmp_path / "bf16.wav"
    proc = run_jaxvoice("sample", "--run", trained_run, "--length", 700, "--weights", "bfloat16", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert sf.info(str(out)).frames == 700


def test_cli_refuses_to_overwrite(run_copy, tmp_path):
    out = tmp_path / "keep_1.wav"
    out.write_bytes(b"precious")
    proc = run_jaxvoice("sample", "--run", run_copy, "--length", 100, "--num", 2, "-o", tmp_path / "keep.wav")
    assert_user_error(proc, "exists", "--force")
    assert out.read_bytes() == b"precious"
    assert not (tmp_path / "keep_0.wav").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--length", 0], ["length"]),
        (["--length", -5], ["length"]),
        (["--seconds", 0], ["seconds"]),
        (["--temperature", 0], ["temperature"]),
        (["--temperature", -1], ["temperature"]),
        (["--top-p", 0], ["top-p"]),
        (["--top-p", 1.5], ["top-p"]),
        (["--top-k", 0], ["top-k"]),
        (["--top-k", 257], ["top-k"]),
        (["--num", 0], ["streams"]),
        (["--checkpoint", 99999], ["99999"]),
        (["--checkpoint", "newest"], ["best", "latest"]),
        (["--prime", "no_such.wav"], ["no_such.wav"]),
        (["--length", 10, "--seconds", 1], ["--seconds"]),
        (["--weights", "float16"], ["--weights", "bfloat16"]),
    ],
)
def test_cli_user_errors(trained_run, tmp_path, args, words):
    proc = run_jaxvoice("sample", "--run", trained_run, "-o", tmp_path / "x.wav", *args)
    assert_user_error(proc, *words)
    assert not (tmp_path / "x.wav").exists()


def test_cli_missing_run_and_unreadable_prime(tmp_path, trained_run):
    proc = run_jaxvoice("sample", "--run", tmp_path / "nope", "-o", tmp_path / "x.wav")
    assert_user_error(proc, "nope")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    proc = run_jaxvoice("sample", "--run", trained_run, "--prime", bad, "-o", tmp_path / "x.wav")
    assert_user_error(proc, "bad.wav")


def _start_long_sample(run_dir, out):
    return subprocess.Popen(
        [*jaxvoice_cmd(), "sample", "--run", str(run_dir), "--length", "100000000", "--chunk", "256",
         "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_chunks(proc, out, nbytes, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.stat().st_size > nbytes:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no samples were written in time")


@pytest.mark.parametrize("how", ["kill", pytest.param("interrupt", marks=pytest.mark.slow)])
def test_an_interrupted_sample_is_a_playable_wav(trained_run, tmp_path, how):
    out = tmp_path / "long.wav"
    proc = _start_long_sample(trained_run, out)
    _wait_for_chunks(proc, out, 44 + 3 * 256)
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    if how == "kill":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, stderr
        assert "interrupted: kept" in stderr and str(out) in stderr, stderr
        assert "Traceback" not in stderr
    audio, rate = sf.read(str(out), dtype="int16")
    assert rate == 8000 and len(audio) >= 3 * 256
    # the header counts every chunk written; a SIGKILL between a chunk's append and the header's patch (two
    # writes) leaves that one chunk of 256 8-bit samples after the counted data
    unheaded = os.path.getsize(out) - 44 - (len(audio) & 1) - len(audio)
    assert unheaded == 0 if how == "interrupt" else unheaded in (0, 256), unheaded
