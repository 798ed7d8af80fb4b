"""codec.py: linear and μ-law quantisation, and the byte <-> text map for character-level tools."""

from __future__ import annotations

import math
import shutil
import subprocess
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvoice import codec
from jaxvoice.errors import UserError

ALL_CODES = np.arange(256, dtype=np.uint8)


# ---- linear ------------------------------------------------------------------------------------------------


def test_linear_known_values():
    x = [0.0, -1.0, 1.0, 0.5, -0.5, 1.5, -1.5, 0.5 / 128, -0.5 / 128, 1.49 / 128, 127 / 128, float("nan")]
    expected = [128, 0, 255, 192, 64, 255, 0, 129, 128, 129, 255, 128]
    np.testing.assert_array_equal(codec.linear_encode(np.array(x, dtype=np.float32)), expected)
    assert codec.linear_encode(np.zeros(3)).dtype == np.uint8


def test_linear_decode_is_exact_and_round_trips_every_code():
    audio = codec.linear_decode(ALL_CODES)
    assert audio.dtype == np.float32
    np.testing.assert_array_equal(audio, (np.arange(256) - 128) / 128)
    np.testing.assert_array_equal(codec.linear_encode(audio), ALL_CODES)


def test_linear_matches_sox_for_every_16_bit_value(tmp_path):
    """The documented rule is sox's: every 16-bit sample value must give the byte sox writes."""
    import soundfile as sf

    sox = shutil.which("sox")
    assert sox, "sox is needed for this test (Debian package 'sox'; .ci/run installs it)"
    values = np.arange(-32768, 32768, dtype=np.int16)
    sf.write(tmp_path / "all.wav", values, 11025, subtype="PCM_16")
    out = tmp_path / "all.raw"
    subprocess.run(
        [sox, "-D", tmp_path / "all.wav", "-e", "unsigned", "-b", "8", out], check=True, capture_output=True
    )
    ours = codec.linear_encode(values.astype(np.float32) / 32768)
    np.testing.assert_array_equal(ours, np.fromfile(out, dtype=np.uint8))


# ---- mu-law ------------------------------------------------------------------------------------------------


def test_mulaw_known_values():
    np.testing.assert_array_equal(codec.mulaw_encode([-1.0, 0.0, 1.0, -2.0, 2.0]), [0, 128, 255, 0, 255])
    # WaveNet's formula written out with math for one value: f(0.5) = ln(1 + 127.5) / ln(256)
    f = math.log(1 + 255 * 0.5) / math.log(256)
    assert codec.mulaw_encode([0.5])[0] == math.floor((f + 1) / 2 * 255 + 0.5) == 239
    decoded = codec.mulaw_decode(np.array([0, 255], dtype=np.uint8))
    np.testing.assert_allclose(decoded, [-1.0, 1.0], atol=1e-6)


def test_mulaw_round_trips_every_code_and_is_symmetric():
    audio = codec.mulaw_decode(ALL_CODES)
    assert audio.dtype == np.float32
    np.testing.assert_array_equal(codec.mulaw_encode(audio), ALL_CODES)
    np.testing.assert_allclose(audio, -audio[::-1], atol=1e-7)
    assert np.all(np.diff(audio) > 0)
    x = np.random.default_rng(0).uniform(-1, 1, 10_000)
    np.testing.assert_array_equal(codec.mulaw_encode(-x), 255 - codec.mulaw_encode(x).astype(int))


def test_mulaw_is_monotonic_and_spends_levels_near_zero():
    x = np.linspace(-1, 1, 200_001)
    u = codec.mulaw_encode(x).astype(int)
    assert np.all(np.diff(u) >= 0)
    assert set(np.unique(u)) == set(range(256))
    # Companding: many more levels within ±0.1 than the 26 a linear code has there.
    assert len(np.unique(u[np.abs(x) < 0.1])) > 100


def test_dispatch_by_name_and_unknown_codecs():
    x = np.linspace(-1, 1, 101)
    np.testing.assert_array_equal(codec.encode("linear", x), codec.linear_encode(x))
    np.testing.assert_array_equal(codec.encode("mulaw", x), codec.mulaw_encode(x))
    np.testing.assert_array_equal(codec.decode("mulaw", ALL_CODES), codec.mulaw_decode(ALL_CODES))
    with pytest.raises(UserError, match="unknown codec 'alaw'"):
        codec.encode("alaw", x)
    with pytest.raises(UserError, match="raw bytes"):
        codec.decode("bytes", ALL_CODES)


# ---- bytes <-> text ----------------------------------------------------------------------------------------


def test_text_map_is_256_distinct_visible_characters():
    chars = codec.BYTE_TO_CHAR
    assert len(chars) == 256 and len(set(chars)) == 256
    for ch in chars:
        category = unicodedata.category(ch)
        assert category[0] in "LNPS", (ch, category)  # letters, numbers, punctuation, symbols only
        assert ch.isprintable() and not ch.isspace(), repr(ch)
        assert unicodedata.normalize("NFC", ch) == ch
        assert len(ch.encode("utf-8")) <= 2
    # Printable ASCII stands for itself, so text inside a file stays readable.
    assert all(codec.BYTE_TO_CHAR[b] == chr(b) for b in range(0x21, 0x7F))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_bytes_text_bytes_is_identity(data):
    text = codec.bytes_to_text(data)
    assert len(text) == len(data)
    assert codec.text_to_bytes(text) == data


@settings(max_examples=100, deadline=None)
@given(
    st.binary(min_size=1, max_size=500),
    st.lists(st.integers(0, 500), max_size=6),
    st.sampled_from(["", "\n", "\r\n"]),
)
def test_text_decodes_the_same_in_any_chunks(data, cuts, newline):
    text = codec.bytes_to_text(data) + newline
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert b"".join(codec.text_chunks_to_bytes(chunks)) == data


def test_text_of_a_uint8_array_and_of_bytes_agree():
    data = bytes(range(256)) * 3
    assert codec.bytes_to_text(np.frombuffer(data, dtype=np.uint8)) == codec.bytes_to_text(data)


def test_one_final_newline_is_ignored_and_others_are_errors():
    text = codec.bytes_to_text(b"\x00\x01 abc\xff")
    assert codec.text_to_bytes(text + "\n") == codec.text_to_bytes(text + "\r\n") == b"\x00\x01 abc\xff"
    with pytest.raises(UserError, match=f"character {len(text)} is '\\\\n'"):
        codec.text_to_bytes(text + "\n\n")
    with pytest.raises(UserError, match="character 2 is "):
        codec.text_to_bytes(text[:2] + "\n" + text[2:])


def test_foreign_character_names_its_offset_even_across_chunks():
    text = codec.bytes_to_text(bytes(range(256)) * 40)
    bad = text[:7000] + " " + text[7000:]
    with pytest.raises(UserError, match="song.txt: character 7000 is ' ' \\(U\\+0020\\)"):
        codec.text_to_bytes(bad, name="song.txt")
    chunks = [bad[i : i + 999] for i in range(0, len(bad), 999)]
    with pytest.raises(UserError, match="character 7000 "):
        b"".join(codec.text_chunks_to_bytes(chunks))
    with pytest.raises(UserError, match="character 3 is '→'"):
        codec.text_to_bytes("abc→")


def test_invalid_utf8_names_the_byte_offset_across_blocks():
    blob = "ĀĀ".encode() + b"\xff" + b"abc"  # Ā is 2 bytes, so the bad byte is at 4
    with pytest.raises(UserError, match="byte offset 4"):
        list(codec.utf8_chunks([blob[:3], blob[3:]]))
    cut = "aĀ".encode()[:-1]  # ends inside a character
    with pytest.raises(UserError, match="byte offset 1"):
        list(codec.utf8_chunks([cut]))
    assert "".join(codec.utf8_chunks(["aĀb".encode()[i : i + 1] for i in range(4)])) == "aĀb"
