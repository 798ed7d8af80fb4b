"""jaxvoice demo [--out runs/demo] [--minutes M] [--seconds S] [--seed N] [--force]"""

HELP = "no recording needed: synthetic singing -> corpus -> 2-minute training -> samples -> plots -> report"


def add_arguments(parser):
    parser.add_argument("--out", default="runs/demo", help="folder for the demo (default: runs/demo)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=2.0,
        help="training time in minutes (default 2; the whole demo takes up to ~30 s more)",
    )
    parser.add_argument(
        "--seconds", type=float, default=180.0, help="length of the synthetic corpus in seconds (default 180)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic singing (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an earlier demo in --out")


def run(args):
    from jaxvoice import paths

    paths.check_given(**{"--out": args.out})
    from jaxvoice import demo

    # before the heavy imports: a usage error is instant
    demo.check_settings(args.minutes, args.seconds, args.seed)
    try:
        demo.run_demo(
            args.out,
            minutes=args.minutes,
            seconds=args.seconds,
            seed=args.seed,
            force=args.force,
            quiet=args.quiet,
            say=None if args.quiet else (lambda message: print(message, flush=True)),
        )
    except demo.Stopped as e:
        import sys

        print(
            f"jaxvoice demo: stopped while training (the run so far is in {args.out}/run); "
            "start the demo again with --force",
            file=sys.stderr,
        )
        return e.args[0]
    return 0
