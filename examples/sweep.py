"""A learning-rate sweep in one process: each rate is a normal run directory (`jaxvoice plot`, `report` and
`sample` read it), and a hook of our own collects what the table at the end shows.

    python examples/sweep.py --out runs/sweep --steps 600 --rates 5e-4,2e-3,8e-3
    jaxvoice plot runs/sweep/lr_*/train.csv --y loss --smooth 50 -o runs/sweep/loss.png
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jaxvoice


class Collect(jaxvoice.Hook):
    """The first and last training loss, the best held-out loss and the speed, from the loop's own metrics
    and the evaluation hook's results (loop.values)."""

    def __init__(self):
        self.first_loss = self.last_loss = math.nan
        self.best_val = math.inf
        self.tokens_per_s = 0.0

    def on_metrics(self, loop, step, metrics):
        if step == loop.start_step + 1:
            self.first_loss = metrics["loss"]
        self.last_loss, self.tokens_per_s = metrics["loss"], metrics["tokens_per_s"]

    def on_boundary(self, loop):
        self.best_val = min(self.best_val, loop.values.get("val_loss", (None, math.inf))[1])

    on_end = on_boundary  # the final evaluation comes at the end


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--corpus", help="a corpus folder (default: 60 s of synthetic singing in OUT/)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rates", default="5e-4,2e-3,8e-3")
    parser.add_argument("--set", action="append", default=[], help="more overrides, e.g. model.rnn_size=64")
    args = parser.parse_args(argv)

    corpus = args.corpus or jaxvoice.singing_corpus(args.out, seconds=60.0)
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        cfg = jaxvoice.load_config("tiny", [f"train.learning_rate={rate}", f"train.eval_every={args.steps // 4 or 1}",
                                            *args.set])  # fmt: skip
        run = jaxvoice.Run.create(args.out / f"lr_{rate:g}", cfg, corpus)
        collect, t0 = Collect(), time.monotonic()
        jaxvoice.fit(run, steps=args.steps, hooks=[collect])
        rows.append({"lr": rate, "first": collect.first_loss, "last": collect.last_loss, "best_val": collect.best_val,
                     "tokens_per_s": collect.tokens_per_s, "seconds": time.monotonic() - t0})  # fmt: skip

    bits = 1 / math.log(2)
    print(f"{'lr':>8} {'loss 1st':>9} {'loss last':>9} {'best val bits':>13} {'tokens/s':>9} {'s':>6}")
    for r in rows:
        print(f"{r['lr']:8.0e} {r['first']:9.4f} {r['last']:9.4f} {r['best_val'] * bits:13.4f} "
              f"{r['tokens_per_s']:9,.0f} {r['seconds']:6.1f}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
