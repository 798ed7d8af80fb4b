"""audio.py: reading any format to mono at a target rate (streamed); audio_write.py: the two WAV writers."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import wave

import numpy as np
import pytest
import soundfile as sf
from conftest import sawtooth, sine, write_audio

from jaxvoice import audio, audio_write, codec
from jaxvoice.errors import UserError

RATE = 11025

FORMATS = [  # (file suffix, format, subtype)
    ("wav", "WAV", "PCM_U8"),
    ("wav", "WAV", "PCM_16"),
    ("wav", "WAV", "PCM_24"),
    ("wav", "WAV", "PCM_32"),
    ("wav", "WAV", "FLOAT"),
    ("flac", "FLAC", "PCM_16"),
    ("flac", "FLAC", "PCM_24"),
    ("ogg", "OGG", "VORBIS"),
    ("mp3", "MP3", "MPEG_LAYER_III"),
]


def _needs(fmt: str, subtype: str) -> None:
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile has no {fmt}/{subtype}")


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("suffix,fmt,subtype", FORMATS, ids=lambda v: str(v))
@pytest.mark.parametrize("rate", [44100, 22050, 8000])
@pytest.mark.parametrize("channels", [1, 2])
def test_read_any_format_gives_mono_at_the_target_rate(tmp_path, suffix, fmt, subtype, rate, channels):
    _needs(fmt, subtype)
    seconds = 0.61
    left = sine(440, rate, seconds)
    samples = np.stack([left, 0.5 * left], axis=1) if channels == 2 else left
    path = write_audio(tmp_path / f"a.{suffix}", samples, rate, subtype=subtype, format=fmt)
    info = audio.probe(path)
    assert (info.rate, info.channels, info.format, info.subtype) == (rate, channels, fmt, subtype)
    mono = audio.read_mono(path, RATE)
    assert mono.dtype == np.float32 and mono.ndim == 1
    if fmt in ("WAV", "FLAC"):  # lossy codecs add encoder delay/padding to the length
        assert abs(len(mono) - info.frames * RATE / rate) <= 0.5
    else:
        assert abs(len(mono) - len(left) * RATE / rate) < 0.05 * RATE
    # Level: the channel average of a 0.5 sine (and 0.25 on the right) away from the edges.
    expected_rms = (0.75 if channels == 2 else 1.0) * 0.5 / np.sqrt(2)
    middle = mono[len(mono) // 4 : 3 * len(mono) // 4]
    tolerance = 0.02 if subtype in ("PCM_U8", "VORBIS", "MPEG_LAYER_III") else 0.002
    assert abs(np.sqrt(np.mean(middle**2)) - expected_rms) < tolerance


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 8000])
def test_resampled_sine_keeps_its_frequency(tmp_path, rate):
    path = write_audio(tmp_path / "sine.wav", sine(440, rate, 2.0), rate, subtype="PCM_16")
    mono = audio.read_mono(path, RATE)
    assert abs(_peak_hz(mono, RATE) - 440) <= 2


def test_downmix_is_the_channel_average(tmp_path):
    n = 5000
    stereo = np.stack([np.full(n, 0.5), np.full(n, -0.25)], axis=1).astype(np.float32)
    path = write_audio(tmp_path / "st.wav", stereo, RATE, subtype="FLOAT")
    np.testing.assert_array_equal(audio.read_mono(path, RATE), np.full(n, 0.125, dtype=np.float32))


def test_8_bit_file_at_the_target_rate_gives_its_own_bytes(tmp_path):
    symbols = np.random.default_rng(1).integers(0, 256, 20_000).astype(np.uint8)
    path = audio_write.write_wav(tmp_path / "u8.wav", symbols, RATE)
    np.testing.assert_array_equal(codec.linear_encode(audio.read_mono(path, RATE)), symbols)


def test_block_size_does_not_change_the_result(tmp_path):
    x = sawtooth(110, 44100, 1.5) + 0.01 * np.random.default_rng(2).standard_normal(66150).astype(np.float32)
    path = write_audio(tmp_path / "saw.wav", np.stack([x, -x * 0.3], axis=1), 44100, subtype="PCM_16")
    big = np.concatenate(list(audio.stream_mono(path, RATE)))
    small = np.concatenate(list(audio.stream_mono(path, RATE, block_frames=777)))
    assert len(big) == len(small)
    np.testing.assert_allclose(small, big, atol=1e-6)


def test_progress_callback_counts_every_input_frame(tmp_path):
    path = write_audio(tmp_path / "s.wav", sine(300, 22050, 1.0), 22050)
    seen = []
    list(audio.stream_mono(path, RATE, block_frames=4000, on_read=seen.append))
    assert sum(seen) == 22050 and max(seen) == 4000


# ---- bad files ---------------------------------------------------------------------------------------------


def _truncated_wav(folder):
    good = write_audio(folder / "good.wav", sine(440, RATE, 1.0), RATE).read_bytes()
    path = folder / "cut.wav"
    path.write_bytes(good[: len(good) // 2])
    return path


def _truncated_flac(folder):
    good = write_audio(folder / "good.flac", sine(440, RATE, 1.0), RATE, format="FLAC").read_bytes()
    path = folder / "cut.flac"
    path.write_bytes(good[: len(good) // 2])
    return path


def _file(name: str, content: bytes):
    def make(folder):
        (folder / name).write_bytes(content)
        return folder / name

    return make


BAD_FILES = {  # case: (make the file in a folder, what the message says: one of these words)
    "missing": (lambda folder: folder / "nope.wav", "no such file"),
    "empty": (_file("empty.wav", b""), "is empty"),
    "text named .wav": (_file("t.wav", b"hello\n" * 200), "not audio that libsndfile can read"),
    "random bytes named .wav": (_file("r.wav", np.random.default_rng(0).bytes(5000)), "not audio"),
    "truncated wav": (_truncated_wav, "truncated"),
    "wav cut inside the header": (
        lambda folder: _file("h.wav", _truncated_wav(folder).read_bytes()[:30])(folder),
        "not audio",
    ),
    "truncated flac": (_truncated_flac, ("not audio", "corrupt")),  # libsndfile fails on open or on read
    "zero-length audio": (
        lambda folder: write_audio(folder / "z.wav", np.zeros(0, np.float32), RATE),
        "no audio (0 frames)",
    ),
    "a folder": (lambda folder: folder, "folder"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_user_errors_naming_the_file(tmp_path, case):
    make, words = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(UserError) as e:
        audio.read_mono(path, RATE)
    words = (words,) if isinstance(words, str) else words
    assert str(path) in str(e.value) and any(w in str(e.value) for w in words), str(e.value)


def test_file_corrupt_in_the_middle_is_a_user_error(tmp_path):
    good = bytearray(
        write_audio(tmp_path / "a.flac", sine(440, 44100, 1.0), 44100, format="FLAC").read_bytes()
    )
    middle = len(good) // 2
    good[middle : middle + 2000] = np.random.default_rng(0).bytes(2000)
    (tmp_path / "a.flac").write_bytes(bytes(good))
    with pytest.raises(UserError, match="a.flac is corrupt after"):
        audio.read_mono(tmp_path / "a.flac", RATE)


def test_wav_with_unknown_data_size_is_read_to_its_end(tmp_path):
    """A writer that was stopped may leave 0xFFFFFFFF ("unknown") as the data size: not truncation."""
    path = write_audio(tmp_path / "a.wav", sine(440, RATE, 1.0), RATE)
    data = bytearray(path.read_bytes()[: 44 + 1000])
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    expected = sine(440, RATE, 1.0)[:500]
    np.testing.assert_allclose(audio.read_mono(path, RATE), expected, atol=1 / 32768)


def test_bad_rate_is_a_user_error(tmp_path):
    path = write_audio(tmp_path / "a.wav", sine(440, RATE, 0.1), RATE)
    for rate in (0, -5, 11025.5, True):
        with pytest.raises(UserError, match="rate"):
            audio.read_mono(path, rate)


# ---- writing -----------------------------------------------------------------------------------------------


def _data_chunk(path) -> bytes:
    raw = path.read_bytes()
    i = raw.index(b"data")
    (size,) = struct.unpack("<I", raw[i + 4 : i + 8])
    return raw[i + 8 : i + 8 + size]


def test_write_wav_stores_uint8_symbols_as_the_exact_bytes(tmp_path):
    symbols = np.arange(256, dtype=np.uint8).repeat(3)
    path = audio_write.write_wav(tmp_path / "u8.wav", symbols, RATE)
    assert sf.info(path).subtype == "PCM_U8" and sf.info(path).samplerate == RATE
    assert _data_chunk(path) == symbols.tobytes()
    as16 = audio_write.write_wav(tmp_path / "16.wav", symbols, RATE, subtype="PCM_16")
    np.testing.assert_array_equal(sf.read(as16, dtype="float32")[0], codec.linear_decode(symbols))


def test_write_wav_float_input(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 0.5 / 128, 1.0], dtype=np.float32)
    path = audio_write.write_wav(tmp_path / "f.wav", x, RATE, subtype="PCM_U8")
    assert _data_chunk(path)[:5] == codec.linear_encode(x).tobytes()
    path16 = audio_write.write_wav(tmp_path / "f16.wav", x[:3], RATE)
    assert sf.info(path16).subtype == "PCM_16"
    np.testing.assert_array_equal(sf.read(path16, dtype="float32")[0], x[:3])
    with pytest.raises(UserError, match="subtype"):
        audio_write.write_wav(tmp_path / "bad.wav", x, RATE, subtype="VORBIS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.wav", "f16.wav"]  # no temporary files left


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"precious")
    with pytest.raises(UserError, match="already exists"), audio_write.atomic_output(target):
        pass
    with pytest.raises(RuntimeError), audio_write.atomic_output(target, force=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"precious" and os.listdir(tmp_path) == ["out.bin"]
    with audio_write.atomic_output(target, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "FLOAT"])
def test_stream_writer_is_a_complete_wav_after_every_write(tmp_path, subtype):
    path = tmp_path / "grow.wav"
    rng = np.random.default_rng(3)
    written = []
    with audio_write.WavStreamWriter(path, RATE, subtype) as writer:
        for n in (1, 1000, 333, 4096):  # odd and even sizes: the RIFF pad byte comes and goes
            written.append(rng.integers(0, 256, n).astype(np.uint8))
            writer.write(written[-1])
            expected = codec.linear_decode(np.concatenate(written))
            # Read through other handles while the writer is still open.
            data, rate = sf.read(path, dtype="float32")
            assert rate == RATE and len(data) == len(expected) == writer.frames
            np.testing.assert_array_equal(data, expected)
            if subtype != "FLOAT":  # the stdlib reader believes the header alone
                with wave.open(str(path)) as w:
                    assert w.getnframes() == len(expected)
    assert sf.info(path).frames == sum(map(len, written))


def test_stream_writer_float_input_matches_the_codec(tmp_path):
    x = np.linspace(-1, 1, 999, dtype=np.float32)
    with audio_write.WavStreamWriter(tmp_path / "f.wav", RATE) as writer:
        writer.write(x)
    assert _data_chunk(tmp_path / "f.wav") == codec.linear_encode(x).tobytes()


_CHILD = """
import os, sys
import numpy as np
from jaxvoice.audio_write import WavStreamWriter
writer = WavStreamWriter(sys.argv[1], 11025)
block = 0
while True:
    writer.write(((np.arange(1001) + block * 1001) % 256).astype(np.uint8))
    block += 1
    if block == int(sys.argv[2]):
        os._exit(0)  # no close(): the process just ends
"""


def _expected_stream(frames: int) -> np.ndarray:
    return codec.linear_decode((np.arange(frames) % 256).astype(np.uint8))


def test_stream_writer_survives_a_process_that_exits_without_closing(tmp_path):
    path = tmp_path / "killed.wav"
    subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), path, "5"], check=True, timeout=60)
    data, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(data, _expected_stream(5 * 1001))
    with wave.open(str(path)) as w:
        assert w.getnframes() == 5 * 1001


def test_stream_writer_survives_sigkill_mid_stream(tmp_path):
    path = tmp_path / "killed.wav"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_CHILD), path, "-1"])
    try:
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 200_000) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    data, _ = sf.read(path, dtype="float32")
    assert len(data) >= 100_000 and len(data) % 1001 == 0
    np.testing.assert_array_equal(data, _expected_stream(len(data)))
