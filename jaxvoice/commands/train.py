"""jaxvoice train --config tiny --data CORPUS --out runs/NAME [--set k=v ...] [--steps N] [--minutes M]"""

HELP = "train a recurrent network on a corpus; checkpoints, logs and exact --resume in a run directory"

MAX_STEP = (1 << 31) - 1  # the step counter is an int32 inside the compiled step


def add_arguments(parser):
    parser.add_argument("--config", help="a TOML file or a preset name (tiny, small, voice_2016, ...)")
    parser.add_argument(
        "--data", help="corpus directory from `jaxvoice prepare` (on --resume: the run's own)"
    )
    parser.add_argument("--out", required=True, help="run directory (new, or existing with --resume)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.batch_size=32 (repeatable)",
    )
    parser.add_argument("--steps", type=int, help="train until this step in total (a resumed run continues)")
    parser.add_argument("--minutes", type=float, help="stop at the first step after this much wall time")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    hosts = parser.add_argument_group("several hosts (jax.distributed; give all three on every process)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="how many processes in all")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
    hosts.add_argument(
        "--distributed",
        action="store_true",
        help="let JAX find the cluster itself (TPU slices, Slurm, Open MPI, JAX_COORDINATOR_ADDRESS)",
    )


def run(args):
    from jaxvoice import paths

    paths.check_given(**{"--out": args.out, "--data": args.data, "--config": args.config})
    from jaxvoice.errors import UserError

    if args.steps is not None and not 1 <= args.steps <= MAX_STEP:
        raise UserError(f"--steps must be from 1 to {MAX_STEP}, got {args.steps}")
    if args.minutes is not None and not args.minutes > 0:
        raise UserError(f"--minutes must be positive, got {args.minutes}")
    import signal
    import sys

    import jax

    from jaxvoice import checkpoint, files, model, parallel, train
    from jaxvoice import run as run_lib
    from jaxvoice.fitting import describe_error, fit
    from jaxvoice.hooks import Progress, SaveFailed
    from jaxvoice.loop import Diverged, Hook

    parallel.initialize(args.coordinator, args.num_processes, args.process_id, detect=args.distributed)
    primary = jax.process_index() == 0
    planned = run_lib.plan(
        args.out, config_path=args.config, overrides=args.set, data=args.data, resume=args.resume,
        primary=primary,
    )  # fmt: skip
    dp = parallel.data_parallel()
    train.check_memory(planned.config, dp.num_devices)
    made = files.missing_parents(planned.path / "x") if planned.new and primary else []
    if primary:
        run_lib.create(planned)
    quiet = args.quiet or not primary
    progress = None if quiet else Progress()
    say = progress.write if progress else (lambda message: None)
    if args.resume and not checkpoint.available_steps(planned.path):
        say(f"{planned.path} has no checkpoint yet: starting from step 0")

    class StopOnSignal(Hook):
        """Ctrl-C / SIGTERM stop the loop at the next step boundary, which saves; a second Ctrl-C is the
        usual KeyboardInterrupt. The handlers are the command's, installed for the loop only."""

        number = None

        def handle(self, number, frame):
            if self.number is not None and number == signal.SIGINT:
                raise KeyboardInterrupt
            self.number = number

        def on_step(self, loop):
            if self.number is not None:
                loop.stop("signal")

    stop = StopOnSignal()
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        hooks = [progress, stop] if progress else [stop]
        result = fit(planned, steps=args.steps, minutes=args.minutes, hooks=hooks, say=say, dp=dp)
    except Diverged as e:
        print(
            f"jaxvoice train: loss is NaN/Inf at step {e.step}; stopped. The last good checkpoint is "
            f"kept; lower train.learning_rate or train.grad_clip and --resume",
            file=sys.stderr,
        )
        return 1
    except (OSError, SaveFailed) as e:
        error = e.__cause__ if isinstance(e, SaveFailed) else e
        at = f" at step {e.args[0]}" if isinstance(e, SaveFailed) else ""
        print(
            f"jaxvoice train: could not write the run{at} ({describe_error(error)}); stopped. The last "
            f"complete checkpoint is kept: free some space (or fix the problem) and --resume",
            file=sys.stderr,
        )
        return 1
    except BaseException:
        if planned.new and primary and not run_lib.started(planned.path):
            run_lib.discard(planned.path, made)  # a new run that failed before its first step leaves nothing
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if result.stop_reason == "signal":
        say(f"{signal.Signals(stop.number).name}: saved step {result.step}; continue with --resume")
        return 128 + stop.number
    if not quiet and result.stop_reason != "nothing to do":
        val_text = ""
        if result.val_loss is not None:
            vl = result.val_loss
            val_text = f", val {vl:.4f} nats = {vl * model.BITS_PER_NAT:.4f} bits/sample"
        print(f"trained to step {result.step}: loss {result.loss:.4f} nats{val_text}; run in {planned.path}")
    return 0
