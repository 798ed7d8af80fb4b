"""Training: learning, carried state, exact resume, kills, signals, NaN, bad input — real corpora and runs."""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import assert_user_error, jaxvoice_cmd, run_jaxvoice, sawtooth, write_audio

from jaxvoice import checkpoint, config, manifests, model, train
from jaxvoice.streams import Streams

RATE = 11025
# Small and fast, but the real tiny preset underneath.
FAST = ["--set", "model.rnn_size=32", "--set", "train.batch_size=8", "--set", "train.seq_length=16"]


@pytest.fixture(scope="module")
def saw_corpus(tmp_path_factory) -> Path:
    """A corpus of a sawtooth whose period is exactly 16 samples at 11025 Hz."""
    from jaxvoice import corpus

    root = tmp_path_factory.mktemp("saw")
    wav = write_audio(root / "saw.wav", sawtooth(RATE / 16, RATE, 6.0, 0.8), RATE)
    corpus.prepare([wav], root / "corpus", rate=RATE, codec="linear", quiet=True)
    return root / "corpus"


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def train_cmd(corpus: Path, out: Path, *extra) -> list[str]:
    return ["train", "--config", "tiny", "--data", corpus, "--out", out, *FAST, *extra, "--quiet"]


def test_tiny_learns_a_sawtooth_and_writes_the_run_directory(saw_corpus, tmp_path):
    run = tmp_path / "run"
    proc = run_jaxvoice(
        *train_cmd(saw_corpus, run, "--steps", "300", "--set", "train.eval_every=100"), check=True
    )
    rows = read_csv(run / "train.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 301))
    assert set(rows[0]) == {"step", "epoch", "loss", "bits", "lr", "grad_norm", "tokens_per_s", "wall_s"}
    assert float(rows[0]["loss"]) > 4.0  # starts near ln 256
    assert np.mean([float(r["loss"]) for r in rows[-20:]]) < 0.5
    val = read_csv(run / "val.csv")
    assert [int(r["step"]) for r in val] == [100, 200, 300]
    assert float(val[-1]["val_loss"]) < 0.5
    assert abs(float(val[-1]["val_bits"]) - float(val[-1]["val_loss"]) / np.log(2)) < 1e-9
    assert config.load(run / "config.toml").model.rnn_size == 32
    assert json.loads((run / "corpus.json").read_text())["codec"] == "linear"
    assert checkpoint.available_steps(run)[-1] == 300
    assert proc.stderr.strip() == ""  # --quiet


@pytest.mark.slow
def test_eval_json_reports_nats_and_bits(saw_corpus, tmp_path):
    run = tmp_path / "run"
    run_jaxvoice(
        *train_cmd(saw_corpus, run, "--steps", "20", "--set", "train.checkpoint_every=10"), check=True
    )
    out = run_jaxvoice(
        "eval", "--run", run, "--checkpoint", "latest", "--split", "test", "--json", check=True
    )
    result = json.loads(out.stdout)
    assert result["split"] == "test" and result["step"] == 20
    assert result["bits"] == pytest.approx(result["loss"] / np.log(2))
    assert 0 < result["loss"] < 6
    assert_user_error(run_jaxvoice("eval", "--run", run, "--checkpoint", "15"), "no checkpoint at step 15")
    assert_user_error(run_jaxvoice("eval", "--run", tmp_path / "nope"), "nope")


def _straight_and_resumed(corpus: Path, tmp_path: Path, steps: int, extra: list[str]) -> tuple[Path, Path]:
    """Two runs to `steps`: one straight, one stopped at half and resumed; their train.csv losses equal."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_jaxvoice(*train_cmd(corpus, straight, "--steps", str(steps), *extra), check=True)
    run_jaxvoice(*train_cmd(corpus, resumed, "--steps", str(steps // 2), *extra), check=True)
    run_jaxvoice(*train_cmd(corpus, resumed, "--steps", str(steps), "--resume", *extra), check=True)
    loss = lambda run: [(r["step"], r["loss"], r["grad_norm"]) for r in read_csv(run / "train.csv")]
    assert loss(resumed) == loss(straight) and len(loss(straight)) == steps
    return straight, resumed


def test_two_steps_save_resume_equals_four_steps_bitwise(saw_corpus, tmp_path):
    # weight decay: AdamW's state goes through the checkpoint too (the other resume tests run plain Adam)
    extra = ["--set", "train.checkpoint_every=2", "--set", "model.dropout=0.1", "--set", "model.num_layers=2",
             "--set", "train.weight_decay=0.1"]  # fmt: skip
    straight, resumed = _straight_and_resumed(saw_corpus, tmp_path, 4, extra)
    a = checkpoint.restore_for_inference(straight, "latest")
    b = checkpoint.restore_for_inference(resumed, "latest")
    assert a.step == b.step == 4
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_moving_average_resumes_bitwise_and_is_the_model_that_is_saved_and_evaluated(saw_corpus, tmp_path):
    """With train.ema_decay the checkpoints' params (what eval and sample read) are the weights' moving
    average, val.csv is its loss, and the weights themselves go through the checkpoint for exact resume."""
    extra = ["--set", "train.checkpoint_every=3", "--set", "train.eval_every=3",
             "--set", "train.ema_decay=0.9"]  # fmt: skip
    straight, resumed = _straight_and_resumed(saw_corpus, tmp_path, 6, extra)
    assert read_csv(resumed / "val.csv") == read_csv(straight / "val.csv")

    cfg = config.load(straight / "config.toml")
    states = []
    for run in (straight, resumed):
        mngr = checkpoint.manager(run, read_only=True)
        state, _ = checkpoint.restore_train(mngr, train.init_state(cfg, 1, cfg.train.batch_size), cfg)
        mngr.close()
        states.append(state)
    for x, y in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    saved = checkpoint.restore_for_inference(straight, "latest")
    for x, y in zip(jax.tree.leaves(saved.params), jax.tree.leaves(states[0].averaged), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    gap = max(float(np.abs(np.asarray(a) - np.asarray(w)).max())
              for a, w in zip(jax.tree.leaves(states[0].averaged), jax.tree.leaves(states[0].params), strict=True))  # fmt: skip
    assert gap > 1e-4  # the average is not the weights
    out = run_jaxvoice("eval", "--run", straight, "--checkpoint", "latest", "--json", check=True)
    assert json.loads(out.stdout)["loss"] == pytest.approx(float(read_csv(straight / "val.csv")[-1]["val_loss"]),
                                                           rel=1e-5)  # fmt: skip


@pytest.mark.parametrize(("warmup", "decay"), [(None, 0.5), (30.0, 0.99), (2.0, 0.5)])
def test_moving_average_follows_the_weights_at_its_rate(warmup, decay):
    """After each update a = r a + (1 - r) w with r = min(decay, (1 + step) / (W + step)), W = train.ema_warmup
    (default 10): at step 0 it is 1 / W, so the average leaves the initial weights at once."""
    extra = [] if warmup is None else [f"train.ema_warmup={warmup}"]
    cfg = config.load("tiny", ["model.rnn_size=16", "train.batch_size=4", "train.seq_length=8",
                               f"train.ema_decay={decay}", *extra])  # fmt: skip
    streams = Streams(_tokens_with_period(50, 2000), 4, 8)
    state = train.init_state(cfg, streams.steps, 4)
    expected = jax.tree.map(np.asarray, state.params)
    step_fn = train.make_train_step(cfg, streams.steps)
    for i in range(4):
        state, _ = step_fn(state, *streams.batch(i))
        r = min(decay, (1 + i) / ((warmup or 10.0) + i))
        expected = jax.tree.map(lambda a, w, r=r: r * a + (1 - r) * np.asarray(w), expected, state.params)
        for a, b in zip(jax.tree.leaves(state.averaged), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-7)
    assert state.model_params is state.averaged
    assert train.memory_needed(cfg)["moving average"] == train.memory_needed(cfg)["parameters"]
    plain = config.load("tiny", ["model.rnn_size=16"])
    assert train.init_state(plain, 10, 4).averaged is None
    assert "moving average" not in train.memory_needed(plain)


def test_weight_decay_shrinks_the_matrices_and_not_the_biases():
    """AdamW, decoupled: with a zero gradient an update is -lr x decay x w for each matrix, 0 for vectors."""
    cfg = config.TrainConfig(learning_rate=0.01, weight_decay=0.5, lr_schedule="constant")
    params = {"w_2x3": np.arange(6.0, dtype=np.float32).reshape(2, 3) - 2, "b_3": np.ones(3, np.float32)}
    optimizer = train.make_optimizer(cfg, steps_per_epoch=10)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    np.testing.assert_allclose(updates["w_2x3"], -0.01 * 0.5 * params["w_2x3"], rtol=1e-6)
    np.testing.assert_array_equal(updates["b_3"], np.zeros(3, np.float32))
    plain = train.make_optimizer(config.TrainConfig(learning_rate=0.01, lr_schedule="constant"), 10)
    updates, _ = plain.update(zeros, plain.init(params), params)  # Adam: no gradient, no step
    np.testing.assert_array_equal(updates["w_2x3"], np.zeros((2, 3), np.float32))


def test_state_reset_prob_starts_chosen_streams_fresh_and_the_same_ones_every_time():
    """train.state_reset_prob: each stream's carry is the fresh one with chance p at each window (drawn from
    the step's key, so a resumed run draws the same), the others' carried on; 0 resets only at epoch starts."""
    B = 64

    def carry_through(params, inputs, targets, carry, cfg, key):  # loss 0, the carry it was given
        return sum(jax.numpy.sum(p) * 0.0 for p in jax.tree.leaves(params)), carry

    def carries_after_step_1(p):
        cfg = config.load("tiny", ["model.rnn_size=8", f"train.state_reset_prob={p}"])
        state = train.init_state(cfg, steps_per_epoch=100, batch_size=B)
        state = state.replace(step=state.step + 1, carry=jax.tree.map(lambda c: c + 1.0, state.carry))
        step = train.make_train_step(cfg, 100, loss_fn=carry_through)
        inputs = np.zeros((B, 4), np.uint8)
        return np.stack([np.asarray(c)[:, 0] for c in jax.tree.leaves(step(state, inputs, inputs)[0].carry)])

    kept = carries_after_step_1(0.0)
    np.testing.assert_array_equal(kept, np.ones_like(kept))  # p = 0: not an epoch start, nothing reset
    drawn = carries_after_step_1(0.5)
    reset_B = drawn[0] == 0.0
    assert set(np.unique(drawn)) == {0.0, 1.0} and (drawn == drawn[0]).all()  # all of a stream's state
    assert 16 < reset_B.sum() < 48  # ~32 of 64 (binomial: outside this 1 in 10^5)
    np.testing.assert_array_equal(carries_after_step_1(0.5), drawn)  # the step's key decides


def _make_legacy(run: Path) -> None:
    """Rewrite a run's newest checkpoint as jaxvoice saved it before model families (format 1): the carry as
    one [layers, states, B, H] array and no state_format in the meta; its manifest written again."""
    import orbax.checkpoint as ocp

    cfg = config.load(run / "config.toml")
    mngr = checkpoint.manager(run)
    step = max(mngr.all_steps())
    abstract = train.init_state(cfg, 1, cfg.train.batch_size)
    state, meta = checkpoint.restore_train(mngr, abstract, cfg)
    legacy = state.replace(carry=jax.numpy.stack([jax.numpy.stack(layer) for layer in state.carry]))
    train_part = checkpoint._train_part(legacy)
    meta = {k: v for k, v in meta.items() if k != "state_format"}
    meta["train_sha256"] = checkpoint.digest(train_part)
    mngr.delete(step)
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(legacy.params),
              train=ocp.args.StandardSave(train_part), meta=ocp.args.JsonSave(meta)), force=True)  # fmt: skip
    manifests.write(Path(mngr.directory), step, set(mngr.all_steps()))
    mngr.close()


@pytest.mark.slow
def test_a_checkpoint_from_before_model_families_resumes_exactly(saw_corpus, tmp_path):
    straight, old = tmp_path / "straight", tmp_path / "old"
    extra = ["--set", "train.checkpoint_every=2", "--set", "model.num_layers=2"]
    run_jaxvoice(*train_cmd(saw_corpus, straight, "--steps", "4", *extra), check=True)
    run_jaxvoice(*train_cmd(saw_corpus, old, "--steps", "2", *extra), check=True)
    _make_legacy(old)
    assert "state_format" not in checkpoint.read_meta(checkpoint.manager(old, read_only=True), 2)
    run_jaxvoice(*train_cmd(saw_corpus, old, "--steps", "4", "--resume", *extra), check=True)
    loss = lambda run: [(r["step"], r["loss"], r["grad_norm"]) for r in read_csv(run / "train.csv")]
    assert loss(old) == loss(straight) and len(loss(old)) == 4


@pytest.mark.slow
def test_sampling_while_training_writes_what_jaxvoice_sample_writes_once(saw_corpus, tmp_path):
    run = tmp_path / "run"
    extra = ["--set", "train.checkpoint_every=2", "--set", "train.sample_seconds=0.05"]
    run_jaxvoice(*train_cmd(saw_corpus, run, "--steps", "4", *extra), check=True)
    samples = run / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["step_2.wav", "step_4.wav"]
    audio_s = repr(round(round(0.05 * RATE) / RATE, 6))  # 551 samples
    assert [(r["step"], r["audio_s"]) for r in read_csv(run / "samples.csv")] == [
        ("2", audio_s),
        ("4", audio_s),
    ]
    for step in (2, 4):
        out = tmp_path / f"cli_{step}.wav"
        run_jaxvoice("sample", "--run", run, "--checkpoint", step, "--seconds", "0.05", "-o", out, check=True)
        assert out.read_bytes() == (samples / f"step_{step}.wav").read_bytes()
    # A run stopped after saving step 4 but before sampling it writes that sample when it resumes; the
    # samples already there are not written again.
    (samples / "step_4.wav").unlink()
    (run / "samples.csv").write_text(f"step,audio_s,sample_s\n2,{audio_s},0.1\n")
    before = (samples / "step_2.wav").stat().st_mtime_ns
    run_jaxvoice("train", "--out", run, "--resume", "--steps", "6", "-q", check=True)
    assert [r["step"] for r in read_csv(run / "samples.csv")] == ["2", "4", "6"]
    assert (samples / "step_2.wav").stat().st_mtime_ns == before
    out = tmp_path / "cli_4_again.wav"
    run_jaxvoice("sample", "--run", run, "--checkpoint", "4", "--seconds", "0.05", "-o", out, check=True)
    assert out.read_bytes() == (samples / "step_4.wav").read_bytes()


def _popen_train(corpus: Path, out: Path, *extra) -> subprocess.Popen:
    args = [*jaxvoice_cmd(), *map(str, train_cmd(corpus, out, *extra))]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until a finished checkpoint (a step-numbered directory; orbax's temporary ones are not) exists."""
    deadline = time.monotonic() + timeout
    ckpt = run / "checkpoints"
    while not (ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_matches(saw_corpus, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    extra = ["--steps", "150", "--set", "train.checkpoint_every=25", "--set", "train.eval_every=50"]
    run_jaxvoice(*train_cmd(saw_corpus, straight, *extra), check=True)
    proc = _popen_train(saw_corpus, killed, *extra)
    _wait_for_checkpoint(killed, proc)
    time.sleep(0.05)  # a few steps past the save, on any machine speed
    proc.kill()
    proc.wait()
    assert len(read_csv(killed / "train.csv")) < 150
    run_jaxvoice(*train_cmd(saw_corpus, killed, *extra, "--resume"), check=True)
    rows = lambda run, name: [(r["step"], r.get("loss") or r["val_loss"]) for r in read_csv(run / name)]
    assert rows(killed, "train.csv") == rows(straight, "train.csv")
    assert rows(killed, "val.csv") == rows(straight, "val.csv")


def test_sigint_saves_and_exits_cleanly(saw_corpus, tmp_path):
    run = tmp_path / "run"
    proc = _popen_train(saw_corpus, run, "--steps", "100000", "--set", "train.checkpoint_every=20")
    _wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last_row = int(read_csv(run / "train.csv")[-1]["step"])
    assert checkpoint.available_steps(run)[-1] == last_row  # the stop step itself was saved


def test_nan_loss_stops_cleanly_and_keeps_the_good_checkpoint(saw_corpus, tmp_path):
    run = tmp_path / "run"
    proc = run_jaxvoice(
        *train_cmd(saw_corpus, run, "--steps", "50", "--set", "train.learning_rate=1e38", "--set",
                   "train.checkpoint_every=1"),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "NaN/Inf at step" in proc.stderr and "Traceback" not in proc.stderr
    steps = checkpoint.available_steps(run)
    assert steps, "the checkpoints before the NaN are kept"
    restored = checkpoint.restore_for_inference(run, "latest")
    nan_step = int(proc.stderr.split("at step ")[1].split(";")[0])
    assert restored.step < nan_step


def test_resume_without_a_checkpoint_starts_at_zero_and_says_so(saw_corpus, tmp_path):
    run = tmp_path / "run"
    proc = run_jaxvoice(
        "train", "--config", "tiny", "--data", saw_corpus, "--out", run, *FAST, "--steps", "3", "--resume"
    )
    assert proc.returncode == 0, proc.stderr
    assert "no checkpoint yet: starting from step 0" in proc.stderr
    assert len(read_csv(run / "train.csv")) == 3


@pytest.mark.slow
def test_existing_run_without_resume_is_refused_and_untouched(saw_corpus, tmp_path):
    run = tmp_path / "run"
    run_jaxvoice(*train_cmd(saw_corpus, run, "--steps", "2"), check=True)
    digest = lambda: {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    before = digest()
    assert_user_error(run_jaxvoice(*train_cmd(saw_corpus, run, "--steps", "4")), "already exists", "--resume")
    assert digest() == before
    assert_user_error(
        run_jaxvoice(*train_cmd(saw_corpus, run, "--steps", "4", "--resume", "--set", "model.rnn_size=8")),
        "model.rnn_size",
    )
    assert digest() == before


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--set", "model.cell=transformer"], ["model.cell", "lstm"]),
        (["--set", "train.batchsize=4"], ["train.batch_size"]),
        (["--set", "train.batch_size=1000", "--set", "train.seq_length=1000"], ["train split", "batch_size"]),
        (["--steps", "0"], ["--steps"]),
        (["--set", "train.ema_decay=1"], ["train.ema_decay", "[0, 1)"]),
        (["--set", "train.ema_warmup=1"], ["train.ema_warmup", "> 1"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(saw_corpus, tmp_path, extra, words):
    run = tmp_path / "run"
    assert_user_error(run_jaxvoice(*train_cmd(saw_corpus, run, *extra)), *words)
    assert not run.exists()


def test_missing_corpus_is_one_line_and_exit_2(tmp_path):
    proc = run_jaxvoice("train", "--config", "tiny", "--data", tmp_path / "nope", "--out", tmp_path / "run")
    assert_user_error(proc, "nope")
    assert not (tmp_path / "run").exists()


# --- in-process: the step function itself ---------------------------------------------------------------


def _tokens_with_period(period: int, length: int, seed: int = 0) -> np.ndarray:
    pattern = np.random.default_rng(seed).integers(0, 256, period).astype(np.uint8)
    return np.resize(pattern, length)


def test_no_recompilation_after_the_first_step():
    cfg = config.load("tiny", ["model.rnn_size=16", "train.batch_size=4", "train.seq_length=8"])
    streams = Streams(_tokens_with_period(50, 2000), 4, 8)
    state = train.init_state(cfg, streams.steps, 4)
    step_fn = train.make_train_step(cfg, streams.steps)
    for i in range(5):
        state, metrics = step_fn(state, *streams.batch(i))
    jax.block_until_ready(metrics)
    assert step_fn._cache_size() == 1


@pytest.mark.slow
def test_carried_state_beats_reset_on_a_period_longer_than_t():
    T, B, period = 8, 16, 40
    cfg = config.load("tiny", ["model.rnn_size=64", f"train.batch_size={B}", f"train.seq_length={T}",
                               "train.lr_schedule=constant", "train.learning_rate=0.01"])  # fmt: skip
    streams = Streams(_tokens_with_period(period, 40_000), B, T)
    state = train.init_state(cfg, streams.steps, B)
    step_fn = train.make_train_step(cfg, streams.steps)
    for i in range(400):
        state, _ = step_fn(state, *streams.batch(i % streams.steps))
    held_out = Streams(_tokens_with_period(period, 4000)[7:], B, T)
    with_carry = train.evaluate(state.params, cfg.model, held_out)
    reset = np.mean(
        [
            float(model.loss(state.params, *held_out.batch(i), model.init_carry(cfg.model, B), cfg.model)[0])
            for i in range(held_out.steps)
        ]
    )
    assert with_carry < 0.5 * reset, (with_carry, reset)
