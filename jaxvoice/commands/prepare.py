"""jaxvoice prepare INPUT... -o CORPUS_DIR"""

HELP = "turn audio files or folders (or any files, --codec bytes) into a corpus of 8-bit symbols"


def add_arguments(parser):
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (recursive), in order")
    parser.add_argument(
        "-o", "--output", required=True, metavar="CORPUS_DIR", help="the corpus folder to write"
    )
    parser.add_argument(
        "--rate", type=int, default=11025, help="sample rate in Hz (default 11025; not for bytes)"
    )
    parser.add_argument(
        "--codec", choices=["linear", "mulaw", "bytes"], default="linear",
        help="linear: 8-bit unsigned PCM (default); mulaw: μ-law 255; bytes: any files as raw bytes",
    )  # fmt: skip
    parser.add_argument("--val-frac", type=float, default=0.1, help="share for validation (default 0.1)")
    parser.add_argument(
        "--test-frac", type=float, default=0.1, help="share for test, at the end (default 0.1)"
    )
    parser.add_argument("--force", action="store_true", help="replace CORPUS_DIR if it is a corpus already")


def run(args):
    from jaxvoice import corpus, paths

    paths.check_given(INPUT=args.inputs, **{"-o": args.output})
    meta = corpus.prepare(
        args.inputs, args.output, rate=args.rate, codec=args.codec, val_frac=args.val_frac,
        test_frac=args.test_frac, force=args.force, quiet=args.quiet,
    )  # fmt: skip
    if not args.quiet:
        print(corpus.summary(meta, args.output))
