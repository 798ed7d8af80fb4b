"""Where sampled symbols go: one file per stream, in the format its extension names, checked before sampling.

- `.wav` (or no extension): a WAV that is complete and playable after every chunk (audio_write.WavStreamWriter);
  linear symbols are its PCM_U8 bytes, μ-law symbols are decoded to PCM_16.
- another extension that libsndfile writes (.flac, .ogg, .opus, .mp3, .aiff, .au, .caf, .w64, .rf64): that
  format, through soundfile, into a temporary file beside the output that is finalised and renamed onto it
  when the sample ends or is interrupted (Ctrl-C): the output is a complete file or absent. (A SIGKILL
  leaves the hidden temporary file; a WAV is the format that survives one.)
- a bytes corpus (symbols with no audio meaning): the raw bytes, whatever the extension.

Sizes are checked before anything is sampled: a WAV, AIFF or AU file holds less than 4 GiB of audio data,
and the outputs must fit in the free space of their disks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxvoice import audio_write, files, paths
from jaxvoice import codec as codec_lib
from jaxvoice.errors import UserError

STREAMED = ("", ".wav", ".wave")  # written by audio_write.WavStreamWriter
# extension -> (libsndfile major format, subtype; None: 8-bit PCM for linear symbols, else 16-bit)
_FORMATS = {
    ".flac": ("FLAC", None), ".ogg": ("OGG", "VORBIS"), ".oga": ("OGG", "VORBIS"), ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"), ".aif": ("AIFF", None), ".aiff": ("AIFF", None), ".au": ("AU", None),
    ".snd": ("AU", None), ".caf": ("CAF", None), ".w64": ("W64", None), ".rf64": ("RF64", None),
}  # fmt: skip
# Formats whose headers count the audio data in 32 bits: at most this many bytes of it.
_MAX_DATA_BYTES = {"WAV": 0xFFFFFFFF - 64, "AIFF": 0xFFFFFFFF - 64, "AU": 0xFFFFFFFF - 64}
HEADER_BYTES = 4096  # room for any header (CAF's is 4 KiB) in the disk estimate
LOSSY_BYTES_PER_SECOND = 40_000  # 320 kbit/s, the most MP3 spends: a bound for the lossy encoders


class Format(NamedTuple):
    name: str  # "bytes", "WAV" (streamed) or another libsndfile major format
    subtype: str | None
    sample_bytes: int  # bytes per sample of audio data; 0 for the lossy encoders (see `file_bytes`)


def output_paths(out: str | Path, num_streams: int) -> list[Path]:
    """One path per stream: `out` itself for one stream, else out's stem plus _0 ... _N-1 (out.wav -> out_0.wav)."""
    out = Path(out)
    if num_streams == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(num_streams)]


def extension(codec_name: str) -> str:
    """The default output extension: raw bytes for a bytes corpus, else a streamed WAV."""
    return ".bin" if codec_name == "bytes" else ".wav"


@functools.cache
def writable_extensions() -> tuple[str, ...]:
    """The audio extensions this machine's libsndfile can write (MP3 needs libsndfile >= 1.1)."""
    found = [".wav"]
    for ext, (fmt, subtype) in _FORMATS.items():
        subtypes = audio_write.format_subtypes(fmt)
        if subtypes and (subtype is None or subtype in subtypes):
            found.append(ext)
    return tuple(found)


def output_format(path: str | Path, codec_name: str, rate: int | None) -> Format:
    """The format `path`'s extension names for symbols of `codec_name` at `rate` Hz; else a UserError."""
    if codec_lib.check_codec(codec_name) == "bytes":
        return Format("bytes", None, 1)
    eight_bit = codec_name == "linear"  # the symbols are 8-bit PCM exactly; μ-law decodes to 16-bit
    suffix = Path(path).suffix.lower()
    if suffix in STREAMED:
        return Format("WAV", "PCM_U8", 1) if eight_bit else Format("WAV", "PCM_16", 2)
    if suffix not in writable_extensions():
        raise UserError(
            f"{path}: jaxvoice cannot write {suffix!r} files; name the output with one of "
            f"{', '.join(writable_extensions())}"
        )
    fmt, subtype = _FORMATS[suffix]
    if subtype is None:
        subtypes = audio_write.format_subtypes(fmt)
        subtype = next(
            s for s in ("PCM_U8", "PCM_S8", "PCM_16") if s in subtypes and (eight_bit or s == "PCM_16")
        )
    reason = audio_write.cannot_write(fmt, subtype, rate)
    if reason is not None:
        raise UserError(
            f"{path}: libsndfile cannot write {fmt} ({subtype}) at {rate} Hz ({reason}): choose another "
            f"extension, e.g. .wav or .flac"
        )
    width = 0 if not subtype.startswith("PCM") else 1 if subtype in ("PCM_U8", "PCM_S8") else 2
    return Format(fmt, subtype, width)


def check_outputs(paths_: list[Path], force: bool, codec_name: str, rate: int | None) -> list[Format]:
    """Each output's format, checked with its path before any work: UserError for an output that exists
    (without `force`), is a folder or device, lies below a file, or has an extension nothing can write."""
    formats = []
    for path in paths_:
        paths.check_output_file(path, force=force)
        formats.append(output_format(path, codec_name, rate))
    return formats


def file_bytes(fmt: Format, samples: int, rate: int | None) -> int:
    """About how many bytes a file of `samples` samples takes: exact for PCM and raw bytes, a bound for lossy."""
    if fmt.sample_bytes:
        return samples * fmt.sample_bytes + HEADER_BYTES
    pcm_16 = 2 * samples  # lossy encoders stay below 16-bit PCM, and below the top MP3 bitrate
    return min(pcm_16, -(-samples * LOSSY_BYTES_PER_SECOND // (rate or 1))) + HEADER_BYTES


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def check_sizes(
    outputs: list[tuple[Path, Format]],
    samples: int,
    rate: int | None,
    *,
    longer: str = "a .w64 or .rf64 file",
) -> None:
    """UserError before sampling if an output would pass its format's 4 GiB limit (`longer` says what to
    write instead), or if the outputs need more than the free space of the disk they are on."""
    for path, fmt in outputs:
        limit = _MAX_DATA_BYTES.get(fmt.name)
        if limit is not None and samples * fmt.sample_bytes > limit:
            raise UserError(
                f"{path}: {samples:,} samples are {_size(samples * fmt.sample_bytes)} of audio, more than the "
                f"4 GiB a {fmt.name} file holds: write {longer}, or fewer samples"
            )
    needed: dict[int, list] = {}  # disk (st_dev) -> [a folder on it, bytes]
    for path, fmt in outputs:
        folder = paths.existing_ancestor(path)
        entry = needed.setdefault(os.stat(folder).st_dev, [folder, 0])
        in_place = fmt.name in ("WAV", "bytes") and path.is_file()  # --force: its space is reused
        entry[1] += file_bytes(fmt, samples, rate) - (path.stat().st_size if in_place else 0)
    for folder, total in needed.values():
        free = shutil.disk_usage(folder).free
        if total > free:
            raise UserError(
                f"the samples need about {_size(total)} on the disk of {folder} but only {_size(free)} is free: "
                "sample fewer or shorter streams, or write them to another disk"
            )


class SymbolWriter:
    """Appends uint8 symbols to one output in the format its extension names (see the module docstring):
    linear symbols are written exactly, μ-law ones decoded, a bytes corpus's raw. A WAV or raw file is
    complete after every write; another format after close(), which renames it into place. An existing file
    is replaced: callers check first (`check_outputs`)."""

    def __init__(self, path: str | Path, codec_name: str, rate: int | None):
        self.path = Path(path)
        self.codec = codec_lib.check_codec(codec_name)
        self.format = output_format(self.path, self.codec, rate)
        self.samples = 0
        self._closed = False
        self._raw = self._wav = self._sound = None
        if self.format.name == "bytes":
            try:
                self._raw = open(self.path, "wb", buffering=0)  # noqa: SIM115 (closed in close())
            except OSError as e:
                raise UserError(f"cannot write {self.path}: {e.strerror}") from None
        elif self.format.name == "WAV":
            self._wav = audio_write.WavStreamWriter(self.path, rate, self.format.subtype)
        else:
            tmp = files.temporary_path(self.path)
            self._sound = audio_write.SoundFileWriter(tmp, rate, *self.format[:2], name=str(self.path))

    def write(self, symbols: np.ndarray) -> None:
        symbols = np.asarray(symbols, np.uint8).reshape(-1)
        try:
            if self._raw is not None:
                files.write_at(self._raw, self.samples, symbols.tobytes())
            else:
                writer = self._wav or self._sound
                writer.write(symbols if self.codec == "linear" else codec_lib.decode(self.codec, symbols))
        except OSError as e:
            if self._raw is None:
                raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None
            # as the WAV writer does: back to the symbols before this write
            with contextlib.suppress(OSError):
                self._raw.truncate(self.samples)
            raise UserError(
                f"cannot write {self.path}: {e.strerror or e}; it keeps the {self.samples:,} samples written before"
            ) from None
        self.samples += symbols.size

    def close(self, keep: bool = True) -> None:
        """Finish the file. A format written through a temporary file is renamed onto `path` if `keep` and
        anything was written, else removed (WAV and raw files are already in place)."""
        if self._closed:
            return
        self._closed = True
        if self._sound is None:
            (self._raw or self._wav).close()
            return
        try:
            self._sound.close()
            if keep and self.samples:
                os.replace(self._sound.path, self.path)
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None
        finally:
            self._sound.path.unlink(missing_ok=True)

    def __enter__(self) -> SymbolWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        # Interrupted (Ctrl-C): keep what was sampled, as a complete file. Failed: no half-written output.
        self.close(keep=kind is None or issubclass(kind, KeyboardInterrupt))


def sample_to_files(
    params: dict,
    model_cfg,
    sample_cfg,
    corpus_meta: dict,
    paths_: list[Path],
    *,
    length: int,
    key,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    weights: str | None = None,
    chunk: int | None = None,
    prime: np.ndarray | None = None,
    include_prime: bool = False,
    dp=None,
    on_chunk=None,
) -> list[SymbolWriter]:
    """Sample `length` symbols per stream (one stream per path) from `params` and write them as they come:
    what `jaxvoice sample` and sampling while training (`hooks.Sample`) both do, so the same settings give the
    same files. Settings left None come from `sample_cfg` (the run's config.sample). `on_chunk(n)` after each
    chunk of n symbols. Returns the closed writers; on Ctrl-C what was written is kept (complete files), on a
    failure files with nothing in them are removed and the error raised."""
    import contextlib

    from jaxvoice import sample

    rate = corpus_meta.get("rate") if corpus_meta["codec"] != "bytes" else None
    chunks = sample.generate(
        params, model_cfg, key, length=length, num_streams=len(paths_),
        temperature=sample_cfg.temperature if temperature is None else temperature,
        prime=prime, greedy=greedy,
        top_k=top_k if top_k is not None else (sample_cfg.top_k or None),
        top_p=sample_cfg.top_p if top_p is None else top_p,
        chunk=min(chunk or sample_cfg.chunk, length),  # a longer chunk would be computed and dropped
        start_token=sample.SILENCE if rate else sample.BYTES_START, dp=dp,
        weights=weights or sample_cfg.weights,
    )  # fmt: skip
    writers: list[SymbolWriter] = []
    try:
        with contextlib.ExitStack() as stack:
            for path in paths_:
                writers.append(stack.enter_context(SymbolWriter(path, corpus_meta["codec"], rate)))
            if include_prime:
                for writer in writers:
                    writer.write(prime)
            for chunk_BxN in chunks:
                for writer, row in zip(writers, chunk_BxN, strict=True):
                    writer.write(row)
                if on_chunk is not None:
                    on_chunk(chunk_BxN.size)
    except KeyboardInterrupt as e:
        raise Interrupted(writers) from e
    except BaseException:
        for writer in writers:
            if not writer.samples:
                writer.path.unlink(missing_ok=True)
        raise
    return writers


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while sampling; `writers` are the outputs, closed, with what they hold (`samples`)."""

    def __init__(self, writers: list[SymbolWriter]):
        super().__init__()
        self.writers = writers
