"""Write audio: WAVs whole (`write_wav`) or growing and playable after every block (`WavStreamWriter`), and the
other formats libsndfile writes (`SoundFileWriter`), each to its path atomically or to a temporary name.

Reading is jaxvoice/audio.py's job; these two are the only modules that import soundfile.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile

from jaxvoice import codec, files, paths
from jaxvoice.audio import check_rate, error_text, sf_name
from jaxvoice.errors import UserError


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
            raise UserError(f"cannot write {path}: {error_text(e)}; check the free space") from None
    return Path(path)


_STREAM_SUBTYPES = {"PCM_U8": (1, 8), "PCM_16": (1, 16), "FLOAT": (3, 32)}  # WAVE format tag, bits


class WavStreamWriter:
    """A mono WAV that grows while it is written and is a complete, playable file after every `write`.

    libsndfile writes the sizes into the header only on close (its flush does not), so a sampler that is
    killed would leave a header saying 0 frames. This writer keeps the canonical header itself:
    each write appends the samples first, then patches the RIFF and data sizes, straight to the OS (the file
    is unbuffered). A kill between the two leaves that block's samples after the data the header counts: the
    file still plays every block before it. A write the disk refuses (full) is undone: the file is cut back to the samples before it,
    whose header it keeps, and the error names how many that is.
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
            self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 (closed in close())
            header = self._header()
            self._header_bytes = len(header)
            files.write_at(self._file, 0, header)
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror}") from None

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
        kept_bytes, kept_frames = self._data_bytes, self.frames
        # the RIFF pad byte after odd data; the next write starts over it
        pad = b"\0" if (kept_bytes + len(payload)) & 1 else b""
        try:
            files.write_at(self._file, self._header_bytes + kept_bytes, payload + pad)
            self._data_bytes += len(payload)
            self.frames += len(samples)
            files.write_at(self._file, 0, self._header())
        except OSError as e:
            self._data_bytes, self.frames = kept_bytes, kept_frames
            with contextlib.suppress(OSError):  # cutting back frees space; the header is rewritten in place
                self._file.truncate(self._header_bytes + kept_bytes + (kept_bytes & 1))
                files.write_at(self._file, 0, self._header())
            raise UserError(
                f"cannot write {self.path}: {e.strerror or e}; it keeps the {kept_frames:,} samples written before"
            ) from None

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
        return error_text(e)
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
            raise UserError(f"cannot write {self.name} as {fmt} {subtype}: {error_text(e)}") from None

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
            raise UserError(f"cannot write {self.name}: {error_text(e)}; check the free space") from None
        self.frames += len(data)

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except (soundfile.LibsndfileError, RuntimeError) as e:
                raise UserError(f"cannot finish {self.name}: {error_text(e)}; check the free space") from None
