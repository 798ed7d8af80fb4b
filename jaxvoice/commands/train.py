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
    from jaxvoice.errors import UserError

    if args.steps is not None and not 1 <= args.steps <= MAX_STEP:
        raise UserError(f"--steps must be from 1 to {MAX_STEP}, got {args.steps}")
    if args.minutes is not None and not args.minutes > 0:
        raise UserError(f"--minutes must be positive, got {args.minutes}")
    import jax

    from jaxvoice import files, parallel, train
    from jaxvoice import run as run_lib

    parallel.initialize(args.coordinator, args.num_processes, args.process_id, detect=args.distributed)
    primary = jax.process_index() == 0
    plan = run_lib.plan(
        args.out, config_path=args.config, overrides=args.set, data=args.data, resume=args.resume,
        primary=primary,
    )  # fmt: skip
    train.check_memory(plan.config, parallel.data_parallel().num_devices)
    made = files.missing_parents(plan.run_dir / "x") if plan.new and primary else []
    if primary:
        run_lib.create(plan)
    try:
        return train.fit(
            plan.config, plan.corpus, plan.run_dir, target_step=args.steps, minutes=args.minutes,
            resume=args.resume, quiet=args.quiet,
        )  # fmt: skip
    except BaseException:
        if plan.new and primary and not run_lib.started(plan.run_dir):
            run_lib.discard(plan.run_dir, made)  # a new run that failed before its first step leaves nothing
        raise
