"""The 256-symbol codecs: float audio <-> uint8 (linear, μ-law), and bytes <-> UTF-8 text (torch-rnn interop).

numpy only, so the training and sampling code can import it without audio libraries.

linear: the byte an unsigned 8-bit WAV stores: u = clip(floor(128 x + 0.5), -128, 127) + 128, so 0.0 -> 128,
  -1 -> 0, +1 -> 255 (clipped), and decode is (u - 128) / 128. This is sox's rule (SOX_SAMPLE_TO_UNSIGNED_8BIT:
  add half an LSB, shift, clip), checked against `sox -D ... -e unsigned -b 8`: every 16-bit value gives the
  same byte. libsndfile's own float -> PCM_U8 path truncates instead (½ LSB lower), which is why audio.py
  writes our uint8 symbols to WAV bit-exactly rather than through floats.
mulaw: μ = 255 companding as in WaveNet (ibab/tensorflow-wavenet): f = sign(x) ln(1 + μ|x|) / ln(1 + μ),
  u = floor((f + 1) / 2 * 255 + 0.5). Codes are symmetric (decode(u) == -decode(255 - u)); there is no exact
  zero, silence encodes to 128.
text: each byte value is one fixed printable character (printable ASCII stands for itself), so a byte stream
  can go through a character-level text tool (torch-rnn, char-rnn) and back.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Iterable, Iterator

import numpy as np

from jaxvoice.errors import UserError

AUDIO_CODECS = ("linear", "mulaw")
CODECS = (*AUDIO_CODECS, "bytes")  # bytes: any file taken byte by byte (no audio decoding)
NUM_SYMBOLS = 256
MU = 255


def check_codec(name: str, *, audio: bool = False) -> str:
    """`name` if it is a known codec (an audio one if `audio`), else a UserError listing the choices."""
    choices = AUDIO_CODECS if audio else CODECS
    if name not in choices:
        if audio and name == "bytes":
            raise UserError("codec 'bytes' holds raw bytes, not audio: use the symbols as they are")
        raise UserError(f"unknown codec '{name}': choose one of {', '.join(choices)}")
    return name


def _as_float64(audio) -> np.ndarray:
    """float64 so that 128 x + 0.5 is exact for float32 input; NaN -> 0, ±inf -> ±1 (then clipped)."""
    return np.nan_to_num(np.asarray(audio, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)


def linear_encode(audio) -> np.ndarray:
    """float audio in [-1, 1] (anything outside is clipped) -> uint8 as an unsigned 8-bit WAV stores it."""
    q = np.clip(np.floor(_as_float64(audio) * 128.0 + 0.5), -128, 127)
    return (q + 128).astype(np.uint8)


def linear_decode(symbols) -> np.ndarray:
    """uint8 -> float32 in [-1, 127/128]: (u - 128) / 128, exact, so linear_encode(linear_decode(u)) == u."""
    return ((np.asarray(symbols, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0).astype(np.float32)


def mulaw_encode(audio) -> np.ndarray:
    """float audio in [-1, 1] -> uint8 μ-law code (μ = 255), monotonic non-decreasing in the input."""
    x = np.clip(_as_float64(audio), -1.0, 1.0)
    f = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)
    return np.clip(np.floor((f + 1.0) / 2.0 * MU + 0.5), 0, MU).astype(np.uint8)


def mulaw_decode(symbols) -> np.ndarray:
    """uint8 μ-law code -> float32 audio in [-1, 1]; mulaw_encode(mulaw_decode(u)) == u for all 256 codes."""
    f = 2.0 * np.asarray(symbols, dtype=np.uint8).astype(np.float64) / MU - 1.0
    return (np.sign(f) * np.expm1(np.abs(f) * np.log1p(MU)) / MU).astype(np.float32)


_ENCODERS = {"linear": linear_encode, "mulaw": mulaw_encode}
_DECODERS = {"linear": linear_decode, "mulaw": mulaw_decode}


def encode(codec: str, audio) -> np.ndarray:
    """float audio -> uint8 symbols with the named audio codec."""
    return _ENCODERS[check_codec(codec, audio=True)](audio)


def decode(codec: str, symbols) -> np.ndarray:
    """uint8 symbols -> float32 audio with the named audio codec."""
    return _DECODERS[check_codec(codec, audio=True)](symbols)


# ---- bytes <-> UTF-8 text ----------------------------------------------------------------------------------


def _text_char(byte: int) -> str:
    """Printable ASCII and Latin-1 letters/signs stand for themselves; the rest (controls, space, DEL, NBSP,
    soft hyphen) move up by 0x100 into Latin Extended-A/B letters, so every character is 1 or 2 UTF-8 bytes."""
    if 0x21 <= byte <= 0x7E or (0xA1 <= byte <= 0xFF and byte != 0xAD):
        return chr(byte)
    return chr(0x100 + byte)


BYTE_TO_CHAR = "".join(_text_char(b) for b in range(256))


def _is_safe_char(ch: str) -> bool:
    """Visible, one code point, not whitespace/control/format/mark, and unchanged by NFC normalisation."""
    category = unicodedata.category(ch)
    return (
        ch.isprintable() and not ch.isspace() and category[0] not in "CZM"
        and unicodedata.normalize("NFC", ch) == ch
    )  # fmt: skip


_CODEPOINTS = np.array([ord(c) for c in BYTE_TO_CHAR], dtype=np.uint32)
_INVERSE = np.full(int(_CODEPOINTS.max()) + 1, -1, dtype=np.int16)
_INVERSE[_CODEPOINTS] = np.arange(256, dtype=np.int16)


def bytes_to_text(data) -> str:
    """Bytes (or uint8 array) -> text of exactly len(data) characters, no trailing newline."""
    if isinstance(data, bytes | bytearray | memoryview):
        symbols = np.frombuffer(data, dtype=np.uint8)
    else:
        symbols = np.asarray(data, dtype=np.uint8)
    return _CODEPOINTS[symbols].tobytes().decode("utf-32-le")


def _chars_to_bytes(text: str, offset: int, name: str) -> bytes:
    """Map characters back; `offset` is the character offset of text[0] in the whole input (for messages)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    values = _INVERSE[np.minimum(points, len(_INVERSE) - 1)]
    bad = (values < 0) | (points >= len(_INVERSE))
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(
            f"{name}: character {offset + i} is {text[i]!r} (U+{ord(text[i]):04X}), which is not one of the 256 "
            "characters `jaxvoice encode` writes: decode only text made by `jaxvoice encode` or sampled from it"
        )
    return values.astype(np.uint8).tobytes()


def text_chunks_to_bytes(chunks: Iterable[str], name: str = "text") -> Iterator[bytes]:
    """Decode text given in pieces. One final "\\n" or "\\r\\n" is ignored: editors and text tools often add
    one, and the map never produces whitespace, so it cannot be data. Any other newline is an error."""
    carry, offset = "", 0
    for chunk in chunks:
        text = carry + chunk
        keep = max(len(text) - 2, len(text.rstrip("\r\n")))  # hold back what may be the final newline
        carry = text[keep:]
        if keep:
            yield _chars_to_bytes(text[:keep], offset, name)
        offset += keep
    if carry.endswith("\r\n"):
        carry = carry[:-2]
    elif carry.endswith("\n"):
        carry = carry[:-1]
    if carry:
        yield _chars_to_bytes(carry, offset, name)


def text_to_bytes(text: str, name: str = "text") -> bytes:
    """Inverse of bytes_to_text (ignoring one final newline); a foreign character -> UserError with its offset."""
    return b"".join(text_chunks_to_bytes([text], name))


def utf8_chunks(blobs: Iterable[bytes], name: str = "input") -> Iterator[str]:
    """Decode UTF-8 arriving in byte blocks; invalid UTF-8 -> UserError naming the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    fed = start = 0  # start: byte offset of what the decoder is decoding (bytes it held back + the blob)
    try:
        for blob in blobs:
            start = fed - len(decoder.getstate()[0])
            fed += len(blob)
            yield decoder.decode(blob)
        start = fed - len(decoder.getstate()[0])
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{name} is not UTF-8 text (invalid byte at byte offset {start + e.start}): "
            "give a file written by `jaxvoice encode`"
        ) from None
