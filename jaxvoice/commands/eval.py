"""jaxvoice eval --run runs/NAME [--checkpoint best|latest|STEP] [--split val|test] [--json]"""

HELP = "held-out loss of a checkpoint, in nats and bits per sample"


def add_arguments(parser):
    parser.add_argument("--run", required=True, help="run directory made by jaxvoice train")
    parser.add_argument(
        "--checkpoint", default="best", help="best (lowest val loss), latest, or a step number"
    )
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument(
        "--data", help="the corpus, if it moved since training (default: the run's corpus.json)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    from jaxvoice import paths

    paths.check_given(**{"--run": args.run, "--data": args.data})
    import json
    import time

    from jaxvoice import checkpoint, model, parallel, streams, train
    from jaxvoice import run as run_lib

    run_lib.config_of(args.run)  # a clear error for a directory that is not a run
    restored = checkpoint.restore_for_inference(args.run, args.checkpoint)
    corpus = run_lib.open_run_corpus(args.run, args.data)
    split = corpus.split(args.split)
    cfg = restored.config
    held_out = streams.eval_streams(
        split, cfg.train.batch_size, cfg.train.seq_length, model.window_multiple(cfg.model)
    )
    t0 = time.monotonic()
    loss = train.evaluate(restored.params, cfg.model, held_out, dp=parallel.data_parallel())
    result = {
        "run": str(args.run),
        "split": args.split,
        "step": restored.step,
        "loss": loss,
        "bits": loss * model.BITS_PER_NAT,
        "symbols": held_out.steps * held_out.batch_size * held_out.seq_length,
        "seconds": round(time.monotonic() - t0, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.split} loss at step {restored.step}: {loss:.4f} nats = {result['bits']:.4f} bits/sample "
            f"over {result['symbols']:,} symbols"
        )
