"""Read any audio file libsndfile reads as mono float32 at a chosen rate, streamed in blocks (writing is
jaxvoice/audio_write.py's).

The only module that imports soxr (and, with audio_write.py, soundfile). Reading never holds a whole file:
blocks of BLOCK_FRAMES frames go through a downmix (the channel average, as `sox -c 1` does) and a soxr
stream (quality HQ, which is what `sox rate` uses by default), so a 1 GB WAV costs a few MB of RAM.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from jaxvoice import paths
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


def error_text(e: Exception) -> str:
    """What a soundfile/libsndfile error says, without its trailing period (for one-line messages)."""
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
        raise NotAudio(path, error_text(e)) from None


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
                    f"{info.path} is corrupt after {frames_read} frames ({error_text(e)}): export or copy the file again"
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
