"""`jaxvoice report`: one HTML page per run to look at and listen to, from the run's files alone.

RUN/report.html links only relative paths inside the run directory: plots/ (the loss curves, drawn by
plot.plot_run), samples/ (the WAVs, each with an <audio> player) and report_files/ (a waveform +
spectrogram image per sample and for a corpus excerpt, and the excerpt as a WAV). So the run folder can be
copied anywhere and opened without a network; the page has no script at all.

The images are `jaxvoice.clips`' (one analysis and one colour scale for all). Reading only files
(config.toml, corpus.json, train.csv, val.csv, the corpus's data.u8, samples/), this module never imports
JAX. Regenerating is the expected use: report.html and its images are replaced atomically.
"""

from __future__ import annotations

import datetime
import html
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from jaxvoice import __version__, audio, clips, codec, csvlog, files, paths, plot
from jaxvoice.errors import UserError

REPORT_FILE = "report.html"
FILES_DIR = "report_files"
VIDEO_FILE = "video.mp4"  # `jaxvoice video`'s default output for one run: shown when it is there
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


def _corpus_data(meta: dict, notes: list[str]) -> np.ndarray | None:
    """The corpus's data.u8, memory-mapped, if its path in corpus.json still holds it."""
    path = Path(str(meta.get("path", ""))) / "data.u8"
    if not path.is_file():
        notes.append(f"the corpus data {path} is not there (moved or deleted): no corpus excerpt or entropy")
        return None
    if path.stat().st_size != meta.get("length"):
        notes.append(f"{path} does not have the length corpus.json records: no corpus excerpt or entropy")
        return None
    if meta["length"] == 0:
        return None
    return np.memmap(path, dtype=np.uint8, mode="r")


# ---- HTML --------------------------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; background: #fafafa;
       margin: 0; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 20px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 34px 0 10px; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin: 0 0 18px; font-size: 13px; }
.notes { background: #fff8e1; border: 1px solid #f0d060; border-radius: 6px; padding: 8px 14px; }
.notes ul { margin: 4px 0; padding-left: 20px; }
.figures { display: flex; flex-wrap: wrap; gap: 10px; }
.figure { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.figure b { display: block; font-size: 20px; } .figure span { color: #666; font-size: 12px; }
img { max-width: 100%; height: auto; display: block; background: #fff; border: 1px solid #e3e3e3; }
table { border-collapse: collapse; background: #fff; font-size: 14px; }
th, td { border: 1px solid #e3e3e3; padding: 4px 10px; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #eef7ee; }
.clip { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.clip h3 { margin: 0 0 6px; font-size: 15px; } .clip p { margin: 0 0 6px; color: #555; font-size: 13px; }
audio { width: 100%; max-width: 480px; height: 36px; } video { width: 100%; display: block; background: #000; } td audio { width: 260px; }
.player { display: flex; align-items: center; justify-content: space-between; gap: 10px; }
.tables { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
code { font-size: 13px; background: #f0f0f0; padding: 1px 4px; border-radius: 3px; }
"""


def _e(value) -> str:
    return html.escape(paths.shown(value), quote=True)


def _url(relative: str) -> str:
    """A relative path as an escaped URL for an attribute (spaces, '#', '?' and quotes in names survive, and
    a name that is not UTF-8 is percent-encoded byte for byte, so the browser opens that very file)."""
    return _e(quote(relative.encode("utf-8", "surrogateescape")))


def _bits(nats: float | None) -> str:
    return "—" if nats is None or not math.isfinite(nats) else f"{nats / math.log(2):.4f}"


def _table(rows: list[tuple[str, str]], head: str | None = None) -> str:
    caption = f"<tr><th colspan=2>{_e(head)}</th></tr>" if head else ""
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{caption}{body}</table>"


def _clip_html(
    title: str, detail: str, audio_rel: str | None, image_rel: str | None, file_rel: str | None = None
) -> str:
    parts = [f'<div class="clip"><h3>{_e(title)}</h3><p>{_e(detail)}</p>']
    if file_rel:
        parts.append(f'<p><a href="{_url(file_rel)}">{_e(file_rel)}</a></p>')
    if audio_rel:
        parts.append(f'<audio controls preload="metadata" src="{_url(audio_rel)}"></audio>')
    if image_rel:
        parts.append(f'<img src="{_url(image_rel)}" alt="waveform and spectrogram of {_e(title)}" '
                     f'width="{clips.IMAGE_SIZE[0]}" height="{clips.IMAGE_SIZE[1]}">')  # fmt: skip
    return "".join(parts) + "</div>"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)} min {secs:.1f} s" if minutes else f"{secs:.2f} s"


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
    audio.write_wav(
        files_dir / "corpus_excerpt.wav", symbols if meta["codec"] == "linear" else x, meta["rate"]
    )
    clips.draw_clip(x, meta["rate"], files_dir / "corpus_excerpt.png", "corpus excerpt")
    made.update({"corpus_excerpt.wav", "corpus_excerpt.png"})
    detail = (
        f"{len(symbols) / meta['rate']:.2f} s from {where}, as the network sees it ({meta['codec']} 8-bit)"
    )
    return _clip_html(
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
            what.append(f"val {_bits(val[step][1])} bits/sample")
        if path.suffix.lower() not in audio.AUDIO_EXTENSIONS:  # e.g. a bytes corpus's .bin
            detail = "; ".join([*what, "raw bytes, not audio"])
            blocks.append(_clip_html(path.name, detail, None, None, file_rel=rel))
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
        what.append(f"{_duration(seconds)} at {rate} Hz{shown}")
        blocks.append(_clip_html(path.name, "; ".join(what), rel, f"{FILES_DIR}/{image}"))
        playable[path] = True
    return "".join(blocks), playable


def _checkpoint_table(steps: list[int], val: dict, samples: list[Path], playable: dict) -> str:
    scored = [s for s in steps if s in val and math.isfinite(val[s][1])]
    best = min(scored, key=lambda s: val[s][1]) if scored else None
    rows = []
    for step in steps:
        epoch, loss = val.get(step, (None, None))
        players = "".join(
            f'<div class=player>{_e(p.name)}<audio controls preload="metadata" src="{_url("samples/" + p.name)}"></audio></div>'
            if playable.get(p) else f'<div><a href="{_url("samples/" + p.name)}">{_e(p.name)}</a></div>'
            for p in samples if _sample_step(p) == step
        )  # fmt: skip
        nats = "—" if loss is None else f"{loss:.4f}"
        mark = " (best)" if step == best else ""
        rows.append(
            f"<tr{' class=best' if step == best else ''}><td class=num>{step}{mark}</td>"
            f"<td class=num>{'—' if epoch is None else f'{epoch:.2f}'}</td><td class=num>{nats}</td>"
            f"<td class=num>{_bits(loss)}</td><td>{players or 'no sample'}</td></tr>"
        )
    head = (
        "<tr><th>step</th><th>epoch</th><th>val loss (nats)</th><th>val bits/sample</th><th>samples</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


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
            drawn = plot.plot_run(run, title=f"{_name(run)}: loss")
            plots = "".join(
                f'<img src="{_url(p.relative_to(run).as_posix())}" alt="loss against step ({p.stem})">'
                f'<p class="sub">{_e(p.relative_to(run).as_posix())}</p>'
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
    unsampled = [s for s in steps if not any(_sample_step(p) == s for p in samples)]
    if samples and unsampled:
        notes.append(f"checkpoint steps without a sample: {', '.join(map(str, unsampled))}")

    page = _page(run, config, info, train, val, steps, entropy, notes, plots, corpus_clip, sample_blocks,
                 _checkpoint_table(steps, val, samples, playable) if steps else "<p>No checkpoints yet.</p>")  # fmt: skip
    out = run / REPORT_FILE
    try:
        files.write_atomic(out, page)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}; check free space and permissions") from None
    for stale in files_dir.iterdir():  # images and excerpts of an earlier report that this one does not use
        if stale.is_file() and stale.name not in made and stale.suffix in (".png", ".wav"):
            stale.unlink(missing_ok=True)
    return Report(out, notes)


def _figures(train, val: dict, steps: list[int], entropy: dict) -> str:
    items = []
    if train is not None:
        tail = train["loss"][-100:]
        items.append((f"{int(train['step'][-1]):,}", "steps trained"))
        items.append((_duration(float(train["wall_s"][-1])), "training time"))
        items.append((_bits(float(np.mean(tail))), f"train bits/sample (mean of the last {len(tail)} steps)"))
    kept = [s for s in steps if s in val and math.isfinite(val[s][1])]
    if kept:
        best = min(kept, key=lambda s: val[s][1])
        items.append((_bits(val[best][1]), f"best val bits/sample (step {best})"))
        if "val" in entropy:
            gap = entropy["val"] - val[best][1] / math.log(2)
            items.append((f"{entropy['val']:.4f}", "order-0 entropy of val, bits/sample"))
            items.append((f"{gap:+.3f}", "bits/sample the network saves over order-0"))
    return "".join(f'<div class="figure"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in items)


def _corpus_rows(info: dict | None, entropy: dict) -> list[tuple[str, str]]:
    if info is None:
        return [("corpus", "unknown (no corpus.json)")]
    rows = [
        ("path", info.get("path", "?")),
        ("codec", info.get("codec", "?")),
        ("rate", f"{info.get('rate')} Hz"),
    ]
    # corpus.json is shown as it is: any value of any type gives a row, never a crash.
    length, rate, splits, sources = (info.get(k) for k in ("length", "rate", "splits", "sources"))
    if _whole(length):
        seconds = f" = {_duration(length / rate)}" if _whole(rate) and rate > 0 else ""
        rows.append(("length", f"{length:,} symbols{seconds}"))
    for split, span in splits.items() if isinstance(splits, dict) else ():
        if not (isinstance(span, list) and len(span) == 2 and all(map(_whole, span))):
            rows.append((f"{split} split", repr(span)[:80]))
            continue
        start, end = span
        extra = f"; order-0 entropy {entropy[split]:.4f} bits/sample" if split in entropy else ""
        rows.append((f"{split} split", f"[{start:,}, {end:,}): {end - start:,} symbols{extra}"))
    sources = sources if isinstance(sources, list) else []
    rows.append(("sources", f"{len(sources)} file{'s' * (len(sources) != 1)}"))
    rows += [("", str(s.get("path", "?") if isinstance(s, dict) else s)[:300]) for s in sources[:5]]
    if len(sources) > 5:
        rows.append(("", f"... and {len(sources) - 5} more"))
    rows.append(("sha256", str(info.get("sha256", "?"))))
    return rows


def _video(run: Path) -> str:
    """RUN/video.mp4 (made by `jaxvoice video`) in a player, when the run has one."""
    if not (run / VIDEO_FILE).is_file():
        return ""
    return (
        f'<h2>Video</h2><video controls preload="metadata" src="{_url(VIDEO_FILE)}"></video>'
        f'<p class="sub">{VIDEO_FILE}: each checkpoint\'s sample over the loss curves (jaxvoice video)</p>'
    )


def _whole(value) -> bool:
    return type(value) is int


def _name(run: Path) -> str:
    """The run's folder with its parent (runs/NAME, demo/run): enough to tell runs apart."""
    return "/".join(run.resolve().parts[-2:])


def _page(
    run, config, info, train, val, steps, entropy, notes, plots, corpus_clip, sample_blocks, table
) -> str:
    name = _name(run)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    notes_html = ""
    if notes:
        notes_html = '<div class="notes"><b>Notes: what this report could not show</b><ul>' + "".join(
            f"<li>{_e(n)}</li>" for n in notes
        ) + "</ul></div>"  # fmt: skip
    config_tables = "".join(
        _table([(k, v) for k, v in values.items()], section) for section, values in config.items() if isinstance(values, dict)
    )  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>jaxvoice run {_e(name)}</title><style>{_CSS}</style></head>
<body><main>
<h1>jaxvoice run <code>{_e(name)}</code></h1>
<p class="sub">{_e(run.resolve())} — report made {_e(now)} by jaxvoice {_e(__version__)}</p>
{notes_html}
<div class="figures">{_figures(train, val, steps, entropy)}</div>
{_video(run)}
<h2>Loss</h2>
{plots or "<p>No loss plots (see above).</p>"}
<h2>Checkpoints</h2>
{table}
<h2>Listen and look</h2>
<p class="sub">Every spectrogram: Hann window of ~46 ms, 75% overlap, colours from {clips.DB_RANGE[0]:g} to {clips.DB_RANGE[1]:g} dBFS
(0 dBFS = a full-scale sine); every waveform on the same -1..1 axis. So they compare directly.</p>
{corpus_clip}
{sample_blocks or "<p>No samples yet.</p>"}
<h2>Config</h2>
<div class="tables">{config_tables}</div>
<h2>Corpus</h2>
{_table(_corpus_rows(info, entropy))}
</main></body></html>
"""
