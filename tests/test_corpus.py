"""corpus.py: prepare (streamed, atomic), read_meta checks, open_corpus views, splits like torch-rnn."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import sawtooth, sine, write_audio

from jaxvoice import audio, codec, corpus
from jaxvoice.errors import UserError

RATE = 11025


@pytest.fixture
def audio_folder(tmp_path):
    """Nested folder: sorted by path, so b/c.wav comes between a.flac and d.wav; hidden and non-audio files
    are skipped."""
    folder = tmp_path / "voice"
    (folder / "b").mkdir(parents=True)
    write_audio(folder / "d.wav", sine(440, 8000, 0.3), 8000, subtype="PCM_U8")
    write_audio(folder / "a.flac", sine(220, 22050, 0.5), 22050, format="FLAC")
    write_audio(folder / "b" / "c.wav", np.stack([sawtooth(110, 44100, 0.4)] * 2, axis=1), 44100)
    write_audio(folder / ".hidden.wav", sine(440, 8000, 0.3), 8000)
    (folder / "notes.txt").write_text("not audio")
    return folder


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _torch_rnn_sizes(n, val_frac=0.1, test_frac=0.1):
    val, test = int(n * val_frac), int(n * test_frac)
    return n - val - test, val, test


def test_prepare_folder_concatenates_in_sorted_order(tmp_path, audio_folder):
    out = tmp_path / "corpus"
    meta = corpus.prepare([audio_folder], out, quiet=True)
    assert sorted(os.listdir(out)) == ["data.u8", "meta.json"]
    assert json.loads((out / "meta.json").read_text()) == meta
    names = ["a.flac", "c.wav", "d.wav"]
    assert [os.path.basename(s["path"]) for s in meta["sources"]] == names
    files = [audio_folder / "a.flac", audio_folder / "b" / "c.wav", audio_folder / "d.wav"]
    expected = np.concatenate([corpus.load_audio_symbols(f, RATE, "linear") for f in files])
    data = np.fromfile(out / "data.u8", dtype=np.uint8)
    np.testing.assert_array_equal(data, expected)
    n = len(data)
    assert n == 5513 + 4410 + 3308  # 0.5 s, 0.4 s, 0.3 s at 11025 Hz (5512.5 and 3307.5 round up)
    assert [s["bytes"] for s in meta["sources"]] == [5513, 4410, 3308]
    assert meta["sha256"] == _sha(out / "data.u8")
    train, val, test = _torch_rnn_sizes(n)
    assert meta["splits"] == {"train": [0, train], "val": [train, train + val], "test": [train + val, n]}
    assert meta["format_version"] == 1 and meta["codec"] == "linear" and meta["rate"] == RATE
    assert meta["num_symbols"] == 256 and meta["length"] == n
    assert meta["sources"][1]["rate"] == 44100 and meta["sources"][1]["channels"] == 2
    assert meta["sources"][2]["subtype"] == "PCM_U8" and meta["sources"][0]["format"] == "FLAC"
    assert meta["jaxvoice_version"] and meta["created"].endswith("+00:00")


def test_prepare_mulaw_and_other_rate(tmp_path, audio_folder):
    meta = corpus.prepare(
        [audio_folder / "b" / "c.wav"], tmp_path / "m", rate=16000, codec="mulaw", quiet=True
    )
    mono = audio.read_mono(audio_folder / "b" / "c.wav", 16000)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "m" / "data.u8", np.uint8), codec.mulaw_encode(mono))
    assert meta["rate"] == 16000 and meta["codec"] == "mulaw" and meta["length"] == 6400


def test_prepare_bytes_takes_any_files_and_ignores_rate(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world\n")
    (folder / "b.png").write_bytes(bytes(range(256)))
    (folder / "c.wav").write_bytes(b"RIFF but not really")
    meta = corpus.prepare([folder, folder / "a.txt"], tmp_path / "c", codec="bytes", rate=44100, quiet=True)
    expected = b"hello world\n" + bytes(range(256)) + b"RIFF but not really" + b"hello world\n"
    assert (tmp_path / "c" / "data.u8").read_bytes() == expected
    assert meta["rate"] is None and meta["seconds"] is None
    assert [s["bytes"] for s in meta["sources"]] == [12, 256, 19, 12]
    assert all(s["seconds"] is None for s in meta["sources"])


def test_split_offsets_follow_torch_rnn():
    assert corpus.split_offsets(1000, 0.1, 0.1) == {"train": [0, 800], "val": [800, 900], "test": [900, 1000]}
    assert corpus.split_offsets(999, 0.1, 0.05) == {"train": [0, 851], "val": [851, 950], "test": [950, 999]}
    assert corpus.split_offsets(10, 0.0, 0.0) == {"train": [0, 10], "val": [10, 10], "test": [10, 10]}
    assert corpus.split_offsets(20, 0.1, 0.1)["val"] == [16, 18]
    with pytest.raises(UserError, match="too short"):
        corpus.split_offsets(19, 0.1, 0.1)  # val would get 1 symbol
    with pytest.raises(UserError, match="too short"):
        corpus.split_offsets(1, 0.0, 0.0)
    for val, test in [(-0.1, 0.1), (0.5, 0.5), (0.9, 0.2), (float("nan"), 0.1), (0.1, float("inf"))]:
        with pytest.raises(UserError, match="frac"):
            corpus.split_offsets(1000, val, test)


def test_open_corpus_gives_memmap_views(tmp_path, audio_folder):
    out = tmp_path / "corpus"
    meta = corpus.prepare([audio_folder], out, quiet=True, val_frac=0.2, test_frac=0.05)
    opened = corpus.open_corpus(out)
    assert isinstance(opened.data, np.memmap) and opened.data.dtype == np.uint8 and opened.path == out
    assert opened.meta == meta
    parts = [opened.split(name) for name in corpus.SPLITS]
    for part, name in zip(parts, corpus.SPLITS, strict=True):
        start, end = meta["splits"][name]
        assert len(part) == end - start and np.shares_memory(part, opened.data)
    np.testing.assert_array_equal(np.concatenate(parts), np.fromfile(out / "data.u8", np.uint8))
    with pytest.raises(ValueError):
        parts[0][0] = 1  # read-only
    with pytest.raises(UserError, match="unknown split 'dev'"):
        opened.split("dev")
    opened.verify()


def test_verify_finds_changed_data(tmp_path, audio_folder):
    out = tmp_path / "corpus"
    corpus.prepare([audio_folder], out, quiet=True)
    raw = bytearray((out / "data.u8").read_bytes())
    raw[100] ^= 1
    (out / "data.u8").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="sha256"):
        corpus.open_corpus(out).verify()


def _meta_edit(out, **changes):
    meta = json.loads((out / "meta.json").read_text())
    meta.update(changes)
    (out / "meta.json").write_text(json.dumps(meta))


BROKEN = {  # how a corpus is broken: (edit, words the message must have)
    "missing folder": (lambda out: out.rename(out.with_name("elsewhere")), "does not exist"),
    "no meta": (lambda out: (out / "meta.json").unlink(), "not a jaxvoice corpus"),
    "bad json": (lambda out: (out / "meta.json").write_text("{oops"), "not valid JSON"),
    "json list": (lambda out: (out / "meta.json").write_text("[1, 2]"), "JSON object"),
    "newer version": (lambda out: _meta_edit(out, format_version=2), "upgrade jaxvoice"),
    "old version": (lambda out: _meta_edit(out, format_version=0), "format_version 0"),
    "missing key": (lambda out: _meta_edit(out, length=None), "'length'"),
    "unknown codec": (lambda out: _meta_edit(out, codec="alaw"), "unknown codec"),
    "no rate for audio": (lambda out: _meta_edit(out, rate=None), "'rate'"),
    "bad splits": (
        lambda out: _meta_edit(out, splits={"train": [0, 5], "val": [6, 7], "test": [7, 8]}),
        "splits",
    ),
    "no data": (lambda out: (out / "data.u8").unlink(), "no data.u8"),
    "data longer": (lambda out: (out / "data.u8").write_bytes(b"x" * 5), "incomplete or was changed"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_read_meta_checks(tmp_path, audio_folder, case):
    out = tmp_path / "corpus"
    corpus.prepare([audio_folder], out, quiet=True)
    edit, words = BROKEN[case]
    edit(out)
    with pytest.raises(UserError, match=words) as e:
        corpus.read_meta(out)
    assert str(out) in str(e.value)
    with pytest.raises(UserError):
        corpus.open_corpus(out)


def test_force_replaces_a_corpus_only_when_the_new_one_is_complete(tmp_path, audio_folder):
    out = tmp_path / "corpus"
    first = corpus.prepare([audio_folder / "a.flac"], out, quiet=True)
    with pytest.raises(UserError, match="already exists"):
        corpus.prepare([audio_folder], out, quiet=True)
    # A failing run with --force leaves the old corpus as it was, and no temporary folders.
    (tmp_path / "bad.wav").write_bytes(b"junk" * 100)
    with pytest.raises(UserError, match="bad.wav"):
        corpus.prepare([audio_folder, tmp_path / "bad.wav"], out, force=True, quiet=True)
    cut = bytearray(
        write_audio(tmp_path / "cut.flac", sine(440, 44100, 1.0), 44100, format="FLAC").read_bytes()
    )
    cut[len(cut) // 2 :] = b"\0" * (len(cut) - len(cut) // 2)
    (tmp_path / "cut.flac").write_bytes(bytes(cut))  # fails half-way through writing data.u8
    with pytest.raises(UserError, match="cut.flac"):
        corpus.prepare([audio_folder, tmp_path / "cut.flac"], out, force=True, quiet=True)
    assert corpus.read_meta(out) == first and _sha(out / "data.u8") == first["sha256"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    second = corpus.prepare([audio_folder], out, force=True, quiet=True)
    assert corpus.read_meta(out) == second and second["length"] > first["length"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_force_never_replaces_something_that_is_not_a_corpus(tmp_path, audio_folder):
    music = tmp_path / "music"
    music.mkdir()
    (music / "song.mp3").write_bytes(b"mine")
    with pytest.raises(UserError, match="not a jaxvoice corpus"):
        corpus.prepare([audio_folder], music, force=True, quiet=True)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match="not a folder"):
        corpus.prepare([audio_folder], tmp_path / "file", force=True, quiet=True)
    assert (music / "song.mp3").read_bytes() == b"mine" and (tmp_path / "file").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    corpus.prepare([audio_folder], tmp_path / "empty", force=True, quiet=True)  # an empty folder is fine


def test_missing_parents_are_made_and_removed_again_on_failure(tmp_path, audio_folder):
    with pytest.raises(UserError, match="too short"):
        corpus.prepare([audio_folder / "a.flac"], tmp_path / "x" / "y" / "c", val_frac=0.0002, quiet=True)
    assert not (tmp_path / "x").exists()
    corpus.prepare([audio_folder / "a.flac"], tmp_path / "x" / "y" / "c", quiet=True)
    assert corpus.read_meta(tmp_path / "x" / "y" / "c")["length"] == 5513


def test_corpus_inside_an_input_folder_is_not_read_back(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"abcdef" * 10)
    first = corpus.prepare([folder], folder / "corpus", codec="bytes", quiet=True)
    second = corpus.prepare([folder], folder / "corpus", codec="bytes", force=True, quiet=True)
    assert first["sha256"] == second["sha256"] and second["length"] == 60


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda p: [p / "missing.wav"], "no such file"),
        (lambda p: [p], "holds no audio files"),  # only a .txt in it
        (lambda p: [], "no inputs"),
    ],
)
def test_input_errors(tmp_path, make, words):
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(UserError, match=words):
        corpus.prepare(make(tmp_path), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_unknown_codec_and_bad_rate(tmp_path, audio_folder):
    with pytest.raises(UserError, match="unknown codec"):
        corpus.prepare([audio_folder], tmp_path / "o", codec="alaw", quiet=True)
    with pytest.raises(UserError, match="rate"):
        corpus.prepare([audio_folder], tmp_path / "o", rate=0, quiet=True)


def test_describe_and_summary(tmp_path, audio_folder):
    meta = corpus.prepare([audio_folder], tmp_path / "c", quiet=True)
    text = corpus.describe(meta, path=tmp_path / "c")
    for words in [
        "linear",
        "11025 Hz",
        "13,231 symbols",
        "1.2 s",
        "3 files",
        "a.flac",
        "44100 Hz 2 ch",
        meta["sha256"],
    ]:
        assert words in text, words
    train, val, test = _torch_rnn_sizes(13231)
    assert f"val   [{train:,}, {train + val:,})  {val:,} (10.0%)" in text
    line = corpus.summary(meta, "c")
    assert "\n" not in line and "13,231 symbols" in line and f"val {val:,}" in line and "linear" in line


def test_load_audio_symbols_for_primes(tmp_path, audio_folder):
    prime = corpus.load_audio_symbols(audio_folder / "d.wav", RATE, "mulaw")
    np.testing.assert_array_equal(prime, codec.mulaw_encode(audio.read_mono(audio_folder / "d.wav", RATE)))
    (tmp_path / "p.bin").write_bytes(b"\x00\xffhi")
    np.testing.assert_array_equal(
        corpus.load_audio_symbols(tmp_path / "p.bin", None, "bytes"), [0, 255, 104, 105]
    )
    np.testing.assert_allclose(
        corpus.decode_symbols(np.array([0, 128, 255], np.uint8), "linear"), [-1, 0, 127 / 128]
    )


def test_disk_full_is_a_user_error_and_leaves_nothing(tmp_path, audio_folder, monkeypatch):
    import errno

    def full(self, symbols):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("jaxvoice.preparing._Sink.write", full)
    with pytest.raises(UserError, match="No space left on device"):
        corpus.prepare([audio_folder], tmp_path / "new" / "c", quiet=True)
    assert sorted(os.listdir(tmp_path)) == ["voice"]
