"""What one run's section of `jaxvoice video` shows, read from the run's files alone.

The checkpoints of a run are the steps it has a checkpoint folder or a sample `samples/step_N.wav` for
(training keeps only a few checkpoints, but their samples stay); `--checkpoints` chooses among them. The
facts on the section's opening card come from config.toml, corpus.json and train.csv, and the parameter
count from the config's model (`jax.eval_shape`: no weights are read). No checkpoint is opened here: a
step without a sample is listed in `missing`, for `checkpoint_samples` to make.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxvoice import audio, codec, csvlog, files, paths, report
from jaxvoice.corpus import duration_text
from jaxvoice.errors import UserError

_log = logging.getLogger(__name__)
SAMPLE = re.compile(r"step_([1-9][0-9]*|0)\.wav")  # the name `jaxvoice sample` gives a checkpoint's sample
EVERY = re.compile(r"every_([0-9]+)")


@dataclass(frozen=True)
class Logs:
    """A run's loss logs: every train.csv row, and the val.csv rows (maybe none)."""

    step: np.ndarray
    epoch: np.ndarray
    loss: np.ndarray  # nats
    wall_s: np.ndarray
    val_step: np.ndarray
    val_epoch: np.ndarray
    val_loss: np.ndarray  # nats


@dataclass(frozen=True)
class RunPlan:
    path: Path
    name: str  # the run's folder with its parent, as the report names it
    config: dict  # config.toml as written (shown as it is, even for a cell this process cannot build)
    corpus: dict  # corpus.json
    steps: list[int]  # the chosen checkpoints, in step order
    samples: dict[int, Path]  # the sample of each chosen step (made ones included, once made)
    missing: list[int]  # chosen steps with a checkpoint but no sample yet
    logs: Logs
    parameters: int | None  # None: the model cannot be built here (a cell of the user's: --import it)


def check_choice(text: str) -> str:
    """UserError unless `text` is `all`, `every_N` (N >= 1) or a comma-separated list of steps."""
    text = text.strip()
    match = EVERY.fullmatch(text)
    if text == "all" or (match and int(match.group(1)) >= 1):
        return text
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise UserError(
            f"--checkpoints must be all, every_N (e.g. every_5: every fifth checkpoint) or steps such as "
            f"200,1000,5000; got '{text}'"
        )
    return text


def choose_steps(run: Path, available: list[int], text: str) -> list[int]:
    """The steps `text` (see check_choice) picks from `available`. every_N keeps the first checkpoint, every
    N-th after it, and the last (where the video should end)."""
    text = check_choice(text)
    match = EVERY.fullmatch(text)
    if text == "all":
        return available
    if match:
        n = int(match.group(1))
        return sorted({*available[::n], available[-1]})
    wanted = sorted({int(p) for p in text.split(",")})
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise UserError(
            f"run {run} has no checkpoint or sample at step {', '.join(map(str, unknown))}; it has "
            f"{_list(available)} (for every N-th checkpoint give --checkpoints every_N)"
        )
    return wanted


def _list(steps: list[int]) -> str:
    if len(steps) <= 12:
        return ", ".join(map(str, steps))
    return f"{', '.join(map(str, steps[:5]))}, ... {', '.join(map(str, steps[-5:]))} ({len(steps)} steps)"


def name_of(run: Path) -> str:
    return "/".join(run.resolve().parts[-2:])


def _read_run_files(run: Path) -> tuple[dict, dict]:
    found = paths.kind(run)
    if found != "a folder":
        what = "does not exist" if found == "missing" else f"is {found}, not a folder"
        raise UserError(f"run directory {run} {what}; give --run a directory made by jaxvoice train")
    config_path, corpus_path = run / "config.toml", run / "corpus.json"
    if not config_path.is_file():
        raise UserError(
            f"{run} is not a run directory (no config.toml); give --run a directory made by jaxvoice train"
        )
    try:
        config = files.loads_toml(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(
            f"{config_path} does not read as TOML ({e}); it is not a jaxvoice run's config"
        ) from None
    try:
        corpus = files.read_json(corpus_path)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{run} is not a complete run: its corpus.json does not read ({getattr(e, 'strerror', None) or e})"
        ) from None
    if not isinstance(corpus, dict) or not isinstance(corpus.get("codec"), str):
        raise UserError(f"{corpus_path} does not describe a corpus; it is not a jaxvoice run's corpus.json")
    if corpus["codec"] not in codec.AUDIO_CODECS:
        raise UserError(f"run {run} learned a {corpus['codec']} corpus, not audio: there is nothing to hear")
    return config, corpus


def read_logs(run: Path) -> Logs:
    """train.csv (needed: the loss is what the video draws) and val.csv (optional)."""
    try:
        train, _ = csvlog.read_columns(run / "train.csv", ["step", "epoch", "loss", "wall_s"])
    except UserError as e:
        raise UserError(f"{e} (the video draws run {run}'s loss from its train.csv)") from None
    empty = np.zeros(0)
    val = {"step": empty, "epoch": empty, "val_loss": empty}
    if (run / "val.csv").is_file():
        with contextlib.suppress(csvlog.NoRowsError):  # no evaluation yet: the curve alone
            val, _ = csvlog.read_columns(run / "val.csv", ["step", "epoch", "val_loss"])
    return Logs(train["step"], train["epoch"], train["loss"], train["wall_s"], val["step"], val["epoch"],
                val["val_loss"])  # fmt: skip


def parameter_count(config_path: Path) -> int | None:
    """The number of parameters of the run's model, from its shapes alone (no weights are read)."""
    import jax

    from jaxvoice import config as config_lib
    from jaxvoice import model

    try:
        cfg = config_lib.load(config_path)
    except UserError as e:  # e.g. a cell registered by a module of the user's
        _log.warning(
            f"{config_path}: the model cannot be built here ({e}); its card shows no parameter count"
        )
        return None
    shapes = jax.eval_shape(lambda: model.init_params(jax.random.key(0), cfg.model))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def plan_run(run_dir: str | Path, checkpoints: str = "all") -> RunPlan:
    """Read and check one run; UserError (naming the run) for a folder that is not a run, a run with nothing
    to show, a step it does not have, or a sample that does not read."""
    run = Path(run_dir)
    config, corpus = _read_run_files(run)
    sample_dir = run / "samples"
    try:
        names = [p.name for p in sample_dir.iterdir()] if sample_dir.is_dir() else []
    except OSError as e:
        raise UserError(f"cannot list {sample_dir}: {e.strerror or e}") from None
    sampled = {int(m.group(1)) for n in names if (m := SAMPLE.fullmatch(n))}
    available = sorted(sampled | set(report.checkpoint_steps(run)))
    if not available:
        raise UserError(
            f"run {run} has no checkpoints and no samples yet: train it first (jaxvoice train ... --out {run})"
        )
    steps = choose_steps(run, available, checkpoints)
    samples = {s: sample_dir / f"step_{s}.wav" for s in steps if s in sampled}
    for path in samples.values():
        audio.probe(path)  # a sample that does not read is named now, before anything is made
    logs = read_logs(run)
    parameters = parameter_count(run / "config.toml")
    missing = [s for s in steps if s not in samples]
    return RunPlan(run, name_of(run), config, corpus, steps, samples, missing, logs, parameters)


def card_rows(plan: RunPlan) -> list[tuple[str, str]]:
    """The facts on a run's opening card, as (label, value) rows; whatever a file lacks shows as '?'."""
    model = plan.config.get("model", {}) if isinstance(plan.config.get("model"), dict) else {}
    train = plan.config.get("train", {}) if isinstance(plan.config.get("train"), dict) else {}
    corpus = plan.corpus
    rate, length = corpus.get("rate"), corpus.get("length")
    where = Path(str(corpus.get("path", "?"))).name
    sources = corpus.get("sources") if isinstance(corpus.get("sources"), list) else []
    first = sources[0].get("path") if sources and isinstance(sources[0], dict) else None
    if first:
        more = f" + {len(sources) - 1} more" if len(sources) > 1 else ""
        where += f" ({Path(str(first)).name}{more})"
    seconds = (
        duration_text(length / rate)
        if isinstance(length, int) and isinstance(rate, int) and rate > 0
        else "?"
    )
    logs = plan.logs
    shown = plan.steps if len(plan.steps) <= 8 else [*plan.steps[:3], "...", *plan.steps[-3:]]
    kind = f" ({model['kind']})" if model.get("kind", "stack") != "stack" else ""
    return [
        ("cell", f"{model.get('cell', '?')}{kind}"),
        ("layers × size", f"{model.get('num_layers', '?')} × {model.get('rnn_size', '?')}"),
        ("wordvec", str(model.get("wordvec_size", "?"))),
        ("parameters", "?" if plan.parameters is None else f"{plan.parameters:,}"),
        ("batch × seq", f"{train.get('batch_size', '?')} × {train.get('seq_length', '?')}"),
        ("corpus", paths.shown(where)),
        ("audio", f"{seconds} at {rate} Hz, {corpus.get('codec')} 8-bit"),
        ("trained", f"{int(logs.step[-1]):,} steps in {duration_text(float(logs.wall_s[-1]))}"),
        ("checkpoints", f"{len(plan.steps)}: step {', '.join(map(str, shown))}"),
    ]
