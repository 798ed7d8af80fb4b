"""`jaxvoice video`: watch and hear a network learn, as the 2016 video did, in one MP4.

One section per run: a card with the run's details (3 s of silence), then each chosen checkpoint's sample
plays while the frame shows the loss graphs drawn up to that checkpoint's step and scrolling on toward the
next one, the step, epoch and val bits/sample, the sample's waveform with its playhead, and the
spectrogram of the last second heard (pictures: `video_frames`; what a run shows: `video_runs`).

The timeline is counted in samples of the output audio (AUDIO_RATE): frame k shows the moment k / fps, and
every sample is resampled to AUDIO_RATE and padded or cut to its planned length, so picture and sound stay
in step to within a frame however many sections there are. Frames are composed one at a time and handed
to the encoder (H.264 in yuv420p, AAC, through PyAV, the only module that imports it), with the audio
interleaved up to each frame's end: memory does not grow with the video's length. The MP4 is written
under a temporary name, with its index at the front (a browser starts playing before it has all of it),
and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxvoice import audio, checkpoint_samples, clips, files, paths, video_frames, video_runs
from jaxvoice.errors import UserError

AUDIO_RATE = 44100  # what every player takes (a multiple of the 11025 Hz corpora)
AUDIO_BITRATE = 128_000
CARD_SECONDS = 3.0  # a whole number of samples at every usual rate: each WAV starts on one of its own samples
MISSING_SAMPLE_SECONDS = 3.0  # a sample made for a checkpoint when neither --seconds nor other samples say
WIDTH_RANGE, HEIGHT_RANGE = (160, 3840), (90, 2160)
MAX_FPS = 120
BT709 = 1  # the value of ITU-R BT.709 in FFmpeg's colour space, primaries and transfer enums
X264 = {"preset": "veryfast", "crf": "20", "tune": "animation"}  # flat colours and thin lines: few bits


class Clip(NamedTuple):
    """A checkpoint's part of a section: its sample, how much of it plays, and where the cursor goes."""

    step: int
    path: Path
    symbols: int  # samples of the WAV that play
    rate: int  # the WAV's
    samples: int  # the same time in output samples (AUDIO_RATE)
    to_step: float  # the graphs' cursor moves from `step` to this while the sample plays


class Rendered(NamedTuple):
    path: Path
    frames: int
    seconds: float
    made: list[Path]  # samples made for checkpoints that had none
    prepare_s: float  # pictures drawn once, samples read and resampled
    compose_s: float  # frames composed from the pictures
    encode_s: float  # colour conversion, H.264 and AAC encoding, writing


def check_options(width: int, height: int, fps: float, seconds: float | None) -> Fraction:
    """UserError for a size H.264 in yuv420p cannot take or the layout cannot hold, a frame rate that is not
    a positive number up to MAX_FPS, or a sample length that is not positive; returns fps as a fraction."""
    for flag, value, (lo, hi) in (("--width", width, WIDTH_RANGE), ("--height", height, HEIGHT_RANGE)):
        if not lo <= value <= hi:
            raise UserError(f"{flag} {value} is out of range; give {lo}..{hi} pixels")
        if value % 2:
            raise UserError(
                f"{flag} {value} is odd, and H.264 video in yuv420p (what browsers play) needs even sizes: "
                f"give {value - 1} or {value + 1}"
            )
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise UserError(f"--fps must be a number of frames per second above 0 and up to {MAX_FPS}, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001
    if rate <= 0:
        raise UserError(f"--fps {fps} is too small: give at least 1/1001 frames per second")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"--seconds must be a positive number of seconds, got {seconds}")
    return rate


def check_output(out_path: str | os.PathLike, force: bool) -> Path:
    out = Path(out_path)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"{out}: the video is an MP4 file; name it e.g. {out.with_suffix('.mp4')}")
    paths.check_output_file(out, force=force)
    try:
        os.fsencode(out).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{paths.shown(out)}: FFmpeg takes only UTF-8 paths; give another name") from None
    return out


def make_video(
    run_dirs: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, width: int = 1280,
    height: int = 720, fps: float = 30, seconds: float | None = None, checkpoints: str = "all",
    title: str | None = None, force: bool = False, progress: Callable[[int, int], None] | None = None,
) -> Path:  # fmt: skip
    """Write the video of `run_dirs` (one section each, in that order) to `out_path`, an MP4; see `render`."""
    return render(run_dirs, out_path, width=width, height=height, fps=fps, seconds=seconds,
                  checkpoints=checkpoints, title=title, force=force, progress=progress).path  # fmt: skip


def render(
    run_dirs: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, width: int = 1280,
    height: int = 720, fps: float = 30, seconds: float | None = None, checkpoints: str = "all",
    title: str | None = None, force: bool = False, progress: Callable[[int, int], None] | None = None,
) -> Rendered:  # fmt: skip
    """`make_video`, and what it took. `seconds`: of each sample (default: all of it); `checkpoints`: "all",
    "every_N" or "STEP,STEP,..."; `progress(frames_done, frames)` after each frame.

    Everything is checked before anything is written: UserError (one line, naming the run or step) for a
    folder that is not a run, a run with nothing to show, an unknown step, a sample that does not read,
    an output that exists (without `force`). A checkpoint without a sample gets one, made as `jaxvoice
    sample --checkpoint N --seconds S` makes it (a warning says so); one that cannot be made is an error."""
    t0 = time.perf_counter()
    rate = check_options(width, height, fps, seconds)
    video_runs.check_choice(checkpoints)
    if not run_dirs:
        raise UserError("no run given: name at least one run directory")
    out = check_output(out_path, force)
    plans = [video_runs.plan_run(run, checkpoints) for run in run_dirs]
    made = _make_missing(plans, seconds)
    sections = [(plan, _clips(plan, seconds)) for plan in plans]
    lay = video_frames.layout(width, height)
    with files.new_output(out) as tmp:
        frames, compose_s, encode_s = _encode(sections, tmp, lay, rate, title, progress)
    total = sum(round(CARD_SECONDS * AUDIO_RATE) + sum(c.samples for c in clips_) for _, clips_ in sections)
    prepare_s = time.perf_counter() - t0 - compose_s - encode_s
    return Rendered(out, frames, total / AUDIO_RATE, made, prepare_s, compose_s, encode_s)


def _make_missing(plans: list[video_runs.RunPlan], seconds: float | None) -> list[Path]:
    made = []
    for i, plan in enumerate(plans):
        if not plan.missing:
            continue
        if seconds is None:
            known = [audio.probe(p).seconds for p in plan.samples.values()]
            seconds_made = max(known) if known else MISSING_SAMPLE_SECONDS
        else:
            seconds_made = seconds
        new = checkpoint_samples.make_samples(plan.path, plan.missing, seconds_made)
        made += new
        samples = {**plan.samples, **dict(zip(plan.missing, new, strict=True))}
        plans[i] = dataclasses.replace(plan, samples=samples, missing=[])
    return made


def _clips(plan: video_runs.RunPlan, seconds: float | None) -> list[Clip]:
    result = []
    last_logged = float(plan.logs.step[-1])
    for i, step in enumerate(plan.steps):
        path = plan.samples[step]
        info = audio.probe(path)
        symbols = info.frames if seconds is None else min(info.frames, max(1, round(seconds * info.rate)))
        to_step = plan.steps[i + 1] if i + 1 < len(plan.steps) else max(step, last_logged)
        samples = max(1, round(symbols * AUDIO_RATE / info.rate))
        result.append(Clip(step, path, symbols, info.rate, samples, to_step))
    return result


def _caption(plan: video_runs.RunPlan, step: int) -> str:
    logs = plan.logs
    at = np.flatnonzero(logs.val_step == step)
    if len(at):
        epoch, bits = float(logs.val_epoch[at[-1]]), f"{logs.val_loss[at[-1]] / math.log(2):.3f}"
    else:
        row = int(np.searchsorted(logs.step, step, side="right")) - 1
        epoch, bits = (float(logs.epoch[row]) if row >= 0 else math.nan), "—"
    epoch_text = "—" if math.isnan(epoch) else f"{epoch:.2f}"
    return f"step {step:,}    epoch {epoch_text}    val {bits} bits/sample"


class _Encoder:
    """The MP4 being written: frames and audio in, interleaved packets out, timed."""

    def __init__(self, path: Path, lay: video_frames.Layout, fps: Fraction):
        import av

        self.container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        self.video = self.container.add_stream("libx264", rate=fps, options=dict(X264))
        self.video.width, self.video.height, self.video.pix_fmt = lay.width, lay.height, "yuv420p"
        self.video.codec_context.time_base = 1 / fps
        # BT.709 in the conversion and in the stream's tags: what players assume for HD, so colours stay.
        context = self.video.codec_context
        context.colorspace = context.color_primaries = context.color_trc = BT709
        context.color_range = 1  # limited ("MPEG") range, what swscale writes and players expect
        self.audio = self.container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        self.audio.bit_rate = AUDIO_BITRATE
        self.frames = self.audio_sent = 0
        self.seconds = 0.0
        # Frames are composed straight into one RGB frame of FFmpeg's: a fresh 2.7 MB array per 720p frame
        # cost more in page faults than the conversion to yuv420p itself.
        self._rgb = av.VideoFrame(lay.width, lay.height, "rgb24")
        plane = self._rgb.planes[0]
        self.canvas_HxWx3 = np.ndarray(
            (lay.height, lay.width, 3), np.uint8, buffer=plane, strides=(plane.line_size, 3, 1)
        )

    def frame(self) -> None:
        """Encode what `canvas_HxWx3` holds now."""
        t = time.perf_counter()
        picture = self._rgb.reformat(format="yuv420p", dst_colorspace=BT709)
        picture.pts = self.frames
        self.container.mux(self.video.encode(picture))
        self.frames += 1
        self.seconds += time.perf_counter() - t

    def sound(self, x: np.ndarray) -> None:
        import av

        if not len(x):
            return
        t = time.perf_counter()
        block = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x, np.float32)[None], format="fltp", layout="mono"
        )
        block.sample_rate, block.pts = AUDIO_RATE, self.audio_sent
        self.container.mux(self.audio.encode(block))
        self.audio_sent += len(x)
        self.seconds += time.perf_counter() - t

    def close(self) -> None:
        t = time.perf_counter()
        for stream in (self.video, self.audio):
            self.container.mux(stream.encode(None))
        self.container.close()  # the index moves to the front here (faststart)
        self.seconds += time.perf_counter() - t


def _encode(sections, path: Path, lay, fps: Fraction, title, progress) -> tuple[int, float, float]:
    """Compose and encode every frame; returns (frames, compose seconds, encode seconds)."""
    import av

    card_samples = round(CARD_SECONDS * AUDIO_RATE)
    total = sum(card_samples + sum(c.samples for c in clips_) for _, clips_ in sections)
    n_frames = math.ceil(total * fps / AUDIO_RATE)
    compose_s = 0.0
    try:
        encoder = _Encoder(path, lay, fps)
    except (av.FFmpegError, ValueError) as e:
        raise UserError(f"FFmpeg cannot make this video ({e})") from None
    frame = video_frames.Frame(lay, encoder.canvas_HxWx3)
    start = 0  # the current segment's first output sample
    try:
        for plan, clips_ in sections:
            pictures = _run_pictures(plan, lay, title)
            segments = [(None, np.zeros(card_samples, np.float32))]
            for clip in clips_:
                segments.append((clip, None))
            for clip, sound in segments:
                if clip is None:
                    frame.start(pictures["card"])
                    moving = None
                else:
                    sound, moving = _clip_pictures(plan, clip, lay, pictures)
                    frame.start(pictures["background"], moving["caption"])
                end = start + len(sound)
                while encoder.frames < n_frames and encoder.frames * AUDIO_RATE < end * fps:
                    t = float(Fraction(encoder.frames * AUDIO_RATE, 1) / fps - start) / AUDIO_RATE
                    if moving is not None:
                        c0 = time.perf_counter()
                        seconds = clip.samples / AUDIO_RATE
                        cursor = clip.step + (clip.to_step - clip.step) * min(1.0, t / seconds)
                        frame.draw(cursor, pictures["strips"], moving["wave"], moving["spec"], t, seconds)
                        compose_s += time.perf_counter() - c0
                    encoder.frame()
                    upto = min(end, math.floor(encoder.frames * AUDIO_RATE / fps))
                    encoder.sound(sound[encoder.audio_sent - start : upto - start])
                    if progress is not None:
                        progress(encoder.frames, n_frames)
                encoder.sound(sound[encoder.audio_sent - start :])
                start = end
        encoder.close()
    except av.FFmpegError as e:
        with contextlib.suppress(Exception):
            encoder.container.close()
        # FFmpeg's own words (e.g. "No space left on device"), not its message that names the temporary file
        raise OSError(getattr(e, "errno", None) or 0, getattr(e, "strerror", None) or str(e)) from None
    except BaseException:
        with contextlib.suppress(Exception):
            encoder.container.close()
        raise
    return encoder.frames, compose_s, encoder.seconds


def _run_pictures(plan: video_runs.RunPlan, lay, title: str | None) -> dict:
    """What a run's section draws once: its card, background and loss strips."""
    logs = plan.logs
    y = video_frames.y_axis(logs, lay.plot_h, lay.font)
    rate = int(plan.corpus.get("rate") or 0) or audio.probe(next(iter(plan.samples.values()))).rate
    linear = video_frames.draw_strip(logs, y, video_frames.linear_columns(logs, lay.linear.w), lay.linear.h,
                                     lay.plot_h, lay.font, logx=False)  # fmt: skip
    log = video_frames.draw_strip(logs, y, lay.log.w, lay.log.h, lay.plot_h, lay.font, logx=True)
    name = plan.name if not title else f"{title} · {plan.name}"
    return {
        "card": video_frames.card(lay, plan.name, video_runs.card_rows(plan), title),
        "background": video_frames.background(lay, y, rate),
        "strips": (linear, log),
        "name": name,
    }


def _clip_pictures(plan, clip: Clip, lay, pictures: dict) -> tuple[np.ndarray, dict]:
    """A checkpoint's sound at AUDIO_RATE (exactly its planned length) and its pictures."""
    x, rate, _ = clips.read_head(clip.path, (clip.symbols + 0.5) / clip.rate)
    x = x[: clip.symbols]
    sound = audio.resample(x, rate, AUDIO_RATE)[: clip.samples]
    sound = np.pad(sound, (0, clip.samples - len(sound)))
    moving = {
        "caption": video_frames.caption(lay, pictures["name"], _caption(plan, clip.step)),
        "wave": video_frames.waveform(x, lay.wave),
        "spec": video_frames.spectrogram(x, rate, lay.spec),
    }
    return sound, moving
