"""Read any audio file libsndfile reads as mono float32 at a chosen rate (streamed in blocks), and write WAVs.

The only module that imports soundfile and soxr. Reading never holds a whole file: blocks of BLOCK_FRAMES
frames go through a downmix (the channel average, as `sox -c 1` does) and a soxr stream (quality HQ, which
is what `sox rate` uses by default), so a 1 GB WAV costs a few MB of RAM.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from jaxvoice import codec, files, paths
from jaxvoice.errors import UserError

_log = logging.getLogger(__name__)
BLOCK_FRAMES = 1 << 17
# Extensions taken from folders for the audio codecs (files named on the command line are always tried).
AUDIO_EXTENSIONS = frozenset(
    [".wav", ".wave", ".bwf", ".rf64", ".w64", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
     ".aifc", ".caf", ".au", ".snd", ".voc"]
)  # fmt: skip
# Integer PCM cannot hold NaN or inf: no need to look for them (float, lossy and unknown subtypes are checked).
_INTEGER_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ULAW", "ALAW"})
# Compressed formats whose frame count in the header may be an estimate.
_INEXACT_SUBTYPES = frozenset({"MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III", "VORBIS", "OPUS"})


@dataclass(frozen=True)
class AudioInfo:
    path: str
    rate: int  # Hz, as stored
    channels: int
    frames: int
    format: str  # e.g. WAV, FLAC
    subtype: str  # e.g. PCM_16, FLOAT

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def _reason(e: Exception) -> str:
    text = getattr(e, "error_string", None) or str(e)
    return text.strip().rstrip(".")


def sf_name(path: str | os.PathLike) -> str | bytes:
    """`path` as soundfile takes it. soundfile encodes a str name with the file system encoding, which fails
    for a name that is not valid there (Python holds its undecodable bytes as surrogates, e.g. b"voice\\xff.wav");
    such a name goes to libsndfile as its own bytes, by the same open call. Every other name is unchanged."""
    path = os.fspath(path)
    try:
        path.encode(sys.getfilesystemencoding())
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


class NotAudio(UserError):
    """A file that libsndfile cannot open as audio. Commands add their own advice (prepare: --codec bytes)."""

    def __init__(self, path: str, reason: str, advice: str = "give a WAV, FLAC, OGG or MP3 file"):
        super().__init__(f"{path} is not audio that libsndfile can read ({reason}): {advice}")
        self.path, self.reason = path, reason


def _open(path: str) -> soundfile.SoundFile:
    paths.check_input_file(path, give="an audio file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty (0 bytes): give a real audio file")
    try:
        return soundfile.SoundFile(sf_name(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise NotAudio(path, _reason(e)) from None


def _check_riff_complete(path: str) -> None:
    """libsndfile quietly shortens a WAV whose data chunk is cut off; a truncated file is an error here.
    A data size of 0 or 0xFFFFFFFF means "unknown" (a writer that was stopped), which is accepted."""
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        size = os.fstat(f.fileno()).st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, length = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                have = size - pos - 8
                if length not in (0, 0xFFFFFFFF) and length > have:
                    raise UserError(
                        f"{path} is truncated: its header promises {length} bytes of audio but only {have} "
                        "are there; export or copy the file again"
                    )
                return
            pos += 8 + length + (length & 1)


def probe(path: str | os.PathLike) -> AudioInfo:
    """What a file holds, checked: readable, complete (for WAV) and not zero-length; else a UserError."""
    path = os.fspath(path)
    with _open(path) as f:
        info = AudioInfo(path, int(f.samplerate), int(f.channels), int(f.frames), f.format, f.subtype)
    if info.frames <= 0:
        raise UserError(f"{path} holds no audio (0 frames): give a file with sound in it")
    _check_riff_complete(path)
    return info


def check_rate(rate: int) -> int:
    if not isinstance(rate, int | np.integer) or isinstance(rate, bool) or not 1 <= rate <= 1_000_000:
        raise UserError(f"rate must be a whole number of Hz between 1 and 1000000, got {rate!r}")
    return int(rate)


def stream_mono(
    path: str | os.PathLike,
    rate: int,
    *,
    block_frames: int = BLOCK_FRAMES,
    on_read: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks of the file resampled to `rate` Hz. `on_read(frames)` after each input block
    (for progress). A file that fails or ends early while being read -> UserError."""
    rate = check_rate(rate)
    info = probe(path)
    resampler = None
    if info.rate != rate:
        resampler = soxr.ResampleStream(info.rate, rate, 1, dtype="float32", quality="HQ")
    buffer_FxC = np.empty((block_frames, info.channels), dtype=np.float32)
    frames_read = nonfinite = 0
    may_be_nonfinite = info.subtype not in _INTEGER_SUBTYPES
    with _open(info.path) as f:
        while True:
            try:
                block_FxC = f.read(block_frames, dtype="float32", always_2d=True, out=buffer_FxC)
            except (soundfile.LibsndfileError, RuntimeError) as e:
                raise UserError(
                    f"{info.path} is corrupt after {frames_read} frames ({_reason(e)}): export or copy the file again"
                ) from None
            n = len(block_FxC)
            if n == 0:
                break
            frames_read += n
            mono = block_FxC[:, 0].copy()  # a copy: the buffer is reused by the next read
            for channel in range(1, info.channels):  # column adds: ~10x faster than sum(axis=1) here
                mono += block_FxC[:, channel]
            if info.channels > 1:
                mono *= np.float32(1.0 / info.channels)
            if may_be_nonfinite:  # before the resampler, whose filter would spread one NaN over its length
                nonfinite += _replace_nonfinite(mono)
            if on_read is not None:
                on_read(n)
            out = resampler.resample_chunk(mono, last=False) if resampler is not None else mono
            if len(out):
                yield out
    if nonfinite:
        _log.warning(
            f"{info.path}: {nonfinite:,} of {frames_read:,} samples are NaN or infinite; they were taken as "
            f"{'silence' if nonfinite == frames_read else 'silence (NaN) or full scale (±inf)'}"
        )
    if frames_read < info.frames and info.subtype not in _INEXACT_SUBTYPES:
        raise UserError(
            f"{info.path} is truncated: {frames_read} of {info.frames} frames could be read; "
            "export or copy the file again"
        )
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if len(tail):
            yield tail


def _replace_nonfinite(mono: np.ndarray) -> int:
    """Set NaN to 0 and ±inf to ±1 in place, as the codecs would; returns how many there were."""
    finite = np.isfinite(mono)
    count = len(mono) - int(np.count_nonzero(finite))
    if count:
        np.nan_to_num(mono, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    return count


def resample(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Mono float32 audio at `rate` Hz as `to` Hz, with the quality reading uses."""
    x = np.asarray(x, np.float32)
    if check_rate(rate) == check_rate(to) or len(x) == 0:
        return x
    return soxr.resample(x, rate, to, quality="HQ").astype(np.float32, copy=False)


def read_mono(path: str | os.PathLike, rate: int) -> np.ndarray:
    """A whole (short) file as float32 mono at `rate` Hz."""
    blocks = list(stream_mono(path, rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


# ---- writing -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path next to `path`; on success it replaces `path`, on any error it is removed.

    So an output is either complete or absent, and an existing file survives a failed run. Without `force`
    an existing `path` is a UserError (checked by paths.check_output_file, before any work). Missing parent
    folders are made, and removed again if the block fails. The caller creates the temporary file (so it
    gets the umask); an OSError in the block becomes a UserError naming the file.
    """
    path = paths.check_output_file(path, force=force)
    with files.new_output(path) as tmp:
        yield tmp


def _as_int16_from_u8(symbols: np.ndarray) -> np.ndarray:
    """Linear 8-bit symbols as int16 (u - 128) << 8, which libsndfile stores in PCM_U8 as exactly u again."""
    return ((symbols.astype(np.int16) - 128) << 8).astype(np.int16)


def _as_int16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] as int16: round half up of x * 32768, clipped (NaN -> 0)."""
    scaled = np.floor(np.nan_to_num(np.asarray(audio, np.float64)) * 32768.0 + 0.5)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def write_wav(path: str | os.PathLike, samples, rate: int, subtype: str | None = None) -> Path:
    """Write mono (N,) or multichannel (N, C) audio as a WAV, atomically (replacing `path` if it exists).

    uint8 samples are linear 8-bit symbols: written as PCM_U8 (the default for them) they are the exact bytes;
    with another subtype they are converted exactly ((u - 128) / 128). Float samples default to PCM_16; to
    PCM_U8 they are quantised with codec.linear_encode (sox's rounding, not libsndfile's truncation).
    """
    samples = np.asarray(samples)
    rate = check_rate(rate)
    if samples.dtype == np.uint8:
        subtype = subtype or "PCM_U8"
        data = _as_int16_from_u8(samples) if subtype == "PCM_U8" else codec.linear_decode(samples)
    else:
        subtype = subtype or "PCM_16"
        data = samples.astype(np.float32)
        if subtype == "PCM_U8":
            data = _as_int16_from_u8(codec.linear_encode(data))
    if not soundfile.check_format("WAV", subtype):
        raise UserError(f"WAV cannot hold subtype '{subtype}': use PCM_U8, PCM_16, PCM_24, PCM_32 or FLOAT")
    with atomic_output(path, force=True) as tmp:
        open(tmp, "xb").close()  # by Python first, so a folder that cannot be written is named plainly
        try:
            soundfile.write(sf_name(tmp), data, rate, subtype=subtype, format="WAV")
        except (soundfile.LibsndfileError, RuntimeError) as e:
            raise UserError(f"cannot write {path}: {_reason(e)}; check the free space") from None
    return Path(path)


_STREAM_SUBTYPES = {"PCM_U8": (1, 8), "PCM_16": (1, 16), "FLOAT": (3, 32)}  # WAVE format tag, bits


class WavStreamWriter:
    """A mono WAV that grows while it is written and is a complete, playable file after every `write`.

    libsndfile writes the sizes into the header only on close (its flush does not), so a sampler that is
    killed would leave a header saying 0 frames. This writer keeps the canonical header itself:
    each write appends the samples first, then patches the RIFF and data sizes, then flushes to the OS.
    An existing file at `path` is replaced. Use as a context manager or call close().
    """

    def __init__(self, path: str | os.PathLike, rate: int, subtype: str = "PCM_U8"):
        if subtype not in _STREAM_SUBTYPES:
            raise UserError(
                f"streamed WAV subtype must be one of {', '.join(_STREAM_SUBTYPES)}, got '{subtype}'"
            )
        self.path = Path(path)
        self.rate = check_rate(rate)
        self.subtype = subtype
        self.frames = 0
        self._tag, self._bits = _STREAM_SUBTYPES[subtype]
        self._data_bytes = 0
        try:
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}") from None
        self._header_bytes = len(self._header())
        self._file.write(self._header())
        self._file.flush()

    def _header(self) -> bytes:
        """Canonical header; FLOAT (format tag 3) also gets cbSize and the `fact` chunk that non-PCM needs."""
        align = self._bits // 8
        fmt = struct.pack("<HHIIHH", self._tag, 1, self.rate, self.rate * align, align, self._bits)
        fact = b""
        if self._tag == 3:
            fmt += struct.pack("<H", 0)
            fact = struct.pack("<4sII", b"fact", 4, self.frames)
        chunks = (
            struct.pack("<4sI", b"fmt ", len(fmt))
            + fmt
            + fact
            + struct.pack("<4sI", b"data", self._data_bytes)
        )
        riff_size = 4 + len(chunks) + self._data_bytes + (self._data_bytes & 1)
        return struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE") + chunks

    def _payload(self, samples: np.ndarray) -> bytes:
        if samples.dtype == np.uint8:  # linear 8-bit symbols, converted exactly
            if self.subtype == "PCM_U8":
                return samples.tobytes()
            if self.subtype == "PCM_16":
                return _as_int16_from_u8(samples).astype("<i2").tobytes()
            return codec.linear_decode(samples).astype("<f4").tobytes()
        audio = np.asarray(samples, dtype=np.float32)
        if self.subtype == "PCM_U8":
            return codec.linear_encode(audio).tobytes()
        if self.subtype == "PCM_16":
            return _as_int16(audio).astype("<i2").tobytes()
        return audio.astype("<f4").tobytes()

    def write(self, samples) -> None:
        """Append mono samples: uint8 linear symbols, or float audio in [-1, 1]."""
        samples = np.asarray(samples).reshape(-1)
        payload = self._payload(samples)
        if self._data_bytes + len(payload) > 0xFFFFFFFF - 64:
            raise UserError(f"{self.path} would exceed the 4 GiB a WAV file can hold: write shorter samples")
        f = self._file
        f.seek(self._header_bytes + self._data_bytes)
        f.write(payload)
        self._data_bytes += len(payload)
        self.frames += len(samples)
        if self._data_bytes & 1:
            f.write(b"\0")  # RIFF pad byte; the next write starts over it
        f.seek(0)
        f.write(self._header())
        f.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> WavStreamWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- other formats: what libsndfile writes, for sampled audio (finalised on close) ---------------------------


def format_subtypes(fmt: str) -> list[str]:
    """The subtypes libsndfile writes in the major format `fmt` ("FLAC" -> PCM_S8, PCM_16, PCM_24); [] if
    this libsndfile has no such format (MP3 needs libsndfile >= 1.1)."""
    return list(soundfile.available_subtypes(fmt)) if fmt in soundfile.available_formats() else []


def cannot_write(fmt: str, subtype: str, rate: int) -> str | None:
    """Why libsndfile cannot write mono `fmt`/`subtype` at `rate` Hz (Opus at 11025 Hz, say), or None.
    Tried on a file in memory, so a refusal comes before anything is sampled."""
    try:
        with soundfile.SoundFile(io.BytesIO(), "w", rate, 1, subtype, format=fmt) as f:
            f.write(np.zeros(64, np.float32))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        return _reason(e)
    return None


class SoundFileWriter:
    """Mono audio of any format libsndfile writes (FLAC, OGG, MP3, AIFF ...), appended block by block; the
    file is complete only after close(). `path` must not exist (callers write to a temporary name)."""

    def __init__(
        self, path: str | os.PathLike, rate: int, fmt: str, subtype: str, *, name: str | None = None
    ):
        self.path = Path(path)
        self.name = name or str(path)  # in messages: the output the user named, not a temporary file
        self.frames = 0
        self._pcm = subtype.startswith("PCM")
        try:
            open(self.path, "xb").close()  # by Python first: a folder that cannot be written is named plainly
            self._file = soundfile.SoundFile(sf_name(path), "w", check_rate(rate), 1, subtype, format=fmt)
        except OSError as e:
            raise UserError(f"cannot write {self.name}: {e.strerror or e}") from None
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            self.path.unlink(missing_ok=True)
            raise UserError(f"cannot write {self.name} as {fmt} {subtype}: {_reason(e)}") from None

    def write(self, samples) -> None:
        """Append uint8 linear symbols (stored exactly, as int16) or float audio in [-1, 1]."""
        samples = np.asarray(samples).reshape(-1)
        if samples.dtype == np.uint8:
            data = _as_int16_from_u8(samples)
        else:  # PCM rounded as WavStreamWriter does; lossy encoders take the floats
            data = _as_int16(samples) if self._pcm else samples.astype(np.float32)
        try:
            self._file.write(data)
        except (soundfile.LibsndfileError, RuntimeError) as e:
            raise UserError(f"cannot write {self.name}: {_reason(e)}; check the free space") from None
        self.frames += len(data)

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except (soundfile.LibsndfileError, RuntimeError) as e:
                raise UserError(f"cannot finish {self.name}: {_reason(e)}; check the free space") from None
