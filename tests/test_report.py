"""report.py + `jaxvoice report`: a real run's report opened in headless Chromium, and what it does with
missing pieces, odd file names and bad input."""

from __future__ import annotations

import html.parser
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_jaxvoice

from jaxvoice import audio, audio_write, checkpoint, clips, corpus, report, synth, video

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
FAST = ["--set", "model.rnn_size=32", "--set", "train.batch_size=8", "--set", "train.seq_length=16"]
ODD_NAME = """step_40 <b>"odd" & 'name' &amp; #1?.wav"""  # HTML and URL specials in a sample's name


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A small real run: 12 s of the demo voice, 40 steps with checkpoints at 20 and 40, a sample of each."""
    root = tmp_path_factory.mktemp("report")
    wav = audio_write.write_wav(root / "voice.wav", synth.synthesize(12.0, seed=1), synth.RATE)
    corpus.prepare([wav], root / "corpus", rate=synth.RATE, quiet=True)
    run = root / "run"
    every = ["--set", "train.eval_every=20", "--set", "train.checkpoint_every=20"]
    run_jaxvoice(
        "train", "--config", "tiny", "--data", root / "corpus", "--out", run, *FAST, *every, "--steps", "40", "-q",
        check=True,
    )  # fmt: skip
    run_jaxvoice("sample", "--run", run, "--checkpoint", "all", "--seconds", "1.5", "-q", check=True)
    return run


class _Tags(html.parser.HTMLParser):
    """Every tag with its attributes, and the page's text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> _Tags:
    parser = _Tags()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.slow
def test_report_in_headless_chromium_loads_every_image_and_plays_every_sample(run_copy, tmp_path):
    from playwright.sync_api import sync_playwright  # pip install playwright; no browser download needed

    shutil.copy(run_copy / "samples" / "step_40.wav", run_copy / "samples" / ODD_NAME)
    small = ["--width", "320", "--height", "180", "--fps", "10", "--seconds", "0.5", "-q"]
    run_jaxvoice("video", "--run", run_copy, "--checkpoints", "20,40", *small, check=True)  # RUN/video.mp4
    run_jaxvoice("report", "--run", run_copy, check=True)
    page_path = run_copy / "report.html"
    wavs = sorted((run_copy / "samples").glob("*.wav")) + [run_copy / "report_files" / "corpus_excerpt.wav"]
    expected = {p.name: audio.probe(p).seconds for p in wavs}
    assert len(expected) == 4
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )  # no browser: the test fails
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate(
                "() => Array.from(document.images, i => [decodeURIComponent(i.src), i.complete, i.naturalWidth])"
            )
            durations = page.evaluate(
                """() => Promise.all(Array.from(document.querySelectorAll('audio'), a => new Promise(done => {
                       const report = () => done([decodeURIComponent(a.currentSrc), a.duration, a.error && a.error.code]);
                       if (a.readyState >= 1) return report();
                       a.addEventListener('loadedmetadata', report);
                       a.addEventListener('error', report);
                       a.load();
                   })))"""
            )
            videos = page.evaluate(
                """() => Promise.all(Array.from(document.querySelectorAll('video'), v => new Promise(done => {
                       v.muted = true;  // a muted video may play without a user's gesture
                       const report = () => done([decodeURIComponent(v.currentSrc), v.duration, v.videoWidth,
                                                  v.currentTime, v.webkitDecodedFrameCount, v.error && v.error.code]);
                       v.addEventListener('error', report);
                       v.addEventListener('timeupdate', () => { if (v.currentTime > 0.5) { v.pause(); report(); } });
                       v.play().catch(report);
                   })))"""
            )
            injected = page.evaluate("() => Array.from(document.querySelectorAll('b'), b => b.textContent)")
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    # 2 loss plots + the excerpt + one image per sample, each loaded with its real width.
    assert len(images) == 2 + 1 + 3, images
    for src, complete, width in images:
        assert complete and width > 0, src
    widths = {Path(src).name: width for src, _, width in images}
    assert widths["loss.png"] == 2000 and widths["corpus_excerpt.png"] == clips.IMAGE_SIZE[0]
    # An <audio> per sample in the checkpoint table (step 20 has 1, step 40 has 2) and per clip (4).
    assert len(durations) == 3 + 4
    for src, duration, error in durations:
        assert error is None and duration == pytest.approx(expected[Path(src).name], abs=0.01), src
    assert {Path(src).name for src, _, _ in durations} == set(expected)
    # The run's video: found by its relative src, and Chromium decodes and plays its H.264 frames.
    ((src, duration, width, played, decoded, error),) = videos
    assert src == (run_copy / "video.mp4").as_uri() and error is None, videos
    assert duration == pytest.approx(video.CARD_SECONDS + 2 * 0.5, abs=0.1) and width == 320
    assert played > 0.5 and decoded > 0
    assert all(url.startswith("file://") for url in requests), requests  # nothing from the network
    assert ODD_NAME in text and not [b for b in injected if "odd" in b]  # the name is text, not markup
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_the_page_is_self_contained_escaped_and_script_free(run_copy):
    shutil.copy(run_copy / "samples" / "step_40.wav", run_copy / "samples" / ODD_NAME)
    report.build(run_copy)
    assert "<video" not in (run_copy / "report.html").read_text()  # no video.mp4, no player
    (run_copy / "video.mp4").write_bytes(b"made by jaxvoice video")
    report.build(run_copy, force=True)
    page = parse(run_copy / "report.html")
    assert ("video", {"controls": None, "preload": "metadata", "src": "video.mp4"}) in page.tags
    links = [a[k] for _, a in page.tags for k in ("src", "href") if k in a]
    assert links and not [u for u in links if "://" in u or u.startswith("/") or u.startswith("..")]
    assert not [t for t, _ in page.tags if t in ("script", "iframe", "object", "link")]
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    # The odd name is text, never markup: the page's <b> elements are all our own figures.
    assert ODD_NAME in "".join(page.text)
    assert '<b>"odd"' not in (run_copy / "report.html").read_text()
    for link in links:  # every relative link names a file that exists
        from urllib.parse import unquote

        assert (run_copy / unquote(link)).is_file(), link


def test_report_never_imports_jax(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    code = (
        "import sys; from jaxvoice import report; report.build(sys.argv[1]); "
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'orbax', 'flax', 'optax')); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (run / "report.html").is_file()


def test_checkpoint_steps_match_orbax_without_jax(base_run):
    assert report.checkpoint_steps(base_run) == checkpoint.available_steps(base_run) == [20, 40]


def test_regenerating_replaces_the_report_and_drops_stale_images(run_copy):
    report.build(run_copy)
    files = run_copy / "report_files"
    assert (files / "sample_step_20.png").is_file()
    (run_copy / "samples" / "step_20.wav").unlink()
    first = (run_copy / "report.html").read_text()
    assert_user_error(run_jaxvoice("report", "--run", run_copy), "report.html exists", "--force")
    assert (run_copy / "report.html").read_text() == first  # refused: untouched
    report.build(run_copy, force=True)
    second = (run_copy / "report.html").read_text()
    assert "step_20.wav" in first and "samples/step_20.wav" not in second
    assert not (files / "sample_step_20.png").exists() and (files / "sample_step_40.png").is_file()
    assert "checkpoint steps without a sample: 20" in second
    assert not [p for p in run_copy.rglob(".*") if p.name.endswith(".tmp")]


def test_a_run_without_samples_or_corpus_still_gets_a_report_that_says_so(base_run, run_copy):
    shutil.rmtree(run_copy / "samples")
    info = (run_copy / "corpus.json").read_text()
    assert str(base_run.parent / "corpus") in info
    (run_copy / "corpus.json").write_text(
        info.replace(str(base_run.parent / "corpus"), "/nonexistent/corpus")
    )
    proc = run_jaxvoice("report", "--run", run_copy, check=True)
    assert proc.stdout.strip().splitlines()[-1] == str(run_copy / "report.html")
    assert "note: no samples yet" in proc.stdout and "cannot be opened" in proc.stdout
    page = (run_copy / "report.html").read_text()
    assert "no samples yet" in page and "no corpus excerpt" in page and "<audio" not in page
    assert 'src="plots/loss.png"' in page  # what exists is still there


def test_a_run_still_training_before_its_first_checkpoint(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    shutil.rmtree(run_copy / "samples")
    (run_copy / "val.csv").write_text("step,epoch,val_loss,val_bits\n")
    made = report.build(run_copy)
    assert any("no checkpoints yet" in n for n in made.notes)
    assert any("val.csv has a header but no" in n for n in made.notes)
    assert "No checkpoints yet" in made.path.read_text()


def test_bad_runs_are_one_line_errors(tmp_path):
    assert_user_error(run_jaxvoice("report", "--run", tmp_path / "nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_user_error(
        run_jaxvoice("report", "--run", tmp_path / "empty"), "not a run directory", "config.toml"
    )
    (tmp_path / "empty" / "run").mkdir()  # a demo folder: the run is inside it
    (tmp_path / "empty" / "run" / "config.toml").write_text("")
    proc = run_jaxvoice("report", "--run", tmp_path / "empty")
    assert_user_error(proc, "not a run directory", f"holds the run {tmp_path / 'empty' / 'run'}")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.toml").write_text("[model]\ncell = 'lstm'\n")
    assert_user_error(run_jaxvoice("report", "--run", fresh), "has not trained yet")
    (fresh / "config.toml").write_text("[model\n")
    assert_user_error(run_jaxvoice("report", "--run", fresh), "TOML")
    assert not (fresh / "report.html").exists()


def test_order0_entropy():
    assert clips.order0_bits(np.arange(256, dtype=np.uint8).repeat(3)) == pytest.approx(8.0)
    assert clips.order0_bits(np.full(100, 7, np.uint8)) == 0.0
    assert clips.order0_bits(np.array([1, 2, 1, 2, 3, 3, 3, 3], np.uint8)) == pytest.approx(1.5)


def test_spectrograms_share_one_calibrated_colour_scale(tmp_path):
    """dBFS: a full-scale sine peaks at 0 dB and one at a tenth of it at -20 dB; every image uses DB_RANGE."""
    rate = 11025
    t = np.arange(rate) / rate
    for amplitude, expected in [(1.0, 0.0), (0.1, -20.0)]:
        x = amplitude * np.sin(2 * np.pi * (1000 + 0.37) * t)
        db, n_fft, _ = clips.spectrogram_db(x, rate)
        bin_1000 = round(1000 * n_fft / rate)
        assert db[bin_1000 - 1 : bin_1000 + 2].max(axis=0).mean() == pytest.approx(expected, abs=1.5)
    loud, quiet = np.sin(2 * np.pi * 440 * t), 0.01 * np.sin(2 * np.pi * 440 * t)
    for x in (loud, quiet, np.zeros(rate // 3)):
        fig = clips.clip_figure(x.astype(np.float32), rate, "clip")
        spectrogram = [ax for ax in fig.axes if ax.images][0]
        assert spectrogram.images[0].get_clim() == clips.DB_RANGE
        assert [ax for ax in fig.axes if ax.lines or ax.collections][0].get_ylim() == (-1.0, 1.0)
