"""The report's HTML: the page, its style, and the small pieces (figures, tables, clips, the video player)
that `jaxvoice.report` fills from a run's files. String building: nothing is written here, and
only the video's presence is looked up."""

from __future__ import annotations

import datetime
import html
import math
from pathlib import Path
from urllib.parse import quote

import numpy as np

from jaxvoice import __version__, clips, paths
from jaxvoice.corpus import duration_text

VIDEO_FILE = "video.mp4"  # `jaxvoice video`'s default output for one run: shown when it is there


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


def escape(value) -> str:
    return html.escape(paths.shown(value), quote=True)


def url(relative: str) -> str:
    """A relative path as an escaped URL for an attribute (spaces, '#', '?' and quotes in names survive, and
    a name that is not UTF-8 is percent-encoded byte for byte, so the browser opens that very file)."""
    return escape(quote(relative.encode("utf-8", "surrogateescape")))


def bits(nats: float | None) -> str:
    return "—" if nats is None or not math.isfinite(nats) else f"{nats / math.log(2):.4f}"


def _table(rows: list[tuple[str, str]], head: str | None = None) -> str:
    caption = f"<tr><th colspan=2>{escape(head)}</th></tr>" if head else ""
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{caption}{body}</table>"


def clip(
    title: str, detail: str, audio_rel: str | None, image_rel: str | None, file_rel: str | None = None
) -> str:
    parts = [f'<div class="clip"><h3>{escape(title)}</h3><p>{escape(detail)}</p>']
    if file_rel:
        parts.append(f'<p><a href="{url(file_rel)}">{escape(file_rel)}</a></p>')
    if audio_rel:
        parts.append(f'<audio controls preload="metadata" src="{url(audio_rel)}"></audio>')
    if image_rel:
        parts.append(f'<img src="{url(image_rel)}" alt="waveform and spectrogram of {escape(title)}" '
                     f'width="{clips.IMAGE_SIZE[0]}" height="{clips.IMAGE_SIZE[1]}">')  # fmt: skip
    return "".join(parts) + "</div>"


def _figures(train, val: dict, steps: list[int], entropy: dict) -> str:
    items = []
    if train is not None:
        tail = train["loss"][-100:]
        items.append((f"{int(train['step'][-1]):,}", "steps trained"))
        items.append((duration_text(float(train["wall_s"][-1])), "training time"))
        items.append((bits(float(np.mean(tail))), f"train bits/sample (mean of the last {len(tail)} steps)"))
    kept = [s for s in steps if s in val and math.isfinite(val[s][1])]
    if kept:
        best = min(kept, key=lambda s: val[s][1])
        items.append((bits(val[best][1]), f"best val bits/sample (step {best})"))
        if "val" in entropy:
            gap = entropy["val"] - val[best][1] / math.log(2)
            items.append((f"{entropy['val']:.4f}", "order-0 entropy of val, bits/sample"))
            items.append((f"{gap:+.3f}", "bits/sample the network saves over order-0"))
    return "".join(f'<div class="figure"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for v, k in items)


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
        seconds = f" = {duration_text(length / rate)}" if _whole(rate) and rate > 0 else ""
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
        f'<h2>Video</h2><video controls preload="metadata" src="{url(VIDEO_FILE)}"></video>'
        f'<p class="sub">{VIDEO_FILE}: each checkpoint\'s sample over the loss curves (jaxvoice video)</p>'
    )


def _whole(value) -> bool:
    return type(value) is int


def run_name(run: Path) -> str:
    """The run's folder with its parent (runs/NAME, demo/run): enough to tell runs apart."""
    return "/".join(run.resolve().parts[-2:])


def page(
    run, config, info, train, val, steps, entropy, notes, plots, corpus_clip, sample_blocks, table
) -> str:
    name = run_name(run)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    notes_html = ""
    if notes:
        notes_html = '<div class="notes"><b>Notes: what this report could not show</b><ul>' + "".join(
            f"<li>{escape(n)}</li>" for n in notes
        ) + "</ul></div>"  # fmt: skip
    config_tables = "".join(
        _table([(k, v) for k, v in values.items()], section) for section, values in config.items() if isinstance(values, dict)
    )  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>jaxvoice run {escape(name)}</title><style>{_CSS}</style></head>
<body><main>
<h1>jaxvoice run <code>{escape(name)}</code></h1>
<p class="sub">{escape(run.resolve())} — report made {escape(now)} by jaxvoice {escape(__version__)}</p>
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


def checkpoint_table(
    steps: list[int], val: dict, samples_by_step: dict[int, list[Path]], playable: dict
) -> str:
    """Each checkpoint's step, epoch and val loss, with a player for each of its samples (the best row marked)."""
    scored = [s for s in steps if s in val and math.isfinite(val[s][1])]
    best = min(scored, key=lambda s: val[s][1]) if scored else None
    rows = []
    for step in steps:
        epoch, loss = val.get(step, (None, None))
        players = "".join(
            f'<div class=player>{escape(p.name)}<audio controls preload="metadata" src="{url("samples/" + p.name)}"></audio></div>'
            if playable.get(p) else f'<div><a href="{url("samples/" + p.name)}">{escape(p.name)}</a></div>'
            for p in samples_by_step.get(step, [])
        )  # fmt: skip
        nats = "—" if loss is None else f"{loss:.4f}"
        mark = " (best)" if step == best else ""
        rows.append(
            f"<tr{' class=best' if step == best else ''}><td class=num>{step}{mark}</td>"
            f"<td class=num>{'—' if epoch is None else f'{epoch:.2f}'}</td><td class=num>{nats}</td>"
            f"<td class=num>{bits(loss)}</td><td>{players or 'no sample'}</td></tr>"
        )
    head = (
        "<tr><th>step</th><th>epoch</th><th>val loss (nats)</th><th>val bits/sample</th><th>samples</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"
