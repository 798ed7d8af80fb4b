"""The Python API: what a notebook or a research script does, and that it meets the command line halfway —
a run made from Python is the same run to `jaxvoice`, and importing jaxvoice leaves the process alone."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_jaxvoice, sawtooth, write_audio

import jaxvoice

RATE = 11025
SMALL = ["model.rnn_size=32", "train.batch_size=8", "train.seq_length=16", "train.checkpoint_every=2",
         "train.eval_every=2"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    wav = write_audio(root / "saw.wav", sawtooth(RATE / 16, RATE, 6.0, 0.8), RATE)
    jaxvoice.prepare([wav], root / "corpus", quiet=True)
    return root / "corpus"


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def losses(run: Path) -> list[tuple[str, str, str]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows(run / "train.csv")]


@pytest.mark.slow
def test_a_run_made_in_python_is_resumed_by_the_cli_exactly(corpus_dir, tmp_path):
    cfg = jaxvoice.load_config("tiny", SMALL)
    run = jaxvoice.Run.create(tmp_path / "py", cfg, corpus_dir)
    result = jaxvoice.fit(run, steps=2)
    assert result.step == 2 and result.stop_reason == "done" and int(result.state.step) == 2
    assert result.val_loss is not None and result.val_step == 2
    assert sorted(p.name for p in run.path.iterdir()) >= ["checkpoint_manifests", "checkpoints", "config.toml",
                                                          "corpus.json", "train.csv", "val.csv"]  # fmt: skip
    run_jaxvoice("train", "--out", run.path, "--resume", "--steps", "4", "-q", check=True)
    cli = tmp_path / "cli"
    run_jaxvoice("train", "--config", "tiny", "--data", corpus_dir, "--out", cli, "--steps", "4", "-q",
                 *[a for kv in SMALL for a in ("--set", kv)], check=True)  # fmt: skip
    assert losses(run.path) == losses(cli) and len(losses(cli)) == 4
    assert rows(run.path / "val.csv") == rows(cli / "val.csv")
    # and the other way round: Python continues what the command started
    again = jaxvoice.fit(jaxvoice.Run.open(cli), steps=6)
    assert (
        again.start_step == 4 and again.step == 6 and [r["step"] for r in rows(cli / "train.csv")][-1] == "6"
    )
    assert run_jaxvoice("eval", "--run", run.path, "--json").returncode == 0


def test_fit_raises_diverged_and_returns_no_exit_codes(corpus_dir, tmp_path):
    cfg = jaxvoice.load_config("tiny", [*SMALL, "train.learning_rate=1e38", "train.checkpoint_every=1"])
    run = jaxvoice.Run.create(tmp_path / "nan", cfg, corpus_dir)
    with pytest.raises(jaxvoice.Diverged) as caught:
        jaxvoice.fit(run, steps=50)
    assert 1 <= caught.value.step <= 50 and max(run.checkpoints()) < caught.value.step


def test_a_hook_sees_every_step_and_can_stop_the_loop(corpus_dir, tmp_path):
    class StopAt(jaxvoice.Hook):
        every = 3

        def __init__(self):
            self.steps, self.boundaries, self.ends = [], [], []

        def on_metrics(self, loop, step, metrics):
            self.steps.append(step)
            assert set(metrics) >= {"loss", "grad_norm", "lr", "tokens_per_s", "seconds"}

        def on_boundary(self, loop):
            self.boundaries.append(loop.step)
            if loop.step == 6:
                loop.stop("enough")

        def on_end(self, loop):
            self.ends.append((loop.step, loop.stop_reason))

    hook = StopAt()
    run = jaxvoice.Run.create(tmp_path / "hooked", jaxvoice.load_config("tiny", SMALL), corpus_dir)
    result = jaxvoice.fit(run, steps=100, hooks=[hook])
    assert hook.steps == [1, 2, 3, 4, 5, 6] and hook.boundaries == [3, 6] and hook.ends == [(6, "enough")]
    assert result.stop_reason == "enough" and max(run.checkpoints()) == 6  # the end saved


def test_custom_loss_and_optimizer_in_the_train_step(corpus_dir):
    import optax

    cfg = jaxvoice.load_config("tiny", SMALL)
    streams = jaxvoice.train_streams(jaxvoice.open_corpus(corpus_dir).split("train"), 8, 16)
    calls = []

    def doubled(params, inputs, targets, carry, model_cfg, key=None):
        calls.append(1)  # traced once
        loss, carry = jaxvoice.loss(params, inputs, targets, carry, model_cfg, key)
        return 2.0 * loss, carry

    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
    state = jaxvoice.init_state(cfg, streams.steps, 8, optimizer=optimizer)
    step = jaxvoice.make_train_step(cfg, streams.steps, loss_fn=doubled, optimizer=optimizer)
    state, metrics = step(state, *streams.batch(0))
    plain = jaxvoice.loss(jaxvoice.init_state(cfg, streams.steps, 8).params, *streams.batch(0),
                          jaxvoice.init_carry(cfg.model, 8), cfg.model)[0]  # fmt: skip
    assert float(metrics["loss"]) == pytest.approx(2.0 * float(plain), rel=1e-5)
    assert float(metrics["lr"]) == pytest.approx(0.05) and calls == [1]


def test_generate_and_restore_from_python(corpus_dir, tmp_path):
    run = jaxvoice.Run.create(tmp_path / "gen", jaxvoice.load_config("tiny", SMALL), corpus_dir)
    result = jaxvoice.fit(run, steps=2)
    restored = jaxvoice.restore(run.path, "latest")
    assert restored.step == 2 and restored.config == run.config
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(result.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    chunks = list(jaxvoice.generate(restored.params, restored.config.model, jax.random.key(0), length=100,
                                    num_streams=2, chunk=64))  # fmt: skip
    assert np.concatenate(chunks, axis=1).shape == (2, 100)


def test_importing_jaxvoice_changes_no_logger_hook_or_signal_handler():
    code = textwrap.dedent(
        """
        import logging, signal, sys, warnings
        def snapshot():
            loggers = {name: (l.level, len(l.handlers), l.propagate, l.disabled)
                       for name, l in logging.root.manager.loggerDict.items() if isinstance(l, logging.Logger)}
            return (loggers, logging.root.level, len(logging.root.handlers), sys.excepthook, sys.unraisablehook,
                    sys.displayhook, [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)],
                    list(warnings.filters))
        import jax, orbax.checkpoint, optax, flax  # what jaxvoice imports may set up their own loggers
        before = snapshot()
        import jaxvoice
        for name in jaxvoice.__all__:
            getattr(jaxvoice, name)
        import jaxvoice.fast, jaxvoice.hooks, jaxvoice.loop, jaxvoice.lstm_recurrence, jaxvoice.packed_matmul
        after = snapshot()
        new = {k: v for k, v in after[0].items() if k not in before[0]}
        changed = {k for k in before[0] if after[0].get(k) != before[0][k]}
        assert not changed and after[1:] == before[1:], (changed, after[1:], before[1:])
        assert all(v == (0, 0, True, False) for v in new.values()), new  # loggers made, but left as they come
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_a_corpus_from_memory_trains_and_the_run_holds_it(tmp_path):
    t = np.arange(40_000)
    symbols = (128 + 90 * np.sin(2 * np.pi * t / 37)).astype(np.uint8)
    corpus = jaxvoice.corpus_from_array(symbols, rate=8000)
    assert corpus.path is None and corpus.meta["length"] == 40_000 and len(corpus.split("val")) == 4_000
    run = jaxvoice.Run.create(tmp_path / "mem", jaxvoice.load_config("tiny", SMALL), corpus)
    assert (run.path / "corpus" / "data.u8").read_bytes() == symbols.tobytes()
    assert run.corpus.meta["sha256"] == corpus.meta["sha256"]
    jaxvoice.fit(run, steps=2)
    assert run_jaxvoice("eval", "--run", run.path, "--json").returncode == 0
    with pytest.raises(jaxvoice.UserError, match="uint8"):
        jaxvoice.corpus_from_array(symbols.astype(np.int16))
