"""jaxvoice sample --run runs/NAME [--checkpoint best|latest|STEP|all] [--seconds S | --length N] [-o OUT]"""

HELP = "generate audio from a checkpoint (or every checkpoint), streamed to WAV files as it is made"


def add_arguments(parser):
    parser.add_argument("--run", required=True, help="run directory made by jaxvoice train")
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="best (lowest val loss, default), latest, a step number, or all (one sample per checkpoint)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--seconds", type=float, help="length of each sample in seconds of audio")
    size.add_argument("--length", type=int, help="length of each sample in symbols (default: sample.length)")
    parser.add_argument(
        "--num", type=int, help="parallel streams, one file each (default: sample.num_streams)"
    )
    parser.add_argument("--temperature", type=float, help="divides the logits (default: sample.temperature)")
    parser.add_argument("--top-k", type=int, help="keep only the K most probable symbols (1..256)")
    parser.add_argument("--top-p", type=float, help="keep the smallest set of symbols with probability >= P")
    parser.add_argument("--greedy", action="store_true", help="always the most probable symbol (argmax)")
    parser.add_argument(
        "--prime", metavar="FILE", help="audio (or bytes) to start from, converted like the corpus"
    )
    parser.add_argument("--include-prime", action="store_true", help="start each output with the prime")
    parser.add_argument("--seed", type=int, help="random seed (default: sample.seed); same seed, same audio")
    parser.add_argument(
        "-o", "--output", metavar="OUT", help="output file (default: RUN/samples/step_<N>.wav); its extension "
        "names the format (.wav, .flac, .ogg, .mp3, .w64 ...); several streams write OUT's stem plus _0, _1, ...",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace output files that exist")
    parser.add_argument("--chunk", type=int, help="steps per compiled scan (default: sample.chunk)")
    parser.add_argument(
        "--weights", choices=["float32", "bfloat16"], help="bfloat16: the weights rounded, half the "
        "bytes to read, a slightly different model: ~2x faster at 1 stream on a CPU for a big net such as "
        "voice_2016, little or nothing for small ones such as voice_cpu (default: sample.weights)",
    )  # fmt: skip


def _check_args(args):
    import math

    from jaxvoice import config, paths, sample
    from jaxvoice.errors import UserError

    paths.check_given(**{"--run": args.run, "--prime": args.prime, "-o": args.output})
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UserError(f"--seconds must be a positive number of seconds, got {args.seconds}")
    sample.check_settings(
        length=1 if args.length is None else args.length,
        num_streams=1 if args.num is None else args.num,
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        chunk=1 if args.chunk is None else args.chunk,
    )
    if args.seed is not None:
        config.check_seed(args.seed, "--seed")
    if args.checkpoint not in ("best", "latest", "all") and not args.checkpoint.isdigit():
        raise UserError(f"--checkpoint must be best, latest, all or a step number, got '{args.checkpoint}'")
    if args.checkpoint == "all" and args.output is not None:
        raise UserError("--checkpoint all writes RUN/samples/step_<N>.wav for each checkpoint: drop -o")
    if args.include_prime and args.prime is None:
        raise UserError("--include-prime needs --prime FILE")
    if args.prime is not None:
        paths.check_input_file(args.prime, "prime file", give="an audio file (for a bytes corpus, any file)")
    found = paths.kind(args.run)
    if found != "a folder":
        what = "does not exist" if found == "missing" else f"is {found}, not a folder"
        raise UserError(f"run directory {args.run} {what}; give --run a directory made by jaxvoice train")


def _load_prime(path, meta):
    import numpy as np

    from jaxvoice import audio, corpus
    from jaxvoice.errors import UserError

    try:
        symbols = corpus.load_audio_symbols(path, meta.get("rate"), meta["codec"])
    except audio.NotAudio as e:  # the run's corpus is audio, so the prime must be too
        raise audio.NotAudio(
            e.path, e.reason, f"give a WAV, FLAC, OGG or MP3 file for this run's {meta['codec']} corpus"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read prime file {path}: {e.strerror or e}") from None
    if symbols.size == 0:
        raise UserError(f"prime file {path} holds no samples")
    return np.asarray(symbols, np.uint8)


def _length(args, cfg, meta):
    from jaxvoice.errors import UserError

    if args.seconds is None:
        return args.length if args.length is not None else cfg.sample.length
    if meta["codec"] == "bytes":
        raise UserError("this run's corpus is bytes, not audio: give --length in symbols, not --seconds")
    length = round(args.seconds * meta["rate"])
    if length < 1:
        raise UserError(f"--seconds {args.seconds} is less than one sample at {meta['rate']} Hz")
    return length


def _paths(args, run_dir, step, num_streams, meta):
    from pathlib import Path

    from jaxvoice import sample_files

    if args.output is not None:
        out = Path(args.output)
    else:
        out = run_dir / "samples" / f"step_{step}{sample_files.extension(meta['codec'])}"
    return sample_files.output_paths(out, num_streams)


def _describe(samples, meta):
    if meta["codec"] == "bytes":
        return f"{samples:,} bytes"
    return f"{samples:,} samples ({samples / meta['rate']:.2f} s at {meta['rate']} Hz, {meta['codec']})"


def _sample_one(args, restored, length, chunk, paths, prime, key, dp):
    """Sample one checkpoint into `paths`; returns the exit code (130 when interrupted)."""
    import sys
    import time

    from tqdm import tqdm

    from jaxvoice import sample_files

    cfg, meta = restored.config, restored.corpus_meta
    rate = meta.get("rate") if meta["codec"] != "bytes" else None
    t0, done = time.monotonic(), 0
    first = None  # (time, symbols) at the first chunk, whose time includes compiling the model's chunk
    # disable=None: a bar only when stderr is a terminal, so logs and error messages stay clean.
    bar = tqdm(
        total=length * len(paths), unit="sample", unit_scale=True, file=sys.stderr,
        disable=True if args.quiet else None, desc=f"step {restored.step}", dynamic_ncols=True,
    )  # fmt: skip

    def on_chunk(n: int) -> None:
        nonlocal done, first
        done += n
        if first is None:
            first = (time.monotonic(), done)
        bar.update(n)
        if rate:
            bar.set_postfix_str(f"{done / rate / (time.monotonic() - t0):.2f}x real time")

    try:
        with bar:
            writers = sample_files.sample_to_files(
                restored.params, cfg.model, cfg.sample, meta, paths, length=length, key=key,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                weights=args.weights, chunk=chunk, prime=prime, include_prime=args.include_prime, dp=dp,
                on_chunk=on_chunk,
            )  # fmt: skip
    except sample_files.Interrupted as interrupted:
        for writer in interrupted.writers:
            if writer.samples:
                print(f"interrupted: kept {writer.path}: {_describe(writer.samples, meta)}", file=sys.stderr)
            else:  # interrupted before the first chunk: no empty file left behind
                writer.path.unlink(missing_ok=True)
                print(f"interrupted: nothing written to {writer.path}", file=sys.stderr)
        return 130
    seconds = time.monotonic() - t0
    if not args.quiet:
        for writer in writers:
            print(f"wrote {writer.path}: {_describe(writer.samples, meta)}, checkpoint step {restored.step}")
        speed = f"{done / seconds:,.0f} samples/s"
        if rate:
            speed += f", {done / rate / seconds:.2f}x real time"
        if first is not None and done > first[1]:  # the rate a longer sample would run at
            after = (done - first[1]) / max(seconds - (first[0] - t0), 1e-9)
            speed += f" (the first chunk took {first[0] - t0:.1f} s, compiling included; after it {after:,.0f} samples/s)"
        print(f"sampled {done:,} symbols in {seconds:.1f} s: {speed}")
    return 0


def _restore_first(run_dir, which, skipped):
    """The first checkpoint to sample: `which`, or for "all" the oldest intact one (the damaged ones before
    it are warned about and added to `skipped`); and the steps to sample."""
    from jaxvoice import checkpoint
    from jaxvoice.errors import UserError

    if which != "all":
        first = checkpoint.restore_for_inference(run_dir, which)
        return first, [first.step]
    steps = checkpoint.available_steps(run_dir)
    if not steps:
        checkpoint.restore_for_inference(run_dir, "latest")  # raises the error that says why
    reasons = []
    for step in steps:
        try:
            first = checkpoint.restore_for_inference(run_dir, step)
        except checkpoint.CheckpointDamaged as e:
            reasons.append(_damage(e))
            skipped.append(step)
            continue
        for reason in reasons:
            _log().warning(f"{reason}: skipped")
        return first, steps
    raise UserError(
        f"every checkpoint is damaged ({'; '.join(reasons)}): train again or restore them from a backup"
    )


def _damage(error):
    """A CheckpointDamaged message without its advice to choose another step (sample goes on by itself)."""
    return str(error).removesuffix("; choose another step")


def _log():
    import logging

    return logging.getLogger(__name__)


def _check_open_files(num_streams):
    """Each stream's file stays open while sampling: raise this process's soft limit if the hard one allows."""
    import resource

    from jaxvoice.errors import UserError

    needed = num_streams + 64  # and what JAX, orbax and Python hold
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise UserError(
            f"--num {num_streams:,} writes {num_streams:,} files at once but this process may open only "
            f"{hard:,} (ulimit -n): lower --num"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def run(args):
    _check_args(args)  # before the heavy imports: a usage error is instant
    from pathlib import Path

    import jax

    from jaxvoice import checkpoint, files, memory, parallel, sample, sample_files
    from jaxvoice.errors import UserError

    run_dir = Path(args.run)
    skipped = []
    first, steps = _restore_first(run_dir, args.checkpoint, skipped)
    cfg, meta = first.config, first.corpus_meta
    length = _length(args, cfg, meta)
    num_streams = args.num or cfg.sample.num_streams
    chunk = min(args.chunk or cfg.sample.chunk, length)  # a longer chunk would be computed and dropped
    sample.check_settings(
        length=length, num_streams=num_streams, temperature=1.0, top_k=None, top_p=None, chunk=chunk
    )
    memory.check_fits(
        sample.memory_needed(first.params, cfg.model, num_streams, chunk), memory.host_available(),
        "lower --num (streams at once) or --chunk (steps per compiled scan)", f"sampling {num_streams:,} streams",
    )  # fmt: skip
    _check_open_files(num_streams)
    rate = meta.get("rate") if meta["codec"] != "bytes" else None
    outputs = {step: _paths(args, run_dir, step, num_streams, meta) for step in steps if step not in skipped}
    formats = {}
    for step, paths in outputs.items():  # every output is checked before anything is sampled
        formats[step] = sample_files.check_outputs(paths, args.force, meta["codec"], rate)
    prime = _load_prime(args.prime, meta) if args.prime is not None else None
    per_file = length + (len(prime) if args.include_prime else 0)
    longer = "a .w64 or .rf64 file (-o NAME.w64)"
    if args.checkpoint == "all":
        longer = "one checkpoint at a time into a .w64 or .rf64 file (--checkpoint STEP -o NAME.w64)"
    every = [(p, f) for step in outputs for p, f in zip(outputs[step], formats[step], strict=True)]
    sample_files.check_sizes(every, per_file, rate, longer=longer)
    key = jax.random.key(args.seed if args.seed is not None else cfg.sample.seed)
    dp = parallel.data_parallel()  # the streams split over every device (padded to a multiple of them)
    made = files.missing_parents(every[0][0])  # all outputs share one folder
    try:
        files.make_parents(every[0][0])
    except OSError as e:
        raise UserError(f"cannot create {e.filename or every[0][0].parent}: {e.strerror or e}") from None
    written = 0
    try:
        for step in outputs:
            try:
                restored = first if step == first.step else checkpoint.restore_for_inference(run_dir, step)
            except checkpoint.CheckpointDamaged as e:
                _log().warning(f"{_damage(e)}: skipped")
                skipped.append(step)
                continue
            code = _sample_one(args, restored, length, chunk, outputs[step], prime, key, dp)
            if code:
                return code
            written += 1
    finally:  # on a failure or an interrupt: the folders made that are still empty (none after a sample)
        files.remove_made(made)
    if skipped:
        _log().warning(
            f"skipped {len(skipped)} damaged checkpoint{'s' * (len(skipped) != 1)} (step "
            f"{', '.join(map(str, sorted(skipped)))}); sampled the other {written}"
        )
    return 0
