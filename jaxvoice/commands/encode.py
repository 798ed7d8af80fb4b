"""jaxvoice encode FILE -o TEXT"""

HELP = "write any file as UTF-8 text, one character per byte (for character-level tools like torch-rnn)"

BLOCK_BYTES = 1 << 22


def add_arguments(parser):
    parser.add_argument("input", metavar="FILE", help="any file, e.g. an 8-bit WAV")
    parser.add_argument("-o", "--output", required=True, metavar="TEXT", help="the text file to write")
    parser.add_argument("--force", action="store_true", help="replace TEXT if it exists")


def run(args):
    from jaxvoice import audio_write, codec, paths

    paths.check_given(FILE=args.input, **{"-o": args.output})
    source = paths.check_input_file(args.input, give="a file")
    with (
        audio_write.atomic_output(args.output, force=args.force) as tmp,
        open(source, "rb") as src,
        open(tmp, "xb") as dst,
    ):
        while block := src.read(BLOCK_BYTES):
            dst.write(codec.bytes_to_text(block).encode("utf-8"))
    if not args.quiet:
        print(f"wrote {args.output}: {source.stat().st_size:,} characters from {source}")
