"""`jaxvoice demo`: a voice-like corpus made from nothing (`jaxvoice.synth`), and the whole flow on it in
a few minutes: the singing as a WAV, prepared as a corpus through `corpus.prepare` (the code path of
`jaxvoice prepare`), the voice_cpu preset trained with evaluations and checkpoints, every checkpoint sampled,
the plots and the report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

from jaxvoice.errors import UserError
from jaxvoice.synth import RATE, singing_corpus

# ---- the whole flow ---------------------------------------------------------------------------------------

DEMO_FILE = "demo.json"  # marks a folder as a demo (so --force may replace it) and records the figures
# The preset trained: of the model families, the one with the lower held-out bits on the demo's corpus in the
# demo's 2 minutes (test bits/sample, 2-core Zen 5, 2026-11-30): flat voice_cpu 2.067, flat tiny 2.203, tiered
# voice_cpu_tiered 2.093 (with embedded samples only: 2.122; per-position upsampling: 2.166). Again with the
# presets of 2026-12-04 (AMD EPYC Zen 4, `jaxvoice train --minutes 2` each on the demo's corpus): voice_cpu
# 2.047 (5,646 steps), voice_cpu_tiered 2.110 (1,951 steps: its four-layer MLP's steps cost more).
PRESET = "voice_cpu"
MIN_SECONDS = 10.0  # the preset's 32 x 64 windows need ~2 s (val is 10%); 10 s gives it 1 s to judge by
WARMUP_STEPS = 20  # trained first, to measure the speed that sets the evaluation interval
N_EVALS = 6  # evaluations (and checkpoints) in the time budget after the warm-up
MIN_CHECKPOINTS = 3  # however short the budget
SHORT_SECONDS = 2.0  # the sample made from each checkpoint
BEST_SECONDS = 10.0  # the sample made from the best checkpoint


class Stopped(Exception):
    """Training stopped early (a NaN, a full disk: the cause says why); args[0] is the exit code."""


def check_settings(minutes: float, seconds: float, seed: int = 0) -> None:
    from jaxvoice.config import check_seed

    check_seed(seed, "--seed")
    if not (math.isfinite(minutes) and minutes > 0):
        raise UserError(f"--minutes must be a positive number, got {minutes}")
    if not (math.isfinite(seconds) and seconds >= MIN_SECONDS):
        raise UserError(
            f"--seconds must be at least {MIN_SECONDS:g} (the demo's preset needs that much), got {seconds}"
        )


def _check_out(out: Path, force: bool) -> None:
    """An absent or empty --out is used; a previous demo is replaced with --force; anything else is kept."""
    if not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"{out} exists and is not a folder: choose another --out")
    if not force:
        raise UserError(
            f"{out} already exists: choose another --out, or add --force to replace the demo there"
        )
    if not (out / DEMO_FILE).is_file():
        raise UserError(
            f"{out} is a folder but not a jaxvoice demo (no {DEMO_FILE}), so --force will not replace it: "
            "choose another --out"
        )
    shutil.rmtree(out)


def _interval(total_steps: int) -> int:
    """Steps between evaluations: total / N_EVALS, rounded to a multiple of 10 when that is large."""
    every = max(WARMUP_STEPS, total_steps // N_EVALS)
    return every - every % 10 if every >= 100 else every


def _train(corpus_dir: Path, run_dir: Path, minutes: float, quiet: bool, say) -> None:
    """The demo's PRESET for about `minutes`: a warm-up of WARMUP_STEPS that measures the speed (evaluated and
    saved like every checkpoint), then N_EVALS evaluations and checkpoints spread over the rest of the time,
    the last at the last step. One training loop: a hook retunes the others after the warm-up."""
    from jaxvoice import config, corpus, files, fitting, hooks, loop
    from jaxvoice.run import CONFIG_FILE, Run

    t0 = time.monotonic()
    every, keep_all = f"every={WARMUP_STEPS}", f"train.keep_checkpoints={N_EVALS + 3}"
    sampled = f"train.sample_seconds={SHORT_SECONDS}"  # each checkpoint heard as it is saved
    cfg = config.load(PRESET, [f"train.eval_{every}", f"train.checkpoint_{every}", keep_all, sampled])
    run = Run.create(run_dir, cfg, corpus.open_corpus(corpus_dir))

    class Calibrate(loop.Hook):
        every = WARMUP_STEPS

        def on_boundary(self, lp: loop.Loop) -> None:
            self.every = 0  # once, at the end of the warm-up
            speed = lp.last_metrics["tokens_per_s"] / lp.tokens_per_step  # steps/s, compilation left out
            remaining = 60.0 * minutes - (time.monotonic() - t0)
            total = lp.step + int(0.9 * remaining * speed)  # 10% for the evaluations and saves
            interval = _interval(total)
            target = total - total % interval
            if target < MIN_CHECKPOINTS * WARMUP_STEPS:  # the warm-up (mostly compilation) took the budget
                interval, target = WARMUP_STEPS, MIN_CHECKPOINTS * WARMUP_STEPS
                say(
                    f"the warm-up took the time budget; training on to step {target} for checkpoints to compare"
                )
            else:
                say(
                    f"training at {speed:.1f} steps/s: to step {target} in about {remaining / 60:.1f} min, "
                    f"evaluating and saving every {interval} steps"
                )
            # A cap in case the speed was misjudged, with room for the minimum number of checkpoints.
            limit = max(remaining, 0.0) + 2.0 * MIN_CHECKPOINTS * WARMUP_STEPS / max(speed, 1.0)
            lp.until = target
            for hook in lp.hooks:
                if isinstance(hook, hooks.Evaluate | hooks.Checkpoint | hooks.Sample):
                    hook.every = interval
                elif isinstance(hook, hooks.TimeBudget):
                    hook.deadline = time.monotonic() + limit
            train_cfg = dataclasses.replace(cfg.train, eval_every=interval, checkpoint_every=interval)
            files.write_atomic(
                run.path / CONFIG_FILE, config.dumps(dataclasses.replace(cfg, train=train_cfg))
            )

    extra = [] if quiet else [hooks.Progress()]
    try:
        fitting.fit(run, steps=1 << 30, minutes=2 * minutes + 1, hooks=[Calibrate(), *extra])
    except (loop.Diverged, hooks.SaveFailed, OSError) as e:
        raise Stopped(1) from e


def _best_sample(run_dir: Path, seconds: float):
    """`seconds` of audio from the best checkpoint into RUN/samples/best_step_<N>_<seconds>s.wav, with the
    run's sampling settings (as `jaxvoice sample` would); returns (restored, path)."""
    import jax

    from jaxvoice import checkpoint, sample_files

    restored = checkpoint.restore_for_inference(run_dir, "best")
    cfg, meta = restored.config, restored.corpus_meta
    path = run_dir / "samples" / f"best_step_{restored.step}_{seconds:g}s.wav"
    path.parent.mkdir(exist_ok=True)
    sample_files.sample_to_files(
        restored.params, cfg.model, cfg.sample, meta, [path], length=round(seconds * meta["rate"]),
        key=jax.random.key(cfg.sample.seed),
    )  # fmt: skip
    return restored, path


def _test_bits(run_dir: Path, restored) -> float:
    """Bits per sample of a restored checkpoint on the corpus's test split."""
    from jaxvoice import model, streams, train
    from jaxvoice import run as run_lib

    test = run_lib.open_run_corpus(run_dir).split("test")
    cfg = restored.config
    loss = train.evaluate(
        restored.params,
        cfg.model,
        streams.eval_streams(
            test, cfg.train.batch_size, cfg.train.seq_length, model.window_multiple(cfg.model)
        ),
    )
    return loss * model.BITS_PER_NAT


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def run_demo(
    out: str | Path, *, minutes: float = 2.0, seconds: float = 180.0, seed: int = 0, force: bool = False,
    quiet: bool = True, say=None,
) -> dict:  # fmt: skip
    """Synthesise, prepare, train, sample, plot and report into `out`; returns what demo.json records.
    `say(line)` hears what the command prints; without `quiet`, progress bars show on a terminal."""
    from jaxvoice import checkpoint, clips, corpus, report, video

    check_settings(minutes, seconds, seed)
    out = Path(out)
    _check_out(out, force)
    say = say or (lambda message: None)
    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    record = {"seed": seed, "seconds": seconds, "minutes": minutes, "finished": False}
    (out / DEMO_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    say(f"[1/4] synthesising {_clock(seconds)} of singing at {RATE} Hz (seed {seed})")
    data = singing_corpus(out, seconds=seconds, seed=seed, quiet=quiet)
    wav, corpus_dir, run_dir = out / "voice.wav", out / "corpus", out / "run"
    say(corpus.summary(data.meta, corpus_dir))
    order0 = {split: clips.order0_bits(data.split(split)) for split in ("val", "test")}
    say(
        f"order-0 entropy of the held-out audio (its symbol histogram): val {order0['val']:.3f}, "
        f"test {order0['test']:.3f} bits/sample"
    )

    say(f"[2/4] training the {PRESET} preset for about {minutes:g} min into {run_dir}")
    t_train = time.monotonic()
    _train(corpus_dir, run_dir, minutes, quiet, say)
    train_s = time.monotonic() - t_train

    steps = checkpoint.available_steps(run_dir)
    say(
        f"[3/4] {BEST_SECONDS:g} s from the best checkpoint (each of the {len(steps)} was sampled as it was saved)"
    )
    best, best_wav = _best_sample(run_dir, BEST_SECONDS)

    say("[4/4] the video, plots and report")
    video_path = video.make_video([run_dir], run_dir / "video.mp4", title="jaxvoice demo", force=True)
    made = report.build(run_dir, force=True)  # the demo made this run itself (the report shows the video)
    for note in made.notes:
        say(f"note: {note}")
    val_bits = None if best.val_loss is None else best.val_loss / math.log(2)
    test_bits = _test_bits(run_dir, best)
    record.update(
        finished=True, order0_bits=order0, best_step=best.step, val_bits=val_bits, test_bits=test_bits,
        steps=max(steps), train_seconds=round(train_s, 1), total_seconds=round(time.monotonic() - t_start, 1),
    )  # fmt: skip
    (out / DEMO_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    say(f"\ndemo done in {_clock(record['total_seconds'])} (training {_clock(train_s)}, {max(steps)} steps):")
    say(f"  {wav}  the synthetic singing it learned from")
    say(f"  {corpus_dir}/  the corpus (jaxvoice info {corpus_dir})")
    say(
        f"  {run_dir}/  the run: config.toml, train.csv, val.csv, checkpoints/ (steps {', '.join(map(str, steps))})"
    )
    say(f"  {best_wav}  {BEST_SECONDS:g} s from the best checkpoint")
    say(f"  {run_dir / 'samples'}/step_<N>.wav  {SHORT_SECONDS:g} s from each checkpoint")
    say(f"  {run_dir / 'plots'}/loss.png, loss_logx.png  the loss curves")
    say(f"  {video_path}  every checkpoint heard in turn while its loss curves scroll by")
    if val_bits is not None:
        say(
            f"held-out loss at step {best.step}: val {val_bits:.3f} bits/sample (order-0 entropy "
            f"{order0['val']:.3f}), test {test_bits:.3f} (order-0 {order0['test']:.3f})"
        )
    say("open the report in a browser:")
    say(str(made.path))
    return record
