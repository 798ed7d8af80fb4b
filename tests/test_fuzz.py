"""Every parser, fed corrupted and random input, gives a correct result or a UserError — never a traceback."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxvoice import audio, codec, config, corpus
from jaxvoice.errors import UserError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _user_error_or(fn, *args):
    """Call fn; a UserError is an accepted outcome (returned as None). Anything else propagates and fails."""
    try:
        return fn(*args)
    except UserError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))  # one line, something said
        return None


# --- config TOML and overrides -----------------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=300))
def test_config_toml_text(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.toml"
        path.write_text(text, encoding="utf-8")
        cfg = _user_error_or(config.load, path)
        assert cfg is None or isinstance(cfg, config.Config)


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(["model", "train", "sample", "x"]),
                            st.dictionaries(st.sampled_from([k.split(".")[1] for k in config.all_keys()] + ["zz"]),
                                            json_values, max_size=4), max_size=3))  # fmt: skip
def test_config_tables_of_any_values(tree):
    cfg = _user_error_or(config.from_dict, tree)
    if cfg is not None:  # whatever was accepted is a valid config that survives a round trip
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "c.toml"
            path.write_text(config.dumps(cfg))
            assert config.load(path) == cfg


@FUZZ
@given(key=st.sampled_from(config.all_keys()) | st.text(max_size=20), value=st.text(max_size=20))
def test_config_overrides(key, value):
    cfg = _user_error_or(config.apply_overrides, config.Config(), [f"{key}={value}"])
    assert cfg is None or isinstance(cfg, config.Config)


# --- corpus meta.json ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzzcorpus")
    (root / "in.bin").write_bytes(bytes(range(256)) * 8)
    corpus.prepare([root / "in.bin"], root / "corpus", codec="bytes", quiet=True)
    return root / "corpus"


@FUZZ
@given(key=st.sampled_from(["format_version", "codec", "rate", "length", "num_symbols", "splits", "sha256",
                            "sources", "new_key"]),
       value=json_values, delete=st.booleans())  # fmt: skip
def test_meta_json_with_a_field_changed(good_corpus, key, value, delete):
    meta = json.loads((good_corpus / "meta.json").read_text())
    if delete:
        meta.pop(key, None)
    else:
        meta[key] = value
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "c"
        shutil.copytree(good_corpus, copy)
        (copy / "meta.json").write_text(json.dumps(meta))
        result = _user_error_or(corpus.open_corpus, copy)
        if result is not None:
            assert sum(len(result.split(s)) for s in ("train", "val", "test")) == len(result.data)


@FUZZ
@given(raw=st.binary(max_size=400))
def test_meta_json_random_bytes(good_corpus, raw):
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "c"
        shutil.copytree(good_corpus, copy)
        (copy / "meta.json").write_bytes(raw)
        assert _user_error_or(corpus.read_meta, copy) is None or raw.strip().startswith(b"{")


# --- audio files ----------------------------------------------------------------------------------------------


def _wav_bytes(subtype: str, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    t = np.arange(2000) / 8000
    sf.write(
        buffer, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000, subtype=subtype, format=fmt
    )
    return buffer.getvalue()


VALID_AUDIO = {
    "wav16": (_wav_bytes("PCM_16"), ".wav"),
    "wavfloat": (_wav_bytes("FLOAT"), ".wav"),
    "flac": (_wav_bytes("PCM_16", "FLAC"), ".flac"),
}


@FUZZ
@given(name=st.sampled_from(sorted(VALID_AUDIO)), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
       min_size=1, max_size=8), cut=st.none() | st.integers(0, 5000))  # fmt: skip
def test_corrupted_audio_files(name, flips, cut):
    data, suffix = VALID_AUDIO[name]
    data = bytearray(data)
    for position, value in flips:
        data[position % len(data)] = value
    if cut is not None:
        data = data[:cut]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(bytes(data))
        samples = _user_error_or(audio.read_mono, path, 11025)
        assert samples is None or (samples.dtype == np.float32 and samples.ndim == 1)


@FUZZ
@given(raw=st.binary(max_size=2000), suffix=st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".aiff"]))
def test_random_bytes_as_audio(raw, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(raw)
        samples = _user_error_or(audio.read_mono, path, 11025)
        assert samples is None or samples.ndim == 1


# --- the bytes <-> UTF-8 text converter -------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=200))
def test_utf8_decoder_on_any_text(text):
    data = _user_error_or(codec.text_to_bytes, text)
    if data is not None:  # accepted text is exactly what the encoder makes of those bytes
        assert codec.bytes_to_text(data) == text.removesuffix("\n").removesuffix("\r")


@FUZZ
@given(data=st.binary(max_size=300))
def test_utf8_round_trip(data):
    assert codec.text_to_bytes(codec.bytes_to_text(data)) == data
