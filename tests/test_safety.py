"""Loading a checkpoint, corpus or config never runs code from it, and paths inside a run's JSON files never
make jaxvoice write outside the run directory."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import run_jaxvoice, sawtooth, write_audio

PACKAGE = Path(__file__).parent.parent / "jaxvoice"
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_can_execute_data(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & UNSAFE_MODULES, ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in UNSAFE_MODULES, ast.dump(node)
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None  # the builtins, not re.compile
            assert name not in UNSAFE_CALLS, f"{path}:{node.lineno} calls {name}"
            for keyword in node.keywords:  # np.load(..., allow_pickle=True) and friends
                is_true = isinstance(keyword.value, ast.Constant) and keyword.value.value is True
                assert not (keyword.arg == "allow_pickle" and is_true), f"{path}:{node.lineno}"


def _tree(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


@pytest.mark.slow
def test_paths_in_a_runs_json_cannot_redirect_writes(tmp_path):
    wav = write_audio(tmp_path / "saw.wav", sawtooth(11025 / 17, 11025, 3.0, 0.6), 11025)
    run_jaxvoice("prepare", wav, "-o", tmp_path / "corpus", "-q", check=True)
    run = tmp_path / "deep" / "run"
    run_jaxvoice("train", "--config", "tiny", "--data", tmp_path / "corpus", "--out", run, "--steps", "10",
                 "--set", "model.rnn_size=16", "--set", "train.batch_size=4", "--set", "train.seq_length=8",
                 "--set", "train.checkpoint_every=10", "-q", check=True)  # fmt: skip
    # Hostile paths: the corpus "path", a source path, a sample-ish name — all pointing outside the run.
    info = json.loads((run / "corpus.json").read_text())
    info["path"] = "../../escaped_corpus"
    info["sources"] = [{"path": "../../escaped.wav", "bytes": 1, "seconds": 0.1}]
    (run / "corpus.json").write_text(json.dumps(info))
    before = _tree(tmp_path, run)
    for args in (["plot", "--run", run], ["report", "--run", run], ["eval", "--run", run]):
        proc = run_jaxvoice(*args)
        assert "Traceback" not in proc.stderr, proc.stderr
    assert _tree(tmp_path, run) == before, "something was written outside the run directory"
