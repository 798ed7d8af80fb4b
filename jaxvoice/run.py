"""A run directory: what is checked and written before training starts, and how a run is resumed.

runs/NAME/config.toml (the resolved config), corpus.json (the corpus meta, with its path), train.csv,
val.csv, checkpoints/, samples/, plots/. jaxvoice trains only into a new or empty folder, or (with
`resume`) into a run it made itself; nothing else is ever written to, and nothing in an existing run is
touched unless `resume` is given.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from jaxvoice import config as config_lib
from jaxvoice import corpus as corpus_lib
from jaxvoice import files
from jaxvoice.errors import UserError
from jaxvoice.streams import train_streams

CONFIG_FILE, CORPUS_FILE = "config.toml", "corpus.json"
# A corpus up to this size is checked against its sha256 whenever a run opens it (~1 s per GiB); a larger
# one by its size only (`jaxvoice info --verify` checks it in full).
VERIFY_LIMIT = 1 << 30


def _missing_or_bad(run_dir: Path) -> list[str]:
    """Which of the files that make a folder a jaxvoice run are absent or not what jaxvoice writes: its
    config.toml, and the corpus.json beside it (a JSON object with the corpus's codec and sha256)."""
    bad = [] if (run_dir / CONFIG_FILE).is_file() else [CONFIG_FILE]
    try:
        info = files.read_json(run_dir / CORPUS_FILE)
    except (OSError, ValueError):
        info = None
    if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and "codec" in info):
        bad.append(CORPUS_FILE)
    return bad


def is_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a run that jaxvoice made (its config.toml and corpus.json)."""
    return not _missing_or_bad(Path(run_dir))


def _existing_run(run_dir: Path, resume: bool) -> bool:
    """True for a run to resume; False for an absent or empty folder (a new run, also with `resume`: the first
    start of a job that always resumes); anything else is refused before anything is written."""
    if not (run_dir.exists() or run_dir.is_symlink()):
        return False
    if not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a run directory: choose another --out")
    missing = _missing_or_bad(run_dir)
    if not missing:
        if not resume:
            raise UserError(
                f"{run_dir} already exists; add --resume to continue that run, or choose another --out"
            )
        return True
    try:
        empty = not any(run_dir.iterdir())
    except OSError as e:
        raise UserError(f"cannot read {run_dir} ({e.strerror}): choose another --out") from None
    if not empty and (run_dir / "checkpoints").is_dir():
        raise UserError(
            f"{run_dir} looks like a jaxvoice run but its {' and '.join(missing)} is missing or damaged: put it "
            "back (e.g. from a backup), or start a new run with another --out"
        )
    if not empty:
        raise UserError(
            f"{run_dir} holds files but is not a jaxvoice run (no {CONFIG_FILE} and {CORPUS_FILE} from jaxvoice "
            "train), so train will not write there, with or without --resume: choose another --out"
        )
    return False


def _open_checked(data: str | Path, expected_sha: str | None, fix: str) -> corpus_lib.Corpus:
    """The corpus at `data`, checked against its own sha256 (up to VERIFY_LIMIT) and, if given, against the
    sha256 the run recorded; `fix` says what to do when it is another corpus."""
    corpus = corpus_lib.open_corpus(data)
    if expected_sha is not None and corpus.meta.get("sha256") != expected_sha:
        raise UserError(f"corpus {data} is not the one this run trained on (sha256 differs); {fix}")
    if corpus.meta["length"] <= VERIFY_LIMIT:
        corpus.verify()
    return corpus


@dataclass(frozen=True)
class Run:
    """A run directory and what it trains: its resolved config and its corpus. The same files whether made
    by `jaxvoice train` or from Python (`Run.create`), so either can continue what the other started.

    `new` is true for a run that `plan` resolved but `create` has not written yet."""

    path: Path
    config: config_lib.Config
    corpus: corpus_lib.Corpus
    new: bool = False

    @classmethod
    def create(
        cls, path: str | Path, config: config_lib.Config, corpus: corpus_lib.Corpus | str | Path
    ) -> Run:
        """A new run in `path` (absent or an empty folder): writes its config.toml and corpus.json. A corpus
        made in memory (`corpus.from_array`) is written into the run first, as RUN/corpus/."""
        corpus = corpus if isinstance(corpus, corpus_lib.Corpus) else _open_checked(corpus, None, "")
        run_dir = Path(path)
        _existing_run(run_dir, resume=False)  # refuses anything but an absent or empty folder
        train_streams(corpus.split("train"), config.train.batch_size, config.train.seq_length)
        if corpus.path is None:
            from jaxvoice import preparing

            preparing.write_corpus(corpus, run_dir / "corpus")
            corpus = _open_checked(run_dir / "corpus", None, "")
        run = cls(run_dir, config, corpus, new=True)
        create(run)
        return replace(run, new=False)

    @classmethod
    def open(cls, path: str | Path, *, data: str | Path | None = None, overrides: list[str] = ()) -> Run:
        """An existing run, to resume or read: its config.toml (with resumable `overrides`) and its corpus
        (from corpus.json, or `data` if it moved)."""
        run_dir = Path(path)
        if not is_run(run_dir):
            raise UserError(
                f"{run_dir} is not a jaxvoice run (no config.toml and corpus.json from jaxvoice train)"
            )
        return plan(run_dir, config_path=None, overrides=list(overrides), data=data, resume=True)

    @property
    def steps_per_epoch(self) -> int:
        return train_streams(
            self.corpus.split("train"), self.config.train.batch_size, self.config.train.seq_length
        ).steps

    @property
    def train_csv(self) -> Path:
        return self.path / "train.csv"

    @property
    def val_csv(self) -> Path:
        return self.path / "val.csv"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def samples_csv(self) -> Path:
        return self.path / "samples.csv"

    def checkpoint_meta(self, step: int, val_loss: float | None = None, wall_s: float = 0.0) -> dict:
        """The JSON saved with a checkpoint at `step`: what `jaxvoice eval`/`sample` need to use it alone
        (the config, the corpus meta) and what a resume needs to continue (the data cursor, the time)."""
        from jaxvoice import __version__

        steps_per_epoch = self.steps_per_epoch
        return {
            "config": config_lib.to_dict(self.config),
            "corpus": self.corpus.meta,
            "corpus_path": str(self.corpus.path),
            "step": step,
            "epoch": step / steps_per_epoch,
            "val_loss": val_loss,
            "cursor": {"epoch": step // steps_per_epoch, "batch": step % steps_per_epoch},
            "wall_s": wall_s,
            "jaxvoice_version": __version__,
        }

    def save(self, state, val_loss: float | None = None) -> None:
        """A checkpoint of a TrainState (e.g. from your own loop) that `jaxvoice eval`, `sample` and
        `train --resume` read like their own; `val_loss` (nats) ranks it for "best"."""
        from jaxvoice import checkpoint

        mngr = checkpoint.manager(self.path, keep=self.config.train.keep_checkpoints)
        try:
            checkpoint.save(mngr, state, self.checkpoint_meta(int(state.step), val_loss), val_loss)
        finally:
            mngr.close()

    def restore(self, which: str | int = "best"):
        """The params of one checkpoint ('best', 'latest' or a step) and what they mean (`Restored`)."""
        from jaxvoice import checkpoint

        return checkpoint.restore_for_inference(self.path, which)

    def checkpoints(self) -> list[int]:
        """The steps of the finished checkpoints."""
        from jaxvoice import checkpoint

        return checkpoint.available_steps(self.path)


def plan(
    run_dir: str | Path,
    *,
    config_path: str | None,
    overrides: list[str],
    data: str | None,
    resume: bool,
    primary: bool = True,
) -> Run:
    """Resolve the config and corpus of a new or resumed run, checking everything and writing nothing.

    `primary` is false on the processes after the first of a multi-process run: they must not race it."""
    run_dir = Path(run_dir)
    if not primary:  # process 0 checks and writes the run directory; the others only read
        if resume and is_run(run_dir):
            cfg = config_lib.apply_overrides(config_lib.load(run_dir / CONFIG_FILE), overrides)
            return Run(run_dir, cfg, open_run_corpus(run_dir, data))
        if data is None:
            raise UserError("no corpus given: add --data CORPUS_DIR (made by jaxvoice prepare)")
        cfg = config_lib.load(config_path, overrides)
        return Run(run_dir, cfg, _open_checked(data, None, ""), new=True)
    if _existing_run(run_dir, resume):
        saved = config_lib.load(run_dir / CONFIG_FILE)
        cfg = config_lib.apply_overrides(saved, overrides)
        if config_path is not None:
            changed = config_lib.differences(config_lib.load(config_path, overrides), cfg)
            if changed:
                raise UserError(
                    f"--config differs from the run's saved config.toml in {', '.join(changed)}; drop --config "
                    "to resume with the saved one, or start a new run with another --out"
                )
        forbidden = config_lib.differences(saved, cfg, resumable=False)
        if forbidden:
            raise UserError(
                f"cannot change {', '.join(forbidden)} when resuming (it would change what the steps compute); "
                "start a new run instead"
            )
        return Run(run_dir, cfg, open_run_corpus(run_dir, data))
    cfg = config_lib.load(config_path, overrides)
    if data is None:
        raise UserError("no corpus given: add --data CORPUS_DIR (made by jaxvoice prepare)")
    corpus = _open_checked(data, None, "")
    train_streams(corpus.split("train"), cfg.train.batch_size, cfg.train.seq_length)  # sizes that can work
    return Run(run_dir, cfg, corpus, new=True)


def create(plan: Run) -> None:
    """Write what a planned run needs before its first step: a new run's config.toml and corpus.json (its
    folder and missing parents made); a resumed run's config.toml again if a resumable key changed."""
    config_path = plan.path / CONFIG_FILE
    if not plan.new:
        if plan.config != config_lib.load(config_path):
            _write(config_path, config_lib.dumps(plan.config))
        return
    existed = plan.path.is_dir()
    made = [] if existed else files.missing_parents(plan.path / "x")
    try:
        try:
            plan.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {plan.path} ({e.strerror or e}): choose another --out") from None
        _write(config_path, config_lib.dumps(plan.config))
        info = dict(plan.corpus.meta, path=str(Path(plan.corpus.path).absolute()))
        _write(plan.path / CORPUS_FILE, json.dumps(info, indent=2))
    except BaseException:
        discard(plan.path, made if not existed else [])
        raise


def _write(path: Path, text: str) -> None:
    try:
        files.write_atomic(path, text)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}): choose another --out") from None


def started(run_dir: str | Path) -> bool:
    """Whether a run has logged a step (train.csv holds more than its header line)."""
    try:
        with open(Path(run_dir) / "train.csv", "rb") as f:
            return f.read(1 << 16).count(b"\n") > 1
    except OSError:
        return False


def discard(run_dir: Path, made: list[Path]) -> None:
    """Remove what `create` and a failed first start wrote into a new run (whose folder was absent or empty
    before), and the folders `made` for it; used when a new run fails before it saved anything."""
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    files.remove_made(made)


def setup(
    run_dir: str | Path,
    *,
    config_path: str | None,
    overrides: list[str],
    data: str | None,
    resume: bool,
    primary: bool = True,
) -> tuple[config_lib.Config, corpus_lib.Corpus, Path]:
    """`plan` and `create` in one: (config, corpus, run_dir) of a new or resumed run, ready to train."""
    planned = plan(
        run_dir, config_path=config_path, overrides=overrides, data=data, resume=resume, primary=primary
    )
    if primary:
        create(planned)
    return planned.config, planned.corpus, planned.path


def open_run_corpus(run_dir: str | Path, data: str | None = None) -> corpus_lib.Corpus:
    """The corpus a run trained on: `data` if given (checked by sha256), else the path in corpus.json."""
    info_path = Path(run_dir) / CORPUS_FILE
    try:
        info = files.read_json(info_path)
    except (OSError, ValueError):
        raise UserError(f"{info_path} is missing or not JSON; give the corpus with --data") from None
    if not isinstance(info, dict):
        raise UserError(f"{info_path} does not hold a JSON object; give the corpus with --data")
    if data is None and not isinstance(info.get("path"), str):
        raise UserError(f"{info_path} names no corpus path; give the corpus with --data")
    fix = "give this run's own corpus with --data"
    return _open_checked(data or info["path"], info.get("sha256"), fix)


def config_of(run_dir: str | Path) -> config_lib.Config:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a run directory (no config.toml); give --run a directory made by train"
        )
    return config_lib.load(path)
