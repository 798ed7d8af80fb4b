"""jaxvoice report --run runs/NAME"""

HELP = "write RUN/report.html: config, corpus, loss plots, checkpoints, and every sample to hear and see"


def add_arguments(parser):
    parser.add_argument("--run", required=True, help="run directory made by jaxvoice train")
    parser.add_argument("--force", action="store_true", help="replace an existing report.html")


def run(args):
    from jaxvoice import paths, report

    paths.check_given(**{"--run": args.run})
    made = report.build(args.run, force=args.force)
    if not args.quiet:
        for note in made.notes:
            print(f"note: {note}")
        print(made.path)
