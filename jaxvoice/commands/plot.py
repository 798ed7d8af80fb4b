"""jaxvoice plot CSV... -o OUT.png | jaxvoice plot --run runs/NAME"""

import sys

HELP = "draw big CSV logs as line graphs (min..max band + mean per pixel column) into PNGs"


def add_arguments(parser):
    parser.add_argument("csv", nargs="*", help="CSV logs with a header line (e.g. runs/NAME/train.csv)")
    parser.add_argument("-o", "--output", metavar="OUT.png", help="the PNG to write (overwritten)")
    parser.add_argument(
        "--run", metavar="RUN_DIR",
        help="draw the run's train and val loss, linear and log step axis, into RUN_DIR/plots/",
    )  # fmt: skip
    parser.add_argument("--x", default="step", metavar="COLUMN", help="x column (default: step)")
    parser.add_argument("--y", default="loss", metavar="COL[,COL...]", help="y columns (default: loss)")
    parser.add_argument("--logx", action="store_true", help="log x axis (x + 1 - min(x) if some x <= 0)")
    parser.add_argument("--logy", action="store_true", help="log y axis (rows with y <= 0 left out)")
    parser.add_argument("--width", type=int, default=2000, help="PNG width in pixels, 100..16383 (2000)")
    parser.add_argument("--height", type=int, default=1000, help="PNG height in pixels, 100..16383 (1000)")
    parser.add_argument("--colors", metavar="C1,C2,...", help="series colours, e.g. black,#d62728")
    parser.add_argument("--background", default="white", metavar="COLOR", help="background (white)")
    parser.add_argument(
        "--smooth", type=int, default=1, metavar="N",
        help="centred moving average over N rows, before bucketing (the band stays raw); 1 = off",
    )  # fmt: skip
    parser.add_argument("--title", help="plot title (default: the CSV's path, or the run's name)")


def _split(text):
    return [part.strip() for part in text.split(",") if part.strip()] if text else []


def run(args):
    from jaxvoice import paths, plot
    from jaxvoice.errors import UserError

    paths.check_given(CSV=args.csv, **{"-o": args.output, "--run": args.run})

    style = dict(
        width=args.width, height=args.height, logx=args.logx, logy=args.logy,
        colors=_split(args.colors) or None, background=args.background, smooth=args.smooth,
    )  # fmt: skip
    if args.run:
        if args.csv or args.output:
            raise UserError("--run writes RUN_DIR/plots/loss.png and loss_logx.png; drop the CSV and -o")
        if args.logx or args.x != "step" or args.y != "loss":
            raise UserError("--run draws loss against step, linear and log; drop --x, --y and --logx")
        del style["logx"]
        result = plot.plot_run(args.run, title=args.title, **style)
    else:
        if not args.csv:
            raise UserError("name one or more CSV logs (with -o OUT.png), or use --run RUN_DIR")
        if not args.output:
            raise UserError("say where to write the plot: -o OUT.png")
        ys = _split(args.y)
        if not ys:
            raise UserError("--y needs at least one column name, e.g. --y loss or --y loss,bits")
        result = plot.plot_csvs(args.csv, args.output, x=args.x, y=ys, title=args.title, **style)
    notes = [f"{n:,} row{'s' * (n != 1)} in {f}" for f, n in result.skipped.items() if n]
    if notes:
        print(
            f"jaxvoice plot: warning: skipped {'; '.join(notes)} "
            "(not numbers, NaN/inf, or wrong number of fields)",
            file=sys.stderr,
        )
    if result.nonpositive:
        print(
            f"jaxvoice plot: warning: left out {result.nonpositive:,} rows with y <= 0 (no place on --logy)",
            file=sys.stderr,
        )
    if not args.quiet:
        for path in result.paths:
            print(path)
