"""video.py + `jaxvoice video`: a real tiny run's video decoded with PyAV — its streams, length, sound, sync
and pictures — the samples it makes for checkpoints without one, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from conftest import assert_user_error, run_jaxvoice, sawtooth, write_audio

from jaxvoice import video, video_frames
from jaxvoice.errors import UserError

RATE = 11025
FAST = ["--set", "model.rnn_size=32", "--set", "train.batch_size=8", "--set", "train.seq_length=16"]
SMALL = ["--width", "320", "--height", "180", "--fps", "10"]
FPS = 10


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """6 steps of the tiny preset on a sawtooth, checkpoints (and val rows) at 2, 4, 6, a 1 s sample of each."""
    from jaxvoice import corpus

    root = tmp_path_factory.mktemp("video")
    wav = write_audio(root / "saw.wav", sawtooth(RATE / 16, RATE, 6.0, 0.8), RATE)
    corpus.prepare([wav], root / "corpus", rate=RATE, codec="linear", quiet=True)
    run = root / "run"
    every = ["--set", "train.checkpoint_every=2", "--set", "train.eval_every=2"]
    run_jaxvoice(
        "train", "--config", "tiny", "--data", root / "corpus", "--out", run, *FAST, *every, "--steps", "6",
        "--quiet", check=True,
    )  # fmt: skip
    run_jaxvoice("sample", "--run", run, "--checkpoint", "all", "--seconds", "1", "-q", check=True)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_2.wav", "step_4.wav", "step_6.wav"]
    return run


class Decoded:
    """An MP4 as PyAV reads it: its streams, durations, every frame (RGB) and the sound (float mono)."""

    def __init__(self, path: Path):
        import av

        with av.open(str(path)) as container:
            self.kinds = [s.type for s in container.streams]
            v, a = container.streams.video[0], container.streams.audio[0]
            self.codecs = (v.codec_context.name, a.codec_context.name)
            self.pix_fmt, self.size = v.codec_context.pix_fmt, (v.codec_context.width, v.codec_context.height)
            self.video_seconds = float(v.duration * v.time_base)
            self.audio_seconds = float(a.duration * a.time_base)
            self.audio_rate = a.rate
            decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        self.times = np.array([t for t, _ in decoded])
        self.frames = [f for _, f in decoded]
        with av.open(str(path)) as container:
            self.sound = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])

    def frame_at(self, seconds: float) -> np.ndarray:
        return self.frames[int(np.argmin(np.abs(self.times - seconds)))]


def samples_of(run: Path, steps) -> list[np.ndarray]:
    return [soundfile.read(run / "samples" / f"step_{s}.wav", dtype="float32")[0] for s in steps]


def playhead_x(frame: np.ndarray, box: video_frames.Box) -> int:
    """The column of the waveform panel where red stands out most (the playhead)."""
    view = box.of(frame).astype(np.int64)
    redness_W = (view[..., 0] - view[..., 2]).mean(axis=0)
    assert redness_W.max() > 40, redness_W.max()
    return int(np.argmax(redness_W))


def curve_extent(frame: np.ndarray, box: video_frames.Box, plot_h: int) -> int:
    """One past the rightmost column of the graph's plot area holding the loss curve's blue."""
    view = box.of(frame)[:plot_h].astype(np.int64)
    blue_W = ((view[..., 2] - view[..., 0]) > 50).any(axis=0)
    return int(np.flatnonzero(blue_W)[-1]) + 1 if blue_W.any() else 0


def test_the_video_plays_every_sample_in_sync_over_its_growing_loss_curve(base_run, tmp_path):
    out = tmp_path / "video.mp4"
    proc = run_jaxvoice("video", "--run", base_run, "-o", out, *SMALL, check=True)
    assert proc.stdout.strip().startswith(f"wrote {out}")
    got = Decoded(out)
    assert got.kinds == ["video", "audio"] and got.codecs == ("h264", "aac")
    assert got.pix_fmt == "yuv420p" and got.size == (320, 180)
    wavs = samples_of(base_run, [2, 4, 6])
    expected_s = video.CARD_SECONDS + sum(len(x) for x in wavs) / RATE
    assert abs(got.video_seconds - expected_s) <= 1 / FPS and abs(got.audio_seconds - expected_s) <= 1 / FPS
    assert abs(len(got.frames) / FPS - expected_s) <= 1 / FPS

    # The sound is the card's silence and then the three samples, in step with the picture.
    heard = soxr.resample(got.sound, got.audio_rate, RATE)
    played = np.concatenate([np.zeros(round(video.CARD_SECONDS * RATE), np.float32), *wavs])
    heard = heard[: len(played)]
    assert len(heard) >= len(played) - RATE // FPS
    from scipy.signal import correlate

    lags = np.arange(-len(played) + 1, len(heard))
    corr = correlate(heard, played[: len(heard)], method="fft") / np.sqrt(
        np.dot(heard, heard) * np.dot(played, played)
    )
    best = int(lags[np.argmax(corr)])
    assert abs(best) <= RATE // FPS, best  # the best alignment is within one frame of lag 0
    assert corr[np.abs(lags) <= RATE // FPS].max() >= 0.9

    # Across each section the playhead moves right; the loss curve reaches further with every checkpoint.
    lay = video_frames.layout(320, 180)
    start, extents = video.CARD_SECONDS, []
    for x in wavs:
        seconds = len(x) / RATE
        moments = [start + f * seconds for f in (0.15, 0.5, 0.85)]
        heads = [playhead_x(got.frame_at(t), lay.wave) for t in moments]
        assert heads[0] < heads[1] < heads[2], heads
        extents.append([curve_extent(got.frame_at(t), box, lay.plot_h) for t in moments for box in [lay.log]])
        start += seconds
    flat = [e for section in extents for e in section]
    assert flat == sorted(flat) and flat[0] < flat[-1], extents
    assert extents[0][-1] < extents[-1][0], extents  # step 2's section shows less than step 6's
    card = got.frame_at(1.0)
    assert curve_extent(card, lay.log, lay.plot_h) == 0  # the card: no graphs yet


def test_a_checkpoint_without_a_sample_gets_the_one_jaxvoice_sample_makes(run_copy, tmp_path):
    original = (run_copy / "samples" / "step_4.wav").read_bytes()
    (run_copy / "samples" / "step_4.wav").unlink()
    out = tmp_path / "out" / "v.mp4"  # a missing folder is made
    proc = run_jaxvoice("video", "--run", run_copy, "-o", out, *SMALL, "--seconds", "1", check=True)
    assert "no sample for checkpoint step 4" in proc.stderr and "warning:" in proc.stderr
    assert (run_copy / "samples" / "step_4.wav").read_bytes() == original
    assert abs(Decoded(out).audio_seconds - (video.CARD_SECONDS + 3.0)) <= 1 / FPS
    assert not [p for p in run_copy.rglob("*.tmp")] and not [p for p in tmp_path.rglob("*.tmp")]


def test_chosen_checkpoints_seconds_and_several_runs(base_run, tmp_path):
    out = tmp_path / "two.mp4"
    run_jaxvoice(
        "video", "--run", base_run, "--run", base_run, "-o", out, *SMALL, "--checkpoints", "2,6",
        "--seconds", "0.5", "--title", "two runs", "-q", check=True,
    )  # fmt: skip
    got = Decoded(out)
    assert abs(got.audio_seconds - 2 * (video.CARD_SECONDS + 2 * 0.5)) <= 1 / FPS
    out = tmp_path / "every.mp4"
    run_jaxvoice("video", "--run", base_run, "-o", out, *SMALL, "--checkpoints", "every_2", "-q", check=True)
    assert abs(Decoded(out).audio_seconds - (video.CARD_SECONDS + 2 * 1.0)) <= 1 / FPS  # steps 2 and 6


def test_the_library_writes_the_run_video_and_prints_nothing(run_copy, capsys):
    path = video.make_video([run_copy], run_copy / "video.mp4", width=320, height=180, fps=10, seconds=0.3)
    assert path == run_copy / "video.mp4" and path.stat().st_size > 1000
    assert capsys.readouterr() == ("", "")
    with pytest.raises(UserError, match="already exists"):
        video.make_video([run_copy], path, width=320, height=180, fps=10)
    video.make_video([run_copy], path, width=320, height=180, fps=5, seconds=0.3, force=True)
    assert len(Decoded(path).frames) == pytest.approx(5 * (video.CARD_SECONDS + 0.9), abs=1)


def _damage_checkpoint(run: Path, step: int) -> None:
    files = sorted(
        p for p in (run / "checkpoints" / str(step)).rglob("*") if p.is_file() and p.stat().st_size > 64
    )
    with open(files[0], "r+b") as f:
        f.truncate(files[0].stat().st_size // 2)


BAD = [
    ("no checkpoints", lambda run: [shutil.rmtree(run / "checkpoints"), shutil.rmtree(run / "samples")], [],
     ["no checkpoints and no samples"]),
    ("unknown step", None, ["--checkpoints", "2,5"], ["no checkpoint or sample at step 5", "2, 4, 6"]),
    ("bad choice", None, ["--checkpoints", "every_0"], ["--checkpoints"]),
    ("odd width", None, ["--width", "321"], ["--width 321", "even"]),
    ("odd height", None, ["--height", "181"], ["--height 181", "even"]),
    ("zero fps", None, ["--fps", "0"], ["--fps"]),
    ("negative fps", None, ["--fps", "-5"], ["--fps"]),
    ("zero seconds", None, ["--seconds", "0"], ["--seconds"]),
    ("not a run", lambda run: [shutil.rmtree(run), run.mkdir()], [], ["not a run directory"]),
    ("no run", lambda run: shutil.rmtree(run), [], ["does not exist"]),
    ("no sample, damaged checkpoint",
     lambda run: [(run / "samples" / "step_4.wav").unlink(), _damage_checkpoint(run, 4)], ["--seconds", "0.2"],
     ["checkpoint step 4", "no sample"]),
    ("not an mp4", None, ["-o", "{tmp}/v.avi"], ["MP4"]),
]  # fmt: skip


@pytest.mark.parametrize("setup,extra,phrases", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(run_copy, tmp_path, setup, extra, phrases):
    if setup is not None:
        setup(run_copy)
    out = tmp_path / "made" / "v.mp4"
    extra = [a.format(tmp=tmp_path) for a in extra]
    args = ["-o", out, *SMALL, *extra] if "-o" not in extra else [*SMALL, *extra]
    before = sorted(p for p in tmp_path.rglob("*"))
    assert_user_error(run_jaxvoice("video", "--run", run_copy, *args), *phrases)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no output, no folder, no temporary file


def test_a_disk_that_fills_while_the_video_encodes_is_one_line_and_leaves_no_file(base_run, small_disk):
    """The encoder's refused write ends as one line naming the video and the system's words (not FFmpeg's
    message naming its temporary file); the partial video goes, what the disk held stays."""
    filler = small_disk / "filler"
    # ~96 KiB left: the header fits, the video does not
    filler.write_bytes(b"\1" * (4 * 2**20 - 96 * 2**10))
    out = small_disk / "made" / "v.mp4"
    proc = run_jaxvoice("video", "--run", base_run, "-o", out, *SMALL, "-q")
    assert_user_error(proc, f"cannot write {out}", "No space left on device")
    assert ".tmp" not in proc.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert filler.stat().st_size == 4 * 2**20 - 96 * 2**10


def test_an_existing_output_is_kept_without_force(base_run, tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"the user's own video")
    assert_user_error(
        run_jaxvoice("video", "--run", base_run, "-o", out, *SMALL), "already exists", "--force"
    )
    assert out.read_bytes() == b"the user's own video"
    assert_user_error(run_jaxvoice("video", "--run", base_run, "--run", base_run, *SMALL), "-o OUT.mp4")
    run_jaxvoice(
        "video", "--run", base_run, "-o", out, *SMALL, "--seconds", "0.2", "--force", "-q", check=True
    )
    assert Decoded(out).codecs == ("h264", "aac")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_video_takes_import_for_user_cells():
    assert "--import" in run_jaxvoice("video", "--help", check=True).stdout


def test_a_run_of_a_cell_this_process_lacks_still_gets_its_video_from_its_samples(run_copy, tmp_path):
    config = run_copy / "config.toml"
    config.write_text(config.read_text().replace('cell = "lstm"', 'cell = "mgu"'))
    out = tmp_path / "v.mp4"
    proc = run_jaxvoice("video", "--run", run_copy, "-o", out, *SMALL, "--seconds", "0.2", check=True)
    assert "cannot be built here" in proc.stderr and "--import" in proc.stderr  # no parameter count
    assert abs(Decoded(out).audio_seconds - (video.CARD_SECONDS + 3 * 0.2)) <= 1 / FPS
