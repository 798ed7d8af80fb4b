"""`jaxvoice report`: one HTML page per run to look at and listen to, from the run's files alone.

RUN/report.html links only relative paths inside the run directory: plots/ (the loss curves, drawn by
plot.plot_run), samples/ (the WAVs, each with an <audio> player) and report_files/ (a waveform +
spectrogram image per sample and for a corpus excerpt, and the excerpt as a WAV). So the run folder can be
copied anywhere and opened without a network; the page has no script at all.

The page is `jaxvoice.report_html`'s, the images `jaxvoice.clips`' (one analysis and one colour scale for
all). Reading only files (config.toml, corpus.json, train.csv, val.csv, the corpus's data.u8, samples/), this module never imports
JAX. Regenerating is the expected use: report.html and its images are replaced atomically.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxvoice import audio, audio_write, clips, codec, csvlog, files, paths, plot, report_html
from jaxvoice.errors import UserError

REPORT_FILE = "report.html"
FILES_DIR = "report_files"
EXCERPT_SECONDS = 4.0  # of the corpus, from the start of its val split
MAX_SHOW_SECONDS = 10.0  # of each sample drawn (the player plays all of it)
_STEP = re.compile(r"(?:^|[^0-9A-Za-z])step_(\d+)(?![0-9])")  # step_40.wav, best_step_40_10s.wav


@dataclass(frozen=True)
class Report:
    path: Path
    notes: list[str]  # what is missing or could not be shown


# ---- reading the run ---------------------------------------------------------------------------------------


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the finished checkpoints, from the folder names alone (orbax names a step's folder by its
    number and renames it there only when it is complete; unfinished saves have a suffix)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def _read_csv(path: Path, columns: list[str], notes: list[str]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        notes.append(f"no {path.name} yet")
        return None
    try:
        data, skipped = csvlog.read_columns(path, columns)
    except UserError as e:
        notes.append(str(e))
        return None
    if skipped:
        notes.append(f"{path.name}: {skipped} unreadable row{'s' * (skipped != 1)} left out")
    return data


def _read_json(path: Path, notes: list[str]) -> dict | None:
    try:
        value = files.read_json(path)
    except FileNotFoundError:
        notes.append(f"no {path.name}: the corpus is unknown")
        return None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON, or nested too deeply
        notes.append(f"{path.name} does not read as JSON ({e}): the corpus is unknown")
        return None
    if not isinstance(value, dict):
        notes.append(f"{path.name} does not hold a JSON object: the corpus is unknown")
        return None
    return value


def _sample_step(path: Path) -> int | None:
    match = _STEP.search(path.stem)
    return int(match.group(1)) if match else None


def _safe_name(stem: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "sample"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


# ---- the report --------------------------------------------------------------------------------------------


def _open_corpus(run: Path, notes: list[str]):
    """The run's corpus (by the path in corpus.json) if it is still there and the same; else None + a note."""
    from jaxvoice import corpus as corpus_lib

    info = _read_json(run / "corpus.json", notes)
    if info is None:
        return None, None
    try:
        corpus = corpus_lib.open_corpus(str(info.get("path", "")))
    except UserError as e:
        notes.append(f"the corpus cannot be opened ({e}): no corpus excerpt and no order-0 entropy")
        return info, None
    if corpus.meta.get("sha256") != info.get("sha256"):
        notes.append(
            f"the corpus at {corpus.path} is not the one this run trained on (sha256 differs): no excerpt"
        )
        return info, None
    return info, corpus


def _corpus_clip(corpus, files_dir: Path, made: set[str], notes: list[str]) -> str:
    meta = corpus.meta
    if meta["codec"] not in codec.AUDIO_CODECS:
        notes.append("the corpus is raw bytes, not audio: no excerpt to play or draw")
        return ""
    start = meta["splits"]["val"][0] if len(corpus.split("val")) else 0
    where = "the start of the val split" if start else "the start of the corpus"
    symbols = np.array(corpus.data[start : start + int(EXCERPT_SECONDS * meta["rate"])])
    x = codec.decode(meta["codec"], symbols)
    audio_write.write_wav(
        files_dir / "corpus_excerpt.wav", symbols if meta["codec"] == "linear" else x, meta["rate"]
    )
    clips.draw_clip(x, meta["rate"], files_dir / "corpus_excerpt.png", "corpus excerpt")
    made.update({"corpus_excerpt.wav", "corpus_excerpt.png"})
    detail = (
        f"{len(symbols) / meta['rate']:.2f} s from {where}, as the network sees it ({meta['codec']} 8-bit)"
    )
    return report_html.clip(
        "Corpus excerpt", detail, f"{FILES_DIR}/corpus_excerpt.wav", f"{FILES_DIR}/corpus_excerpt.png"
    )


def _sample_clips(samples: list[Path], val: dict, files_dir: Path, made: set[str], notes: list[str]):
    """A clip (player + image) per sample; returns the HTML and, per sample, whether it plays."""
    blocks, playable = [], {}
    names: set[str] = set()
    for path in samples:
        rel = f"samples/{path.name}"
        step = _sample_step(path)
        what = [f"checkpoint step {step}"] if step is not None else []
        if step in val:
            what.append(f"val {report_html.bits(val[step][1])} bits/sample")
        if path.suffix.lower() not in audio.AUDIO_EXTENSIONS:  # e.g. a bytes corpus's .bin
            detail = "; ".join([*what, "raw bytes, not audio"])
            blocks.append(report_html.clip(path.name, detail, None, None, file_rel=rel))
            playable[path] = False
            continue
        try:
            x, rate, seconds = clips.read_head(path, MAX_SHOW_SECONDS)
        except UserError as e:
            notes.append(f"{rel} cannot be shown: {e}")
            playable[path] = False
            continue
        image = f"sample_{_safe_name(path.stem, names)}.png"
        clips.draw_clip(x, rate, files_dir / image, path.name)
        made.add(image)
        shown = "" if seconds <= MAX_SHOW_SECONDS else f", the image shows the first {MAX_SHOW_SECONDS:g} s"
        what.append(f"{report_html.duration_text(seconds)} at {rate} Hz{shown}")
        blocks.append(report_html.clip(path.name, "; ".join(what), rel, f"{FILES_DIR}/{image}"))
        playable[path] = True
    return "".join(blocks), playable


def build(run_dir: str | os.PathLike, force: bool = False) -> Report:
    """Write RUN/report.html (and plots/, report_files/) from what the run holds; returns it and what is missing.

    An existing report.html is replaced only with `force` (the user may have kept or edited it)."""
    run = Path(run_dir)
    found = paths.kind(run)
    if found != "a folder":
        what = "does not exist" if found == "missing" else f"is {found}, not a folder"
        raise UserError(f"run directory {run} {what}; give --run a directory made by jaxvoice train")
    found = paths.kind(run / REPORT_FILE)
    if found not in ("missing", "a file"):
        raise UserError(f"{run / REPORT_FILE} is {found}; move it away, the report is written there")
    if found == "a file" and not force:
        raise UserError(f"{run / REPORT_FILE} exists; add --force to write it again")
    config_path = run / "config.toml"
    if not config_path.is_file():
        inside = sorted(p.parent for p in run.glob("*/config.toml"))  # e.g. a demo folder: its run is run/
        hint = f" (it holds the run {inside[0]})" if inside else ""
        raise UserError(
            f"{run} is not a run directory (no config.toml){hint}; give --run a directory made by jaxvoice train"
        )
    try:
        config = files.loads_toml(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not TOML, or nested too deeply
        raise UserError(
            f"{config_path} does not read as TOML ({e}); it is not a jaxvoice run's config"
        ) from None
    notes: list[str] = []
    train = _read_csv(run / "train.csv", ["step", "loss", "wall_s"], notes)
    steps = checkpoint_steps(run)
    if train is None and not steps:
        raise UserError(
            f"run {run} has not trained yet (no rows in train.csv, no checkpoints): train it first "
            f"(jaxvoice train ... --out {run})"
        )
    val_rows = _read_csv(run / "val.csv", ["step", "epoch", "val_loss"], notes)
    val = {}
    if val_rows is not None:
        val = {
            int(s): (e, v)
            for s, e, v in zip(val_rows["step"], val_rows["epoch"], val_rows["val_loss"], strict=True)
        }
    if not steps:
        notes.append("no checkpoints yet: training saves one every train.checkpoint_every steps")
    files_dir = run / FILES_DIR
    new_dir = not files_dir.exists()
    try:
        files_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create {files_dir}: {e.strerror or e}; check the run directory's permissions"
        ) from None
    try:
        return _build(run, config, notes, train, steps, val, files_dir)
    except BaseException:
        if new_dir:  # made by this report: holds only its images
            shutil.rmtree(files_dir, ignore_errors=True)
        raise


def _build(run: Path, config: dict, notes: list[str], train, steps: list[int], val: dict, files_dir: Path):
    """The part of `build` that writes: images into `files_dir`, then report.html."""
    made: set[str] = set()

    plots = ""
    if train is not None:
        try:
            drawn = plot.plot_run(run, title=f"{report_html.run_name(run)}: loss")
            plots = "".join(
                f'<img src="{report_html.url(p.relative_to(run).as_posix())}" alt="loss against step ({p.stem})">'
                f'<p class="sub">{report_html.escape(p.relative_to(run).as_posix())}</p>'
                for p in drawn.paths
            )
        except UserError as e:
            notes.append(f"no loss plots: {e}")

    info, corpus = _open_corpus(run, notes)
    entropy = {}
    corpus_clip = ""
    if corpus is not None:
        entropy = {s: clips.order0_bits(corpus.split(s)) for s in ("val", "test") if len(corpus.split(s))}
        corpus_clip = _corpus_clip(corpus, files_dir, made, notes)

    sample_dir = run / "samples"
    try:
        entries = list(sample_dir.iterdir()) if sample_dir.is_dir() else []
    except OSError as e:
        notes.append(f"{sample_dir} cannot be listed ({e.strerror or e})")
        entries = []
    samples = sorted(
        (p for p in entries if p.is_file() and not p.name.startswith(".")),
        key=lambda p: (_sample_step(p) is None, _sample_step(p) or 0, p.name),
    )  # fmt: skip
    if not samples:
        notes.append(
            f"no samples yet: make them with jaxvoice sample --run {run} --checkpoint all --seconds 2"
        )
    sample_blocks, playable = _sample_clips(samples, val, files_dir, made, notes)
    by_step: dict[int, list[Path]] = {}
    for p in samples:
        by_step.setdefault(_sample_step(p), []).append(p)
    unsampled = [s for s in steps if s not in by_step]
    if samples and unsampled:
        notes.append(f"checkpoint steps without a sample: {', '.join(map(str, unsampled))}")

    table = (
        report_html.checkpoint_table(steps, val, by_step, playable) if steps else "<p>No checkpoints yet.</p>"
    )
    page = report_html.page(
        run, config, info, train, val, steps, entropy, notes, plots, corpus_clip, sample_blocks, table
    )
    out = run / REPORT_FILE
    try:
        files.write_atomic(out, page)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}; check free space and permissions") from None
    for stale in files_dir.iterdir():  # images and excerpts of an earlier report that this one does not use
        if stale.is_file() and stale.name not in made and stale.suffix in (".png", ".wav"):
            stale.unlink(missing_ok=True)
    return Report(out, notes)
