"""jaxvoice video --run runs/NAME [--run runs/OTHER ...] [-o OUT.mp4]"""

HELP = "make a video (MP4) of runs learning: each checkpoint's sample playing over its loss curves"


def add_arguments(parser):
    parser.add_argument(
        "--run", dest="runs", action="append", required=True, metavar="RUN",
        help="run directory made by jaxvoice train (repeatable: one section per run, in this order)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", metavar="OUT.mp4", help="the video to write (default with one --run: RUN/video.mp4)"
    )
    parser.add_argument("--width", type=int, default=1280, help="frame width in pixels, even (1280)")
    parser.add_argument("--height", type=int, default=720, help="frame height in pixels, even (720)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second (30)")
    parser.add_argument(
        "--seconds", type=float, help="seconds of each checkpoint's sample to play (default: all of it); also "
        "the length of the samples made for checkpoints that have none",
    )  # fmt: skip
    parser.add_argument(
        "--checkpoints", default="all", metavar="all|every_N|STEP,...",
        help="which checkpoints: all (default), every_N (every N-th, and the last), or steps such as 200,1000",
    )  # fmt: skip
    parser.add_argument("--title", help="shown on each run's card and above every frame")
    parser.add_argument("--force", action="store_true", help="replace OUT.mp4 if it exists")


def run(args):
    import sys
    from pathlib import Path

    from jaxvoice import paths
    from jaxvoice.errors import UserError

    paths.check_given(**{"--run": args.runs, "-o": args.output})
    if args.output is None and len(args.runs) > 1:
        raise UserError("several runs make one video: say where it goes with -o OUT.mp4")
    out = args.output if args.output is not None else Path(args.runs[0]) / "video.mp4"

    from tqdm import tqdm

    from jaxvoice import video

    # disable=None: a bar only when stderr is a terminal, so logs and error messages stay clean.
    with tqdm(unit="frame", file=sys.stderr, disable=True if args.quiet else None, dynamic_ncols=True) as bar:

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        made = video.render(
            args.runs, out, width=args.width, height=args.height, fps=args.fps, seconds=args.seconds,
            checkpoints=args.checkpoints, title=args.title, force=args.force, progress=progress,
        )  # fmt: skip
    if not args.quiet:
        print(
            f"wrote {made.path}: {made.seconds:.1f} s, {made.frames:,} frames of {args.width} x {args.height}"
        )
