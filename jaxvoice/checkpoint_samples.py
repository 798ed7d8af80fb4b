"""A checkpoint's sample `RUN/samples/step_N.wav`, made the way `jaxvoice sample --run RUN --checkpoint N
--seconds S --num 1` makes it: the run's own sampling settings (temperature, top-k, top-p, seed, weights,
chunk), started from silence, every device used. The same bytes, so a video that had to make a sample
and a later `jaxvoice sample` agree (tests/test_video.py checks it).

`write_sample` is the same from params in memory (e.g. a training hook's, at a checkpoint).

Unlike the command, the file is written under a temporary name and renamed when it is complete: a sample
cut short by Ctrl-C would otherwise be taken for a whole one by the next video.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from jaxvoice import files, manifests, paths, sample_files
from jaxvoice.errors import UserError

_log = logging.getLogger(__name__)


def sample_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "samples" / f"step_{step}.wav"


def make_samples(run_dir: str | Path, steps: Sequence[int], seconds: float) -> list[Path]:
    """Write `seconds` of audio from each checkpoint in `steps` to RUN/samples/step_N.wav (which must not
    exist yet), saying so in one warning; returns the paths. UserError naming the step for a checkpoint
    that is damaged or gone."""
    from jaxvoice import checkpoint, parallel

    run = Path(run_dir)
    outputs = [sample_path(run, step) for step in steps]
    for path in outputs:
        paths.check_output_file(path, force=False)
    for step in steps:  # damaged files are found by their manifest before anything is said or made
        try:
            manifests.check(run / "checkpoints", step, {"meta", "params"})
        except manifests.Damaged as e:
            raise UserError(
                f"checkpoint step {step} of {run} has no sample and none can be made: {e}"
            ) from None
    _log.warning(
        f"{run}: no sample for checkpoint step {', '.join(map(str, steps))}: sampling {seconds:g} s of each "
        f"into {run / 'samples'} (as jaxvoice sample --checkpoint N --seconds {seconds:g} does)"
    )
    dp = parallel.data_parallel()
    for step, path in zip(steps, outputs, strict=True):
        try:
            restored = checkpoint.restore_for_inference(run, step)
        except UserError as e:  # CheckpointDamaged, or removed since the run was read
            raise UserError(
                f"checkpoint step {step} of {run} has no sample and none can be made: {e}"
            ) from None
        write_sample(restored.params, restored.config, restored.corpus_meta, path, seconds, dp=dp)
    return outputs


def write_sample(params: dict, cfg, corpus_meta: dict, path: str | Path, seconds: float, *, dp=None) -> Path:
    """`seconds` of audio from `params` (a model of config `cfg` trained on a corpus described by
    `corpus_meta`) into the WAV `path`, the bytes `jaxvoice sample --seconds S --num 1` writes from a
    checkpoint holding these params. An existing `path` is replaced: callers check first."""
    import jax

    from jaxvoice import memory, sample

    path = Path(path)
    rate = corpus_meta["rate"]
    length = round(seconds * rate)
    if length < 1:
        raise UserError(f"{seconds} s is less than one sample at {rate} Hz")
    chunk = min(cfg.sample.chunk, length)
    memory.check_fits(
        sample.memory_needed(params, cfg.model, 1, chunk), memory.host_available(), "free some memory",
        f"sampling {path}",
    )  # fmt: skip
    sample_files.check_sizes(
        [(path, sample_files.output_format(path, corpus_meta["codec"], rate))], length, rate
    )
    with files.new_output(path, keep_suffix=True) as tmp:
        sample_files.sample_to_files(
            params, cfg.model, cfg.sample, corpus_meta, [tmp], length=length, key=jax.random.key(cfg.sample.seed),
            chunk=chunk, dp=dp,
        )  # fmt: skip
    return path
