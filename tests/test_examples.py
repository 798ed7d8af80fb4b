"""examples/ run, at toy size, and do what their docstrings say."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_user_error, run_jaxvoice

EXAMPLES = Path(__file__).parent.parent / "examples"
TOY = ["--set", "model.rnn_size=24", "--set", "train.batch_size=8", "--set", "train.seq_length=16"]


def run_example(name: str, *args, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def losses(run: Path) -> list[tuple[str, str]]:
    with open(run / "train.csv") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def mgu_runs(tmp_path_factory):
    """examples/custom_cell.py trained to 6 steps, and the same run stopped at 4 and resumed by the CLI."""
    root = tmp_path_factory.mktemp("mgu")
    run_example("custom_cell.py", "--out", root / "straight", "--steps", "6", "--rnn-size", "24")
    run_example("custom_cell.py", "--out", root / "resumed", "--steps", "4", "--rnn-size", "24")
    return root / "straight" / "run", root / "resumed" / "run"


@pytest.mark.slow
def test_a_registered_cell_trains_resumes_exactly_and_samples_through_the_cli(mgu_runs, tmp_path):
    straight, resumed = mgu_runs
    module = EXAMPLES / "custom_cell.py"
    assert_user_error(run_jaxvoice("train", "--out", resumed, "--resume", "--steps", "6"), "mgu", "--import")
    run_jaxvoice("train", "--import", module, "--out", resumed, "--resume", "--steps", "6", "-q", check=True)
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 6
    proc = run_jaxvoice("sample", "--run", straight, "--seconds", "0.5", "-o", tmp_path / "x.wav")
    assert_user_error(proc, "model.cell 'mgu'", "--import")
    assert not (tmp_path / "x.wav").exists()
    run_jaxvoice("sample", "--import", module, "--run", straight, "--seconds", "0.5", "-o", tmp_path / "x.wav",
                 check=True)  # fmt: skip
    assert (tmp_path / "x.wav").stat().st_size == 44 + round(0.5 * 11025)
    out = run_jaxvoice("eval", "--import", module, "--run", straight, "--json", check=True)
    assert '"step": 6' in out.stdout
    # by module name from the current folder, as well as by path
    run_jaxvoice("eval", "--import", "custom_cell", "--run", straight, cwd=EXAMPLES, check=True)
    assert_user_error(run_jaxvoice("eval", "--import", "no_such_module", "--run", straight), "no_such_module")


@pytest.mark.slow
def test_the_sweep_makes_normal_runs_and_a_table(tmp_path):
    proc = run_example("sweep.py", "--out", tmp_path, "--steps", "8", "--rates", "1e-3,1e-2", *TOY)
    table = proc.stdout.strip().splitlines()
    assert len(table) == 3 and table[1].split()[0] == "1e-03" and table[2].split()[0] == "1e-02"
    first, last = float(table[2].split()[1]), float(table[2].split()[2])
    assert last < first  # the loss fell
    for rate in ("0.001", "0.01"):
        assert len(losses(tmp_path / f"lr_{rate}")) == 8
    run_jaxvoice("report", "--run", tmp_path / "lr_0.01", "-q", check=True)


@pytest.mark.slow
def test_the_custom_loss_trains_and_is_judged_by_plain_cross_entropy():
    proc = run_example("custom_loss.py", "--steps", "10", "--smoothing", "0.2", *TOY)
    lines = proc.stdout.strip().splitlines()
    assert "cross-entropy" in lines[0] and "label smoothing 0.2" in lines[1]
    plain, smoothed = (float(line.split("held-out ")[1].split()[0]) for line in lines)
    assert plain != smoothed and 3.0 < plain < 8.5 and 3.0 < smoothed < 8.5
