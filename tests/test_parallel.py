"""Data parallelism: 4 fake CPU devices and two processes on 127.0.0.1 give the losses of one device."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, jaxvoice_cmd, run_jaxvoice, sawtooth, write_audio

FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
SMALL = ["--config", "tiny", "--set", "model.rnn_size=32", "--set", "train.batch_size=8",
         "--set", "train.seq_length=16", "--set", "train.checkpoint_every=10", "--set", "train.eval_every=10",
         "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("par")
    write_audio(root / "saw.wav", sawtooth(11025 / 23, 11025, 4.0, 0.7), 11025)
    run_jaxvoice("prepare", root / "saw.wav", "-o", root / "corpus", "-q", check=True)
    return root / "corpus"


def losses(run: Path, name: str = "train.csv", column: str = "loss") -> np.ndarray:
    with open(run / name) as f:
        return np.array([float(r[column]) for r in csv.DictReader(f)])


@pytest.mark.slow
def test_four_devices_match_one_and_resume_exactly(corpus_dir, tmp_path):
    one, four, four_resumed = tmp_path / "one", tmp_path / "four", tmp_path / "four_resumed"
    args = ["train", *SMALL, "--data", corpus_dir]
    run_jaxvoice(*args, "--out", one, "--steps", "20", check=True)
    run_jaxvoice(*args, "--out", four, "--steps", "20", env=FOUR_DEVICES, check=True)
    run_jaxvoice(*args, "--out", four_resumed, "--steps", "10", env=FOUR_DEVICES, check=True)
    run_jaxvoice(*args, "--out", four_resumed, "--steps", "20", "--resume", env=FOUR_DEVICES, check=True)
    assert len(losses(one)) == 20
    np.testing.assert_allclose(losses(four), losses(one), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        losses(four, "val.csv", "val_loss"), losses(one, "val.csv", "val_loss"), atol=1e-5
    )
    np.testing.assert_array_equal(losses(four_resumed), losses(four))


def test_a_batch_that_does_not_split_over_the_devices_is_refused(corpus_dir, tmp_path):
    proc = run_jaxvoice(
        "train", *SMALL, "--data", corpus_dir, "--out", tmp_path / "run", "--set", "train.batch_size=6",
        env=FOUR_DEVICES,
    )  # fmt: skip
    assert_user_error(proc, "train.batch_size=6", "4 devices", "multiple of 4")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(corpus_dir, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = ["train", *SMALL, "--data", corpus_dir, "--steps", "10"]
    run_jaxvoice(*args, "--out", single, check=True)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                *jaxvoice_cmd(),
                *map(str, args),
                "--out",
                str(multi),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (1, 0)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    np.testing.assert_allclose(losses(multi), losses(single), rtol=0, atol=1e-5)
    assert (multi / "checkpoints" / "10").is_dir()


# --- sampling over devices ----------------------------------------------------------------------------------

_PLACEMENT_CHECK = """
import jax, numpy as np
from jaxvoice import config, model, parallel, sample
cfg = config.load(config.resolve_preset("tiny")).model
dp = parallel.data_parallel()
assert dp.num_devices == 4, dp.num_devices
seen, run_chunk = [], sample._run_chunk
def spy(*args, **kw):
    seen.append((args, kw))
    return run_chunk(*args, **kw)
sample._run_chunk = spy
params = model.init_params(jax.random.key(0), cfg)
chunks = list(sample.generate(params, cfg, jax.random.key(1), length=100, num_streams=6, chunk=32, dp=dp))
assert np.concatenate(chunks, axis=1).shape == (6, 100)
args, kw = seen[0]
sp, carry, token = args[:3]
for c in jax.tree.leaves(carry):  # every array of the carry: 6 streams padded to 8, split by stream
    assert c.shape[0] == 8 and c.sharding.spec == dp.batch.spec, c.sharding
assert token.sharding.spec == dp.batch.spec and jax.tree.leaves(sp)[0].sharding.is_fully_replicated
out = run_chunk(*args, **kw)
assert all(c.sharding.spec == dp.batch.spec for c in jax.tree.leaves(out[0])) and out[2].sharding.spec == dp.batch.spec
hlo = run_chunk.lower(*args, **kw).compile().as_text()
assert not any(op in hlo for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")), "collectives"
print("ok")
"""


def test_sampling_steps_each_devices_own_streams_without_collectives():
    env = {**os.environ, **FOUR_DEVICES}
    proc = subprocess.run([sys.executable, "-c", _PLACEMENT_CHECK], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.slow
def test_sampling_on_four_devices_writes_the_bytes_of_one(corpus_dir, tmp_path):
    """6 streams on 4 devices (padded to 8): each file equals the 1-device file of that stream."""
    run = tmp_path / "run"
    run_jaxvoice("train", *SMALL, "--data", corpus_dir, "--out", run, "--steps", "10", check=True)
    sample = ["sample", "--run", run, "--num", "6", "--length", "3000", "--chunk", "512", "--quiet"]
    run_jaxvoice(*sample, "-o", tmp_path / "one.wav", check=True)
    run_jaxvoice(*sample, "-o", tmp_path / "four.wav", env=FOUR_DEVICES, check=True)
    for i in range(6):
        one, four = (tmp_path / f"{name}_{i}.wav" for name in ("one", "four"))
        assert one.stat().st_size == 44 + 3000
        assert one.read_bytes() == four.read_bytes(), f"stream {i} differs"
    assert (tmp_path / "one_0.wav").read_bytes() != (tmp_path / "one_1.wav").read_bytes()
