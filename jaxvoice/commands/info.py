"""jaxvoice info CORPUS_DIR"""

HELP = "show what a prepared corpus holds (codec, rate, sources, splits, checksum)"


def add_arguments(parser):
    parser.add_argument("corpus", help="a directory written by `jaxvoice prepare`")
    parser.add_argument("--json", action="store_true", help="print meta.json as it is")
    parser.add_argument("--verify", action="store_true", help="also recompute the sha256 of data.u8")


def run(args):
    import json

    from jaxvoice import corpus, paths

    paths.check_given(CORPUS_DIR=args.corpus)
    if args.verify:
        opened = corpus.open_corpus(args.corpus)
        opened.verify()
        meta = opened.meta
    else:
        meta = corpus.read_meta(args.corpus)
    print(json.dumps(meta, indent=2) if args.json else corpus.describe(meta, path=args.corpus))
    if args.verify and not args.json:
        print("checksum  ok")
