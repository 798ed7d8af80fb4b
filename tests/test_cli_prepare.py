"""`jaxvoice prepare`, `info`, `encode`, `decode` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_user_error, jaxvoice_cmd, run_jaxvoice, sawtooth, sine, write_audio

from jaxvoice import codec

RATE = 11025


def voice_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Stereo speech-ish test signal: a gliding sawtooth through three formant resonances, plus noise,
    with a syllable-rate envelope; the right channel is a quieter, noisier copy."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 120 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    glottal = 2 * (np.cumsum(f0) / rate % 1.0) - 1 + 0.05 * rng.standard_normal(n)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    formants = sum(
        g / (1 + ((freqs - fc) / bw) ** 2)
        for fc, bw, g in [(700, 80, 1.0), (1200, 100, 0.6), (2600, 150, 0.3)]
    )
    voiced = np.fft.irfft(np.fft.rfft(glottal) * formants, n)
    voiced *= 0.6 / np.abs(voiced).max() * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    return np.stack([voiced, 0.9 * voiced + 0.01 * rng.standard_normal(n)], axis=1).astype(np.float32)


@pytest.fixture
def audio_folder(tmp_path):
    folder = tmp_path / "voice"
    folder.mkdir()
    write_audio(folder / "1.wav", sine(440, 44100, 0.6), 44100)
    write_audio(folder / "2.flac", np.stack([sawtooth(110, 22050, 0.4)] * 2, axis=1), 22050, format="FLAC")
    return folder


def _leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".")]


def test_prepare_folder_prints_a_summary_and_progress(tmp_path, audio_folder):
    out = tmp_path / "corpus"
    proc = run_jaxvoice(
        "prepare", audio_folder, "-o", out, "--val-frac", "0.2", "--test-frac", "0.05", check=True
    )
    meta = json.loads((out / "meta.json").read_text())
    data = (out / "data.u8").read_bytes()
    n = 6615 + 4410
    assert len(data) == meta["length"] == n
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    val, test = int(n * 0.2), int(n * 0.05)
    assert meta["splits"] == {
        "train": [0, n - val - test],
        "val": [n - val - test, n - test],
        "test": [n - test, n],
    }
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and f"{n:,} symbols" in lines[0] and "linear" in lines[0] and "1.0 s" in lines[0]
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal (a log file, a pipe)


def test_progress_bar_on_a_terminal(tmp_path, audio_folder):
    """The tqdm bar goes to stderr when it is a terminal; --quiet turns it off there too."""
    import fcntl
    import pty
    import struct
    import termios

    def stderr_on_a_tty(*args) -> str:
        main_fd, tty_fd = pty.openpty()
        fcntl.ioctl(tty_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
        proc = subprocess.Popen([*jaxvoice_cmd(), *map(str, args)], stdout=subprocess.PIPE, stderr=tty_fd)
        os.close(tty_fd)
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main_fd)
        assert proc.wait(timeout=120) == 0
        return b"".join(chunks).decode("utf-8", "replace")

    shown = stderr_on_a_tty("prepare", audio_folder, "-o", tmp_path / "a")
    assert "prepare: 100%" in shown and "B/s" in shown
    assert stderr_on_a_tty("prepare", "-q", audio_folder, "-o", tmp_path / "b") == ""


def test_quiet_prints_nothing(tmp_path, audio_folder):
    proc = run_jaxvoice("prepare", "-q", audio_folder, "-o", tmp_path / "c", check=True)
    assert proc.stdout == "" and proc.stderr == ""
    assert (tmp_path / "c" / "data.u8").stat().st_size == 11025


def test_prepare_refuses_to_overwrite_without_force(tmp_path, audio_folder):
    out = tmp_path / "corpus"
    run_jaxvoice("prepare", "-q", audio_folder / "1.wav", "-o", out, check=True)
    before = (out / "meta.json").read_text(), (out / "data.u8").read_bytes()
    assert_user_error(run_jaxvoice("prepare", audio_folder, "-o", out), "already exists", "--force")
    assert ((out / "meta.json").read_text(), (out / "data.u8").read_bytes()) == before
    run_jaxvoice("prepare", "-q", "--force", audio_folder, "-o", out, check=True)
    assert (out / "data.u8").stat().st_size == 11025 and not _leftovers(tmp_path)


def _bad_inputs(folder) -> dict:
    """name: (prepare arguments before -o, words the error line must have)."""
    good = write_audio(folder / "good.wav", sine(440, RATE, 1.0), RATE)
    cut = folder / "cut.wav"
    cut.write_bytes(good.read_bytes()[:10_000])
    flac = bytearray(write_audio(folder / "f.flac", sine(440, 44100, 1.0), 44100, format="FLAC").read_bytes())
    flac[len(flac) // 2 :] = bytes(len(flac) - len(flac) // 2)  # fails half-way through reading
    (folder / "half.flac").write_bytes(bytes(flac))
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio\n" * 100)
    (folder / "random.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    write_audio(folder / "zero.wav", np.zeros(0, np.float32), RATE)
    write_audio(folder / "short.wav", sine(440, RATE, 0.001), RATE)  # 11 samples: val would get 1
    (folder / "empty.bin").write_bytes(b"")
    return {
        "missing file": ([folder / "nope.wav"], ["nope.wav", "no such file"]),
        "empty file": ([folder / "empty.wav"], ["empty.wav", "empty"]),
        "empty file as bytes": ([folder / "empty.bin", "--codec", "bytes"], ["empty.bin", "empty"]),
        "text named .wav": ([folder / "text.wav"], ["text.wav", "not audio", "--codec bytes"]),
        "random bytes named .wav": ([good, folder / "random.wav"], ["random.wav", "not audio"]),
        "truncated wav": ([folder / "cut.wav"], ["cut.wav", "truncated"]),
        "flac failing half-way": ([good, folder / "half.flac"], ["half.flac", "corrupt"]),
        "zero-length audio": ([folder / "zero.wav"], ["zero.wav", "no audio"]),
        "too short for the splits": ([folder / "short.wav"], ["too short", "11 symbols"]),
        "val + test >= 1": ([good, "--val-frac", "0.5", "--test-frac", "0.5"], ["below 1"]),
        "negative fraction": ([good, "--val-frac", "-0.1"], ["frac", ">= 0"]),
        "zero rate": ([good, "--rate", "0"], ["rate"]),
        "unknown codec": ([good, "--codec", "alaw"], ["invalid choice", "alaw"]),
    }


def test_bad_inputs_give_one_line_and_leave_nothing(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = _bad_inputs(inputs)
    for name, (args, words) in cases.items():
        out = tmp_path / "out" / "corpus"
        proc = run_jaxvoice("prepare", *args, "-o", out)
        try:
            assert_user_error(proc, *words)
        except AssertionError as e:
            raise AssertionError(f"case {name!r}: {e}") from None
        assert not (tmp_path / "out").exists(), name
        assert not _leftovers(tmp_path) and not _leftovers(inputs), name


def test_prepare_matches_sox_on_a_voice_like_recording(tmp_path):
    sox = shutil.which("sox")
    assert sox, "sox is needed for this test (Debian package 'sox'; .ci/run installs it)"
    wav = write_audio(tmp_path / "voice.wav", voice_like(48000, 4.0), 48000, subtype="PCM_16")
    ref = tmp_path / "sox.raw"
    subprocess.run([sox, "-D", wav, "-r", "11025", "-c", "1", "-e", "unsigned", "-b", "8", ref], check=True)
    run_jaxvoice(
        "prepare", "-q", wav, "-o", tmp_path / "c", "--val-frac", "0", "--test-frac", "0", check=True
    )
    ours = np.fromfile(tmp_path / "c" / "data.u8", np.uint8).astype(int)
    theirs = np.fromfile(ref, np.uint8).astype(int)
    assert len(ours) == len(theirs) == 44100
    diff = np.abs(ours - theirs)
    within = float(np.mean(diff <= 1))
    assert within >= 0.98, f"only {within:.2%} of samples within ±1 of sox ({np.mean(diff == 0):.2%} exact)"
    assert np.ptp(theirs) > 100  # the signal spans most of the 8-bit range, so the comparison means something


def test_info_prints_meta(tmp_path, audio_folder):
    out = tmp_path / "c"
    run_jaxvoice("prepare", "-q", audio_folder, "-o", out, "--codec", "mulaw", check=True)
    text = run_jaxvoice("info", out, check=True).stdout
    for words in ["mulaw", "11025 Hz", "11,025 symbols", "1.wav", "2.flac", "train [0, 8,821)"]:
        assert words in text, (words, text)
    as_json = run_jaxvoice("info", out, "--json", check=True).stdout
    assert json.loads(as_json) == json.loads((out / "meta.json").read_text())
    assert "checksum  ok" in run_jaxvoice("info", out, "--verify", check=True).stdout
    (out / "data.u8").write_bytes(bytes(11025))
    assert_user_error(run_jaxvoice("info", out, "--verify"), "sha256")
    assert_user_error(run_jaxvoice("info", tmp_path / "nowhere"), "does not exist", "jaxvoice prepare")


def test_encode_decode_round_trip_an_8_bit_wav(tmp_path):
    """The 2016 flow: an 8-bit WAV's bytes -> text for a character-level tool -> the same bytes back."""
    rng = np.random.default_rng(5)
    wav = write_audio(
        tmp_path / "v.wav", rng.uniform(-1, 1, 30_000).astype(np.float32), RATE, subtype="PCM_U8"
    )
    wav.write_bytes(wav.read_bytes() + bytes(range(256)))  # every byte value, after the audio
    text = tmp_path / "v.txt"
    proc = run_jaxvoice("encode", wav, "-o", text, check=True)
    assert "wrote" in proc.stdout
    content = text.read_text(encoding="utf-8")
    assert len(content) == wav.stat().st_size and not any(c.isspace() for c in content)
    back = tmp_path / "back.wav"
    run_jaxvoice("decode", "-q", text, "-o", back, check=True)
    assert back.read_bytes() == wav.read_bytes()
    # A text tool that adds a final newline changes nothing.
    text.write_text(content + "\n", encoding="utf-8")
    run_jaxvoice("decode", "-q", text, "-o", back, "--force", check=True)
    assert back.read_bytes() == wav.read_bytes()


def test_encode_decode_refuse_to_overwrite(tmp_path):
    (tmp_path / "in.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "out.txt").write_text("keep me")
    assert_user_error(
        run_jaxvoice("encode", tmp_path / "in.bin", "-o", tmp_path / "out.txt"), "already exists"
    )
    assert_user_error(
        run_jaxvoice("decode", tmp_path / "out.txt", "-o", tmp_path / "in.bin"), "already exists"
    )
    assert (tmp_path / "out.txt").read_text() == "keep me" and (
        tmp_path / "in.bin"
    ).read_bytes() == b"\x00\x01\x02"
    assert_user_error(run_jaxvoice("encode", tmp_path / "nope.bin", "-o", tmp_path / "x.txt"), "no such file")
    run_jaxvoice("encode", "-q", "--force", tmp_path / "in.bin", "-o", tmp_path / "out.txt", check=True)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == codec.bytes_to_text(b"\x00\x01\x02")


def test_decode_names_the_offset_of_a_foreign_character(tmp_path):
    text = codec.bytes_to_text(np.random.default_rng(6).bytes(5_000_000))  # spans several read blocks
    bad = tmp_path / "bad.txt"
    bad.write_text(text[:4_321_000] + "\t" + text[4_321_000:], encoding="utf-8")
    proc = run_jaxvoice("decode", bad, "-o", tmp_path / "out.bin")
    assert_user_error(proc, "bad.txt", "character 4321000", "U+0009")
    assert not (tmp_path / "out.bin").exists() and not _leftovers(tmp_path)
    (tmp_path / "latin1.txt").write_bytes(b"abc" + b"\xe9")
    assert_user_error(
        run_jaxvoice("decode", tmp_path / "latin1.txt", "-o", tmp_path / "o"), "not UTF-8", "byte offset 3"
    )


def test_prepare_does_not_import_jax(tmp_path, audio_folder):
    script = (
        "import sys\nfrom jaxvoice import cli\n"
        f"assert cli.main(['prepare', '-q', {str(audio_folder)!r}, '-o', {str(tmp_path / 'c')!r}]) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax', 'orbax'))\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
