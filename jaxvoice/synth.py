"""Synthetic singing, deterministic from a seed: the corpus of `jaxvoice demo`, and test audio.

The source is a band-limited sawtooth (additive: harmonic k has amplitude 1/k, and only harmonics below
0.95 x Nyquist exist, faded out as they approach it, so nothing aliases), its pitch follows a pentatonic
melody with glides between notes, phrase declination, slow drift and vibrato, and each harmonic is weighted
by the complex response of a Klatt cascade of four formant resonators (unity gain at 0 Hz) evaluated at its
frequency, so the vowel shapes the spectrum and the waveform (phase included) as a vocal tract would. The
formants glide between the vowels of successive syllables; each syllable has an attack and a release,
phrases are separated by pauses with an audible breath, and a little aspiration noise rides on the voicing.

Control tracks (pitch, formants, loudness) are built at CONTROL_HOP samples per frame and interpolated to
audio rate block by block, so minutes of audio cost seconds and little memory.
"""

from __future__ import annotations

import math

import numpy as np

from jaxvoice.errors import UserError

RATE = 11025
CONTROL_HOP = 32  # audio samples per control frame (2.9 ms at 11025 Hz)
BLOCK_FRAMES = 256  # control frames rendered per block
PEAK = 0.85  # the output's peak amplitude
# Formants F1..F4 (Hz) of sung vowels, and the resonators' bandwidths (Hz).
VOWELS = {
    "a": (700.0, 1200.0, 2600.0, 3400.0),
    "e": (450.0, 1900.0, 2550.0, 3450.0),
    "i": (300.0, 2250.0, 2950.0, 3650.0),
    "o": (500.0, 880.0, 2500.0, 3350.0),
    "u": (330.0, 780.0, 2350.0, 3300.0),
}
BANDWIDTHS = (80.0, 90.0, 120.0, 170.0)
BREATH_FORMANTS, BREATH_BANDWIDTHS = (550.0, 1500.0, 2500.0, 3500.0), (400.0, 500.0, 600.0, 700.0)
PENTATONIC = (0, 2, 4, 7, 9, 12, 14)  # semitones above the phrase's key note


# ---- the voice --------------------------------------------------------------------------------------------


def cascade_response(freqs_Hz, formants_Hz, bandwidths_Hz, rate: int = RATE) -> np.ndarray:
    """Complex response at `freqs_Hz` of a cascade of Klatt two-pole resonators, each of unity gain at 0 Hz.

    `formants_Hz` has the shape of `freqs_Hz` plus a last axis of F resonators (or broadcasts to it);
    resonator i: H(z) = A / (1 - B z^-1 - C z^-2), C = -r^2, B = 2 r cos(2 pi F / rate), A = 1 - B - C,
    r = exp(-pi BW / rate)."""
    freqs = np.asarray(freqs_Hz, np.float64)[..., None]
    r = np.exp(-np.pi * np.asarray(bandwidths_Hz, np.float64) / rate)
    b = 2.0 * r * np.cos(2.0 * np.pi * np.asarray(formants_Hz, np.float64) / rate)
    c = -(r**2)
    z1 = np.exp(-2j * np.pi * freqs / rate)  # z^-1 on the unit circle
    return np.prod((1.0 - b - c) / (1.0 - b * z1 - c * z1 * z1), axis=-1)


def _taper(freqs_Hz: np.ndarray, rate: int) -> np.ndarray:
    """1 up to 0.8 x Nyquist, a raised-cosine fade to 0 at 0.95 x Nyquist, 0 above: no aliasing."""
    nyquist = rate / 2
    x = np.clip((freqs_Hz - 0.8 * nyquist) / (0.15 * nyquist), 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * x)


def _to_audio_rate(track_KxC: np.ndarray, start: int, n: int, hop: int) -> np.ndarray:
    """Linear interpolation of control frames to samples start .. start + n - 1 (frame j sits at j * hop)."""
    pos = (start + np.arange(n)) / hop
    i0 = np.minimum(pos.astype(np.int64), track_KxC.shape[-1] - 2)
    frac = pos - i0
    return track_KxC[..., i0] * (1.0 - frac) + track_KxC[..., i0 + 1] * frac


def render_voice(
    f0_C: np.ndarray, formants_CxF: np.ndarray, gain_C: np.ndarray, rate: int = RATE,
    bandwidths: tuple[float, ...] = BANDWIDTHS, hop: int = CONTROL_HOP,
) -> np.ndarray:  # fmt: skip
    """The voiced sound of control tracks (one value per `hop` samples): f0 in Hz, formants in Hz, linear
    gain. Returns float64 audio of (C - 1) * hop samples, not normalised."""
    f0_C = np.asarray(f0_C, np.float64)
    n_frames = len(f0_C)
    if n_frames < 2 or np.any(f0_C <= 0):
        raise ValueError("need at least 2 control frames and a positive f0")
    K = max(1, int(0.95 * rate / 2 / f0_C.min()))  # harmonics that can be below 0.95 x Nyquist
    n_total = (n_frames - 1) * hop
    out = np.empty(n_total)
    phase = 0.0
    f0_N = _to_audio_rate(f0_C, 0, n_total, hop)
    for c0 in range(0, n_frames - 1, BLOCK_FRAMES):
        c1 = min(c0 + BLOCK_FRAMES, n_frames - 1) + 1  # the block's frames, plus the next for interpolation
        k_K = np.arange(1, min(K, int(0.95 * rate / 2 / f0_C[c0:c1].min())) + 1, dtype=np.float64)
        freqs_KxC = k_K[:, None] * f0_C[None, c0:c1]
        h_KxC = cascade_response(freqs_KxC, np.asarray(formants_CxF)[None, c0:c1], bandwidths, rate)
        amp_KxC = np.abs(h_KxC) * _taper(freqs_KxC, rate) / k_K[:, None] * np.asarray(gain_C)[None, c0:c1]
        # Interpolate the response as a complex number: no phase unwrapping, and a smooth path between frames.
        resp_KxC = amp_KxC * np.exp(1j * np.angle(h_KxC))
        s0, s1 = c0 * hop, (c1 - 1) * hop
        resp_KxN = _to_audio_rate(resp_KxC, 0, s1 - s0, hop)
        phase_N = phase + np.cumsum(2.0 * np.pi * f0_N[s0:s1] / rate)
        phase = float(phase_N[-1] % (2.0 * np.pi))
        # exp(i k phase) for k = 1..K as powers of exp(i phase): one complex multiply per harmonic, not an exp.
        carrier_KxN = np.cumprod(np.broadcast_to(np.exp(1j * phase_N), (len(k_K), len(phase_N))), axis=0)
        out[s0:s1] = np.imag(resp_KxN * carrier_KxN).sum(axis=0)
    return out


def _smooth(x: np.ndarray, frames: int) -> np.ndarray:
    """A moving Hann-window average along the last axis (edges held), for glides between targets."""
    if frames < 2:
        return x
    w = np.hanning(frames + 2)[1:-1]
    w /= w.sum()
    pad = frames // 2
    padded = np.concatenate([np.repeat(x[..., :1], pad, -1), x, np.repeat(x[..., -1:], frames - pad, -1)], -1)
    return np.apply_along_axis(lambda row: np.convolve(row, w, mode="valid")[: x.shape[-1]], -1, padded)


def _score(seconds: float, rate: int, rng: np.random.Generator, hop: int) -> dict[str, np.ndarray]:
    """Control tracks of a sung melody: f0, formants, voice gain, breath gain, one value per frame."""
    fps = rate / hop
    n = int(math.ceil(seconds * fps)) + 1
    semis, gain, breath = np.zeros(n), np.zeros(n), np.zeros(n)
    vibrato_depth = np.zeros(n)
    formants = np.tile(np.array(VOWELS["a"]), (n, 1))
    onset_dip = np.zeros(n)  # F1 lowered at each syllable's start: a consonant-like transition
    frame, vowel, key = 0, "a", 0.0
    while frame < n:
        key = rng.uniform(-3.0, 6.0)  # semitones relative to MIDI 52 (E3, 165 Hz)
        degree = int(rng.integers(0, 4))
        syllables = int(rng.integers(3, 8))
        phrase_start = frame
        for s in range(syllables):
            last = s == syllables - 1
            dur = int(fps * (rng.uniform(0.6, 1.2) if last else rng.uniform(0.2, 0.55)))
            end = min(frame + dur, n)
            degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, len(PENTATONIC) - 1))
            vowel = str(rng.choice([v for v in VOWELS if v != vowel]))
            semis[frame:end] = key + PENTATONIC[degree]
            formants[frame:end] = VOWELS[vowel]
            t = np.arange(end - frame) / fps
            attack, release = rng.uniform(0.02, 0.06), rng.uniform(0.05, 0.12 if not last else 0.3)
            env = np.minimum(1.0, t / attack) * np.clip((t[-1] - t) / release, 0.0, 1.0) if len(t) else t
            level = rng.uniform(0.55, 1.0)
            gain[frame:end] = np.maximum(gain[frame:end], level * np.sin(0.5 * np.pi * env) ** 2)
            vibrato_depth[frame:end] = rng.uniform(0.25, 0.6) * np.clip((t - 0.15) / 0.25, 0.0, 1.0)
            if rng.random() < 0.6:
                onset_dip[frame:end] = np.exp(-t / 0.03)
            frame = end
            if frame >= n:
                break
        semis[phrase_start:frame] -= np.linspace(0.0, rng.uniform(0.3, 1.5), frame - phrase_start)
        pause = min(int(fps * rng.uniform(0.25, 0.8)), n - frame)
        t = np.arange(pause) / fps
        if pause:
            semis[frame : frame + pause] = semis[frame - 1]
            formants[frame : frame + pause] = formants[frame - 1]
            breath[frame : frame + pause] = (
                rng.uniform(0.5, 1.0) * np.sin(np.pi * t / t[-1] if t[-1] else t) ** 2
            )
        frame += pause
    t = np.arange(n) / fps
    rate_hz = rng.uniform(5.0, 6.2)
    drift = sum(
        rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(0.02, 0.15) * t + rng.uniform(0, 7))
        for _ in range(3)
    )
    semis = _smooth(semis, int(0.05 * fps)) + drift + vibrato_depth * np.sin(2 * np.pi * rate_hz * t)
    formants = _smooth(formants.T, int(0.07 * fps)).T
    formants[:, 0] *= 1.0 - 0.55 * _smooth(onset_dip, 3)
    return {
        "f0": 164.81 * 2.0 ** (semis / 12.0),
        "formants": formants,
        "gain": _smooth(gain, int(0.01 * fps)),
        "breath": breath,
    }


def _shaped_noise(n: int, rng: np.random.Generator, rate: int) -> np.ndarray:
    """White noise through a broad, breathy spectral shape (a wide-band cascade, applied by FFT)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    shape = np.abs(cascade_response(freqs, BREATH_FORMANTS, BREATH_BANDWIDTHS, rate)) * np.clip(
        freqs / 400, 0, 1
    )
    noise = np.fft.irfft(spectrum * shape, n)
    return noise / (np.std(noise) + 1e-12)


def synthesize(seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """`seconds` of synthetic singing (float32 mono in [-PEAK, PEAK]), the same for the same seed."""
    if not seconds > 0:
        raise UserError(f"the demo corpus needs a positive length in seconds, got {seconds}")
    rng = np.random.default_rng(seed)
    score = _score(seconds, rate, rng, CONTROL_HOP)
    voice = render_voice(score["f0"], score["formants"], score["gain"], rate)
    n = len(voice)
    voice /= np.max(np.abs(voice)) + 1e-12
    noise = _shaped_noise(n, rng, rate)
    gain_N = _to_audio_rate(score["gain"], 0, n, CONTROL_HOP)
    breath_N = _to_audio_rate(score["breath"], 0, n, CONTROL_HOP)
    phase_N = np.cumsum(2.0 * np.pi * _to_audio_rate(score["f0"], 0, n, CONTROL_HOP) / rate)
    pulses = 0.5 + 0.5 * np.cos(phase_N)  # aspiration is strongest where the glottis opens
    mix = voice + noise * (0.035 * gain_N * pulses + 0.06 * breath_N) + 0.0005 * rng.standard_normal(n)
    mix *= PEAK / (np.max(np.abs(mix)) + 1e-12)
    return mix[: int(round(seconds * rate))].astype(np.float32)


def singing_corpus(folder, *, seconds: float = 60.0, seed: int = 0, quiet: bool = True):
    """`seconds` of this singing as `folder`/voice.wav and prepared (8-bit linear, 11025 Hz, 80/10/10) as the
    corpus `folder`/corpus, as `jaxvoice demo` makes it; returns the opened corpus. For examples and tests
    that need a voice-like corpus and have no recording."""
    from pathlib import Path

    from jaxvoice import audio_write, corpus

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wav = audio_write.write_wav(folder / "voice.wav", synthesize(seconds, seed), RATE)
    corpus.prepare([wav], folder / "corpus", rate=RATE, codec="linear", quiet=quiet)
    return corpus.open_corpus(folder / "corpus")
