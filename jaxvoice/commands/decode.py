"""jaxvoice decode TEXT -o FILE"""

HELP = "turn text written by `jaxvoice encode` (or sampled from a model trained on it) back into bytes"

BLOCK_BYTES = 1 << 22


def add_arguments(parser):
    parser.add_argument("input", metavar="TEXT", help="UTF-8 text made by `jaxvoice encode`")
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the file to write, e.g. out.wav"
    )
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")


def run(args):
    from jaxvoice import audio_write, codec, paths

    paths.check_given(TEXT=args.input, **{"-o": args.output})
    source = paths.check_input_file(args.input, give="a text file made by `jaxvoice encode`")

    def blobs(f):
        while block := f.read(BLOCK_BYTES):
            yield block

    written = 0
    with (
        audio_write.atomic_output(args.output, force=args.force) as tmp,
        open(source, "rb") as src,
        open(tmp, "xb") as dst,
    ):
        for data in codec.text_chunks_to_bytes(codec.utf8_chunks(blobs(src), str(source)), str(source)):
            dst.write(data)
            written += len(data)
    if not args.quiet:
        print(f"wrote {args.output}: {written:,} bytes from {source}")
