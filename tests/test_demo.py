"""demo.py + `jaxvoice demo`: the synthetic voice (determinism, formants, band limit) and the whole flow."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_jaxvoice, sawtooth

from jaxvoice import audio, checkpoint, clips, codec, corpus, demo, synth

RATE = synth.RATE


def harmonic_envelope_peaks(x: np.ndarray, f0: float, rate: int = RATE) -> list[float]:
    """Frequencies of the local maxima of a harmonic sound's spectral envelope: the envelope is the
    magnitude spectrum's peak near each harmonic k * f0 (a smoothing that keeps only what the harmonics
    sample of the filter), in dB."""
    n = len(x)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(n)))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    harmonics = f0 * np.arange(1, int(0.9 * rate / 2 / f0))
    env = np.array([spectrum[np.abs(freqs - h) < f0 / 2].max() for h in harmonics])
    db = 20 * np.log10(env + 1e-12)
    return [float(harmonics[i]) for i in range(1, len(db) - 1) if db[i] > db[i - 1] and db[i] > db[i + 1]]


def steady_vowel(vowel: str, f0: float = 110.0, seconds: float = 1.0) -> np.ndarray:
    frames = int(seconds * RATE / synth.CONTROL_HOP) + 1
    formants = np.tile(synth.VOWELS[vowel], (frames, 1))
    return synth.render_voice(np.full(frames, f0), formants, np.ones(frames), RATE)


def test_synthesis_is_deterministic_per_seed():
    a, b, c = synth.synthesize(6.0, seed=3), synth.synthesize(6.0, seed=3), synth.synthesize(6.0, seed=4)
    assert a.dtype == np.float32 and a.shape == (6 * RATE,)
    assert np.array_equal(a, b)
    assert a.shape == c.shape and not np.array_equal(a, c)
    assert np.max(np.abs(a)) == pytest.approx(synth.PEAK, abs=1e-6) and np.all(np.isfinite(a))
    # Syllables and pauses: the loudness of 40 ms frames spans a wide range (a steady tone or noise would not).
    env = np.abs(a).reshape(-1, RATE // 25).max(axis=1)
    assert np.percentile(env, 10) < 0.25 * np.percentile(env, 90)


@pytest.mark.parametrize(
    "vowel, f0", [("a", f0) for f0 in (98.0, 110.0, 131.0, 147.0, 175.0)] + [(v, 98.0) for v in "eiou"]
)
def test_a_steady_vowel_has_its_formant_peaks(vowel, f0):
    """/a/ (F1 700, F2 1200) at any pitch of the demo's range, and every vowel at 98 Hz, where harmonics
    sample the envelope finely enough for the F1 of /i/ (300 Hz) to stand out of the source's 1/k slope."""
    f1, f2 = synth.VOWELS[vowel][:2]
    peaks = harmonic_envelope_peaks(steady_vowel(vowel, f0), f0)
    assert any(abs(p - f1) <= 100 for p in peaks), (f1, peaks)
    assert any(abs(p - f2) <= 100 for p in peaks), (f2, peaks)


def test_the_formant_check_rejects_a_plain_sawtooth():
    """The same analysis on a sawtooth without resonators finds no formant where /a/ has them."""
    peaks = harmonic_envelope_peaks(sawtooth(110.0, RATE, 1.0).astype(np.float64), 110.0)
    f1, f2 = synth.VOWELS["a"][:2]
    assert not any(abs(p - f1) <= 100 for p in peaks) or not any(abs(p - f2) <= 100 for p in peaks), peaks


def test_resonators_have_unity_gain_at_0_hz_and_peak_at_their_formant():
    freqs = np.arange(0.0, RATE / 2, 1.0)
    for f, bw in [(700.0, 80.0), (2250.0, 120.0)]:
        h = np.abs(synth.cascade_response(freqs, [f], [bw]))
        assert h[0] == pytest.approx(1.0, abs=1e-12)
        assert abs(freqs[np.argmax(h)] - f) <= 5
    cascade = synth.cascade_response(freqs, synth.VOWELS["a"], synth.BANDWIDTHS)
    singles = [
        synth.cascade_response(freqs, [f], [b])
        for f, b in zip(synth.VOWELS["a"], synth.BANDWIDTHS, strict=True)
    ]
    np.testing.assert_allclose(cascade, np.prod(singles, axis=0), rtol=1e-12)


def test_the_voice_is_band_limited_with_a_gliding_pitch():
    """No harmonic reaches Nyquist even while the pitch glides (vibrato-like sweep), so nothing aliases."""
    frames = RATE // synth.CONTROL_HOP
    t = np.arange(frames) / frames
    f0 = 180.0 * 2 ** (np.sin(2 * np.pi * 6 * t) / 12)
    x = synth.render_voice(f0, np.tile(synth.VOWELS["i"], (frames, 1)), np.ones(frames))
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / RATE)
    assert power[freqs > 0.96 * RATE / 2].sum() < 1e-8 * power.sum()


# ---- the command -------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = run_jaxvoice(
        "demo", "--out", out, "--minutes", "0.5", "--seconds", "20", "--seed", "5", check=True
    )
    return out, proc


@pytest.mark.slow
@pytest.mark.alone
def test_short_demo_writes_every_promised_file(short_demo):
    out, proc = short_demo
    run = out / "run"
    # The WAV beside the corpus is the synthetic voice, and the corpus is exactly its 8-bit linear coding.
    info = audio.probe(out / "voice.wav")
    assert (info.rate, info.frames) == (RATE, 20 * RATE)
    np.testing.assert_allclose(
        audio.read_mono(out / "voice.wav", RATE), synth.synthesize(20.0, seed=5), atol=1 / 32768
    )
    data = corpus.open_corpus(out / "corpus")
    assert data.meta["codec"] == "linear" and data.meta["rate"] == RATE and data.meta["length"] == 20 * RATE
    assert np.array_equal(data.data, codec.encode("linear", audio.read_mono(out / "voice.wav", RATE)))
    assert json.loads((run / "corpus.json").read_text())["sha256"] == data.meta["sha256"]

    steps = checkpoint.available_steps(run)
    assert len(steps) >= demo.MIN_CHECKPOINTS and steps[0] == demo.WARMUP_STEPS
    val = {int(r["step"]): float(r["val_bits"]) for r in read_rows(run / "val.csv")}
    assert set(steps) <= set(val)  # every checkpoint was evaluated
    best = min(steps, key=val.get)
    for step in steps:
        assert audio.probe(run / "samples" / f"step_{step}.wav").frames == round(demo.SHORT_SECONDS * RATE)
    assert audio.probe(run / "samples" / f"best_step_{best}_10s.wav").frames == round(
        demo.BEST_SECONDS * RATE
    )
    assert sorted(p.name for p in (run / "samples").iterdir()) == sorted(
        [f"step_{s}.wav" for s in steps] + [f"best_step_{best}_10s.wav"]
    )
    assert (run / "plots" / "loss.png").stat().st_size > 0 and (
        run / "plots" / "loss_logx.png"
    ).stat().st_size > 0
    page = (run / "report.html").read_text()
    for name in [
        *(f"samples/step_{s}.wav" for s in steps),
        "plots/loss.png",
        "report_files/corpus_excerpt.png",
        "video.mp4",
    ]:
        assert f'src="{name}"' in page, name
    # The video: every checkpoint's 2 s sample in turn after the opening card, with its sound.
    import av

    with av.open(str(run / "video.mp4")) as container:
        kinds = sorted(stream.type for stream in container.streams)
        seconds = float(container.duration) / 1e6
    assert kinds == ["audio", "video"] and seconds == pytest.approx(
        3.0 + demo.SHORT_SECONDS * len(steps), abs=0.1
    )
    assert [r["step"] for r in read_rows(run / "samples.csv")] == [
        str(s) for s in steps
    ]  # sampled while training

    # What it prints: where everything is, the figures, and last the report to open.
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(run / "report.html")
    order0 = clips.order0_bits(data.split("val"))
    assert f"val {order0:.3f}" in proc.stdout
    figures = re.search(r"held-out loss at step (\d+): val ([\d.]+) bits/sample", proc.stdout)
    assert figures and int(figures[1]) == best and float(figures[2]) == pytest.approx(val[best], abs=6e-4)
    # Even the shortest demo learns something about the held-out audio beyond its histogram.
    assert val[best] < order0 - 0.5
    record = json.loads((out / demo.DEMO_FILE).read_text())
    assert (
        record["finished"] and record["best_step"] == best and record["val_bits"] == pytest.approx(val[best])
    )
    assert record["order0_bits"]["val"] == pytest.approx(order0)


@pytest.mark.slow
@pytest.mark.alone
def test_demo_keeps_what_it_did_not_make(short_demo, tmp_path):
    out, _ = short_demo
    assert_user_error(run_jaxvoice("demo", "--out", out, "--minutes", "0.2"), "already exists", "--force")
    assert (out / "run" / "report.html").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_user_error(run_jaxvoice("demo", "--out", mine, "--force"), "not a jaxvoice demo")
    assert (mine / "notes.txt").read_text() == "keep me"
    assert_user_error(run_jaxvoice("demo", "--out", tmp_path / "x", "--minutes", "0"), "--minutes")
    assert_user_error(run_jaxvoice("demo", "--out", tmp_path / "x", "--seconds", "3"), "--seconds")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.alone
def test_the_default_demo_beats_order0_clearly(tmp_path):
    """The README's figure: two minutes of the demo's preset on three minutes of synthetic singing."""
    out = tmp_path / "demo"
    run_jaxvoice("demo", "--out", out, "--quiet", check=True, timeout=900)
    record = json.loads((out / demo.DEMO_FILE).read_text())
    assert record["val_bits"] < record["order0_bits"]["val"] - 1.0
    assert record["test_bits"] < record["order0_bits"]["test"] - 1.0
    assert math.isfinite(record["total_seconds"])
