"""The frame-level tier (model.kind = "tiered", 2 and 3 tiers): shapes, generation equal to the training
forward, gradients against finite differences, the carry across windows, learning, exact resume, several
devices."""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_jaxvoice, sawtooth, write_audio
from jax.test_util import check_grads

from jaxvoice import config, model, sample, sample_history, train
from jaxvoice.config import ModelConfig
from jaxvoice.streams import Streams

F, B = 4, 3
LEVELS = ["mlp", "rnn"]
# (sample level, tiers, upsampling, sample input, sample history): each sample level with 2 tiers and with a
# top tier over 2 frames above, each with each way a sample enters it, and with a history longer than the
# period (so the carry keeps more than a period) that is not a multiple of the frame; (W, Q): a history of W
# through Q channels the frame tier scales (model.sample_history_rank)
SHAPES = [("mlp", 2, "per_position", "embedded", 0), ("rnn", 2, "per_position", "embedded", 0),
          ("mlp", 2, "shared", "both", 7), ("mlp", 3, "per_position", "scaled", 0),
          ("rnn", 3, "shared", "both", 11), ("rnn", 2, "per_position", "scaled", 0),
          ("mlp", 2, "shared", "both", (7, 3)), ("mlp", 3, "shared", "embedded", (6, 2))]  # fmt: skip
SHAPE_NAMES = ("level", "tiers", "upsampling", "sample_input", "history")


def tiny(level="mlp", tiers=2, upsampling="per_position", sample_input="embedded", history=0, **kw):
    history, rank = history if isinstance(history, tuple) else (history, 0)
    base = dict(sample_history_rank=rank, kind="tiered", cell="gru", rnn_size=12, num_layers=2, wordvec_size=5, frame_size=F,
                sample_size=10, sample_level=level, sample_layers=2, tiers=tiers, top_frame_size=2 * F,
                upsampling=upsampling, sample_input=sample_input, sample_history=history)  # fmt: skip
    return ModelConfig(**{**base, **kw})


def period(cfg) -> int:
    return model.window_multiple(cfg)


def random_params(cfg, seed=0):
    shapes = jax.eval_shape(lambda: model.init_params(jax.random.key(0), cfg))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


def tokens(T, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (B, T)), jnp.uint8)


@pytest.mark.parametrize(SHAPE_NAMES, SHAPES)
@pytest.mark.parametrize("frame_input", ["scaled", "embedded"])
def test_shapes_and_the_carry(level, tiers, upsampling, sample_input, history, frame_input):
    cfg = tiny(level, tiers, upsampling, sample_input, history, frame_input=frame_input)
    P, N = period(cfg), max(period(cfg), F + cfg.sample_history)  # the carry keeps the history's reach
    assert period(cfg) == (F if tiers == 2 else 2 * F)
    params, x = random_params(cfg), tokens(3 * P)
    carry = model.init_carry(cfg, B)
    logits, new = jax.jit(model.forward, static_argnums=3)(params, x, carry, cfg)
    assert logits.shape == (B, 3 * P, 256) and logits.dtype == jnp.float32
    assert jax.tree.structure(new) == jax.tree.structure(carry)
    np.testing.assert_array_equal(new["window"], np.asarray(x[:, -N:], np.int32))
    assert all(leaf.shape[0] == B for leaf in jax.tree.leaves(new))  # batch first: shardable by stream


@pytest.mark.parametrize(SHAPE_NAMES, SHAPES)
def test_generation_steps_equal_the_training_forward(level, tiers, upsampling, sample_input, history):
    """Teacher-forced: `step` one sample at a time gives the forward's logits (to 1e-5), across two windows
    with the carry passed on; and the frame-by-frame sampler chooses what a loop of `step` chooses."""
    check_generation(tiny(level, tiers, upsampling, sample_input, history))


# model.sample_conditioning = "every": each MLP layer conditioned (shared and per-position maps, 2 and 3 tiers,
# with a history, and with 3 layers so that the layers above the first are two)
EVERY = [dict(upsampling="shared", sample_input="both", history=(7, 3)),
         dict(tiers=3, upsampling="per_position", sample_input="scaled", sample_layers=3),
         dict(upsampling="shared", history=5, sample_layers=3)]  # fmt: skip


@pytest.mark.parametrize("kw", EVERY)
def test_every_layer_conditioned_generation_equals_the_training_forward(kw):
    check_generation(tiny(sample_conditioning="every", **kw))


def check_generation(cfg):
    P = period(cfg)
    params, x = random_params(cfg), tokens(4 * P)
    carry = model.init_carry(cfg, B)
    forward = jax.jit(model.forward, static_argnums=3)
    first, carry1 = forward(params, x[:, : 2 * P], carry, cfg)
    second, _ = forward(params, x[:, 2 * P :], carry1, cfg)
    step = jax.jit(model.step, static_argnums=3)
    got, c = [], carry
    for t in range(4 * P):
        logits_t, c = step(params, c, x[:, t], cfg)
        got.append(logits_t)
    np.testing.assert_allclose(jnp.stack(got, 1), jnp.concatenate([first, second], 1), rtol=1e-5, atol=1e-5)

    # the sampler's scan over frames against a loop of `step`, both greedy from the same state
    greedy = sample.Sampler(greedy=True)
    u = jnp.zeros((2 * P, B), jnp.float32)
    pick = sample.Choice(1.0, greedy)  # where the weights are packed, the MLP's frames run in the CPU kernel
    family = model.get_family(cfg)
    token, c, loop = x[:, 2 * P].astype(jnp.int32), carry1, []
    for _ in range(2 * P):
        logits_t, c = step(params, c, token, cfg)
        token = jnp.argmax(logits_t, -1).astype(jnp.int32)
        loop.append(token)
    for layout in (sample.Layout(), sample.Layout(transposed=True), sample.layout_for(B)):  # every store
        sp = family.sample_prepare(params, cfg, functools.partial(sample.stored_weight, layout=layout))
        _, _, scanned_BxC = jax.jit(family.sample_scan, static_argnums=(4, 5))(
            sp, carry1, x[:, 2 * P], u, pick, cfg
        )
        np.testing.assert_array_equal(scanned_BxC, np.stack(loop, 1).astype(np.uint8), err_msg=str(layout))


@pytest.mark.parametrize(("T", "W", "extra"), [(16, 512, 0), (4, 7, 0), (5, 3, 2), (1, 4, 0), (9, 10, 1)])
def test_generation_history_windows_are_the_slices(T, W, extra):
    """Generation's history reads each target's W values through windows built by doubling (any T, the
    values possibly longer than the T + W - 1 it reads): row t is values[:, t : t + W]."""
    values_BxS = jnp.asarray(np.random.default_rng(T).standard_normal((2, T + W - 1 + extra)), jnp.float32)
    want = np.stack([np.asarray(values_BxS)[:, t : t + W] for t in range(T)])
    np.testing.assert_array_equal(sample_history._windows(values_BxS, T, W), want)


@pytest.mark.parametrize(
    ("level", "kernels", "tiers", "upsampling", "sample_input", "history"),
    [("mlp", "xla", 2, "per_position", "embedded", 0), ("rnn", "xla", 2, "per_position", "embedded", 0),
     ("mlp", "auto", 2, "shared", "both", 7), ("rnn", "auto", 2, "per_position", "both", 0),
     ("mlp", "xla", 3, "shared", "scaled", 0),
     pytest.param("rnn", "auto", 3, "per_position", "scaled", 11, marks=pytest.mark.slow),  # 3 tiers ran above
     ("mlp", "auto", 2, "shared", "both", (7, 3))],
)  # fmt: skip
def test_gradients_match_finite_differences(level, kernels, tiers, upsampling, sample_input, history):
    cell = "lstm" if level == "rnn" else "gru"
    check_gradients(
        tiny(level, tiers, upsampling, sample_input, history, cell=cell, kernels=kernels, dtype="float64")
    )


@pytest.mark.parametrize("kw", EVERY)
def test_every_layer_conditioned_gradients_match_finite_differences(kw):
    check_gradients(tiny(sample_conditioning="every", dtype="float64", **kw))


def check_gradients(cfg):
    T = 2 * period(cfg)
    x, y = tokens(T + 1)[:, :-1], tokens(T + 1)[:, 1:]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), random_params(cfg))
        carry = jax.tree.map(
            lambda a: a if a.dtype == jnp.int32 else a.astype(jnp.float64) + 0.1, model.init_carry(cfg, B)
        )
        loss = jax.jit(lambda p: model.loss(p, x, y, carry, cfg)[0])
        # eps 1e-6 (float64 central differences stay ~1e-10 exact): the default 1e-4 step can cross one of
        # the MLP's ReLU kinks, where finite differences are wrong and autodiff is right
        check_grads(loss, (params,), order=1, modes=["rev", "fwd"], atol=1e-6, rtol=1e-6, eps=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(SHAPE_NAMES, SHAPES)
def test_dropout_is_for_training_only_and_its_gradients_are_exact(
    level, tiers, upsampling, sample_input, history
):
    """With a key, model.dropout changes the loss (and each key its own masks); without one (evaluation,
    sampling) the model is the rate-0 model. With a fixed key the gradients match finite differences."""
    cfg = tiny(level, tiers, upsampling, sample_input, history, dropout=0.3)
    T = 2 * period(cfg)
    params, x, y = random_params(cfg), tokens(T), tokens(T, seed=2)
    carry = model.init_carry(cfg, B)
    loss = jax.jit(lambda p, key, c: model.loss(p, x, y, carry, c, key)[0], static_argnums=2)
    plain = float(loss(params, None, cfg))
    assert plain == float(loss(params, None, dataclasses.replace(cfg, dropout=0.0)))
    dropped = [float(loss(params, jax.random.key(k), cfg)) for k in (1, 2)]
    assert plain not in dropped and dropped[0] != dropped[1]
    with jax.enable_x64(True):
        cfg64 = dataclasses.replace(cfg, dtype="float64", kernels="xla")
        params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        carry64 = jax.tree.map(lambda a: a if a.dtype == jnp.int32 else a.astype(jnp.float64) + 0.1, carry)
        key = jax.random.key(3)
        check_grads(lambda p: model.loss(p, x, y, carry64, cfg64, key)[0], (params64,), order=1, modes=["rev"],
                    atol=1e-6, rtol=1e-6)  # fmt: skip


def _periodic(period: int, length: int, seed: int = 0) -> np.ndarray:
    pattern = np.random.default_rng(seed).integers(0, 256, period).astype(np.uint8)
    return np.resize(pattern, length)


def _train(cfg, data, steps, B=16):
    streams = Streams(data, B, cfg.train.seq_length)
    state = train.init_state(cfg, streams.steps, B)
    step = train.make_train_step(cfg, streams.steps)
    losses = []
    for i in range(steps):
        state, metrics = step(state, *streams.batch(i % streams.steps))
        losses.append(metrics["loss"])
    return state, [float(v) for v in jax.device_get(losses)]


@pytest.mark.slow
def test_learns_a_periodic_signal_and_its_carry_matters():
    """Period 40 with windows of 16: the pattern is only predictable with what the carry remembers."""
    T, period = 16, 40
    cfg = config.load("tiny", ["model.kind=tiered", "model.cell=gru", "model.rnn_size=64", "model.frame_size=4",
                               "model.sample_size=64", "model.wordvec_size=8", f"train.seq_length={T}",
                               "train.lr_schedule=constant", "train.learning_rate=0.005"])  # fmt: skip
    state, losses = _train(cfg, _periodic(period, 40_000), 300)
    assert np.mean(losses[-20:]) < 0.5, losses[-20:]
    # (frames start at the phases training saw: a frame tier this small does not learn the others)
    held_out = Streams(_periodic(period, 4000), 16, T)
    with_carry = train.evaluate(state.params, cfg.model, held_out)
    fresh = model.init_carry(cfg.model, 16)
    reset = np.mean([float(model.loss(state.params, *held_out.batch(i), fresh, cfg.model)[0])
                     for i in range(held_out.steps)])  # fmt: skip
    assert with_carry < 0.5 * reset, (with_carry, reset)


@pytest.fixture(scope="module")
def saw_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiered")
    wav = write_audio(root / "saw.wav", sawtooth(11025 / 23, 11025, 4.0, 0.7), 11025)
    run_jaxvoice("prepare", wav, "-o", root / "corpus", "-q", check=True)
    return root / "corpus"


TIERED_CLI = ["--config", "tiny", "--set", "model.kind=tiered", "--set", "model.cell=gru", "--set", "model.rnn_size=16",
              "--set", "model.frame_size=8", "--set", "model.sample_size=16", "--set", "model.wordvec_size=4",
              "--set", "train.batch_size=8", "--set", "train.seq_length=32", "--set", "train.checkpoint_every=2",
              "--set", "train.eval_every=2", "-q"]  # fmt: skip


THREE_TIERS = [
    "--set",
    "model.tiers=3",
    "--set",
    "model.top_frame_size=16",
    "--set",
    "model.upsampling=shared",
]


@pytest.mark.slow
@pytest.mark.parametrize("tiers", [[], THREE_TIERS], ids=["2-tiers", "3-tiers-shared"])
def test_resume_is_bitwise_and_sampling_works_from_the_cli(saw_corpus, tmp_path, tiers):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cli = [*TIERED_CLI, *tiers]
    run_jaxvoice("train", *cli, "--data", saw_corpus, "--out", straight, "--steps", "4", check=True)
    run_jaxvoice("train", *cli, "--data", saw_corpus, "--out", resumed, "--steps", "2", check=True)
    run_jaxvoice("train", "--out", resumed, "--resume", "--steps", "4", "-q", check=True)
    rows = lambda run: [
        (r["step"], r["loss"]) for r in csv.DictReader((run / "train.csv").read_text().splitlines())
    ]
    assert rows(resumed) == rows(straight) and len(rows(straight)) == 4
    out = tmp_path / "s.wav"
    prime = write_audio(
        tmp_path / "p.wav", sawtooth(300, 11025, 0.01), 11025
    )  # 110 samples: not whole frames
    for extra in ([], ["--prime", prime, "--top-k", "20", "--num", "2", "--temperature", "0.9"]):
        run_jaxvoice("sample", "--run", straight, "--length", "100", "-o", out, "--force", *extra, check=True)
    assert (tmp_path / "s_0.wav").stat().st_size == 44 + 100
    assert run_jaxvoice("eval", "--run", straight, "--split", "test").returncode == 0


_FOUR_DEVICES = """
import jax, numpy as np
from jaxvoice import config, parallel, train
from jaxvoice.streams import Streams
base = ["model.kind=tiered", "model.cell=gru", "model.rnn_size=16", "model.frame_size=4", "model.sample_size=16",
        "train.batch_size=8", "train.seq_length=16"]
data = np.random.default_rng(0).integers(0, 256, 20_000).astype(np.uint8)
streams = Streams(data, 8, 16)
# the last: streams start fresh at random windows, drawn over the whole batch (one device's or four's)
for tiers in (["model.tiers=2"], ["model.tiers=3", "model.top_frame_size=8"], ["train.state_reset_prob=0.3"]):
    cfg = config.load("tiny", base + tiers)
    losses = {}
    for n in (1, 4):
        auto = (jax.sharding.AxisType.Auto,)
        dp = parallel.DataParallel(jax.make_mesh((n,), ("data",), axis_types=auto, devices=jax.devices()[:n]))
        state = train.init_state(cfg, streams.steps, 8)
        state = jax.device_put(state, train.state_sharding(state, dp))
        step = train.make_train_step(cfg, streams.steps, dp)
        out = []
        for i in range(3):
            x, y = streams.batch(i)
            state, m = step(state, dp.global_batch(x, 8), dp.global_batch(y, 8))
            out.append(float(m["loss"]))
        losses[n] = out
    np.testing.assert_allclose(losses[4], losses[1], rtol=1e-5, err_msg=str(tiers))
print("ok")
"""


@pytest.mark.slow
def test_four_devices_equal_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_FOUR_DEVICES)], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_bfloat16_sampling_weights_and_compute(saw_corpus):
    cfg = dataclasses.replace(tiny("mlp"), dtype="bfloat16")
    params = random_params(cfg)
    chunks = list(
        sample.generate(params, cfg, jax.random.key(0), length=3 * F + 1, chunk=5, weights="bfloat16")
    )
    assert np.concatenate(chunks, axis=1).shape == (1, 3 * F + 1)


@pytest.mark.parametrize(
    "cfg",
    [
        tiny("mlp", 2, "shared", "both", (24, 4), cell="lstm", rnn_size=64, sample_size=64),
        ModelConfig(cell="lstm", rnn_size=64, num_layers=2, wordvec_size=16),
    ],
    ids=["tiered", "flat"],
)
def test_a_model_trained_in_bfloat16_samples_in_float32_by_default(cfg):
    """model.dtype is training's compute dtype: sampling computes in its weights' dtype (float32 by default,
    on the fast paths), so a bfloat16 run's params draw what the float32 model draws; bfloat16 weights
    draw other symbols."""
    params = random_params(cfg)

    def draw(cfg, **kw):
        chunks = sample.generate(params, cfg, jax.random.key(0), length=320, num_streams=2, chunk=64, **kw)
        return np.concatenate(list(chunks), axis=1)

    trained_in_bfloat16 = dataclasses.replace(cfg, dtype="bfloat16")
    np.testing.assert_array_equal(draw(trained_in_bfloat16), draw(cfg))
    assert (draw(trained_in_bfloat16, weights="bfloat16") != draw(cfg)).any()


def test_evaluation_on_devices_starts_from_the_familys_fresh_state():
    """A fresh tiered stream remembers silence (128), not symbol 0: the evaluation placed on the devices
    starts where the plain one does."""
    from jaxvoice import parallel

    cfg = tiny("rnn")
    params = random_params(cfg)
    held_out = Streams(np.asarray(tokens(40 * F)).reshape(-1), B, 2 * F)
    plain = train.evaluate(params, cfg, held_out)
    assert train.evaluate(params, cfg, held_out, dp=parallel.data_parallel()) == pytest.approx(
        plain, rel=1e-6
    )
