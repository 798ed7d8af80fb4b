"""A run directory: what is checked and written before training starts, and how a run is resumed.

runs/NAME/config.toml (the resolved config), corpus.json (the corpus meta, with its path), train.csv,
val.csv, checkpoints/, samples/, plots/. Nothing in an existing run is touched unless --resume is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaxvoice import config as config_lib
from jaxvoice import corpus as corpus_lib
from jaxvoice.errors import UserError
from jaxvoice.streams import train_streams

# Keys that may change when a run is resumed: they do not change what the steps compute.
RESUMABLE_CHANGES = {
    "train.max_epochs",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _differences(a: config_lib.Config, b: config_lib.Config) -> list[str]:
    da, db = config_lib.to_dict(a), config_lib.to_dict(b)
    return [f"{s}.{k}" for s in da if s != "sample" for k in da[s] if da[s][k] != db[s][k]]


def _open_checked(data: str | Path, expected_sha: str | None = None) -> corpus_lib.Corpus:
    corpus = corpus_lib.open_corpus(data)
    if expected_sha is not None and corpus.meta.get("sha256") != expected_sha:
        raise UserError(
            f"corpus {data} is not the one this run trained on (sha256 differs); resume with the original "
            "corpus, or start a new run"
        )
    return corpus


def setup(
    run_dir: str | Path,
    *,
    config_path: str | None,
    overrides: list[str],
    data: str | None,
    resume: bool,
    primary: bool = True,
) -> tuple[config_lib.Config, corpus_lib.Corpus, Path]:
    """Resolve the config and corpus of a new or resumed run; create the run directory if new.

    `primary` is false on the processes after the first of a multi-process run: they must not race it."""
    run_dir = Path(run_dir)
    saved_config = run_dir / "config.toml"
    if resume and saved_config.is_file():
        cfg = config_lib.apply_overrides(config_lib.load(saved_config), overrides)
        if config_path is not None:
            changed = _differences(config_lib.load(config_path, overrides), cfg)
            if changed:
                raise UserError(
                    f"--config differs from the run's saved config.toml in {', '.join(changed)}; drop --config "
                    "to resume with the saved one, or start a new run with another --out"
                )
        saved = config_lib.load(saved_config)
        forbidden = [k for k in _differences(saved, cfg) if k not in RESUMABLE_CHANGES]
        if forbidden:
            raise UserError(
                f"cannot change {', '.join(forbidden)} when resuming (it would change what the steps compute); "
                "start a new run instead"
            )
        corpus = open_run_corpus(run_dir, data)
        if cfg != saved:
            _write_atomic(saved_config, config_lib.dumps(cfg))
        return cfg, corpus, run_dir

    cfg = config_lib.load(config_path, overrides)
    if not primary:  # process 0 checks and writes the run directory; the others only read the corpus
        if data is None:
            raise UserError("no corpus given: add --data CORPUS_DIR (made by jaxvoice prepare)")
        return cfg, _open_checked(data), run_dir
    if run_dir.exists() and not resume and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(
            f"{run_dir} already exists; add --resume to continue that run, or choose another --out"
        )
    if data is None:
        raise UserError("no corpus given: add --data CORPUS_DIR (made by jaxvoice prepare)")
    corpus = _open_checked(data)
    train_streams(corpus.split("train"), cfg.train.batch_size, cfg.train.seq_length)  # sizes that can work
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(saved_config, config_lib.dumps(cfg))
    corpus_info = dict(corpus.meta, path=str(Path(corpus.path).absolute()))
    _write_atomic(run_dir / "corpus.json", json.dumps(corpus_info, indent=2))
    return cfg, corpus, run_dir


def open_run_corpus(run_dir: str | Path, data: str | None = None) -> corpus_lib.Corpus:
    """The corpus a run trained on: `data` if given (checked by sha256), else the path in corpus.json."""
    info_path = Path(run_dir) / "corpus.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{info_path} is missing or not JSON; give the corpus with --data") from None
    if data is None and not isinstance(info.get("path"), str):
        raise UserError(f"{info_path} names no corpus path; give the corpus with --data")
    return _open_checked(data or info["path"], info.get("sha256"))


def config_of(run_dir: str | Path) -> config_lib.Config:
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a run directory (no config.toml); give --run a directory made by train"
        )
    return config_lib.load(path)
