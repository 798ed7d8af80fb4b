"""A loss of your own, given to the training step: label smoothing (Szegedy et al., 2016), with the
lower-level API: `make_train_step(loss_fn=...)` and `train_loop`, no run directory.

    python examples/custom_loss.py --steps 400 --smoothing 0.1

Trains the same model twice on the same batches, once with the plain cross-entropy and once with label
smoothing, and prints each one's held-out loss in bits per sample (plain cross-entropy for both: what the
smoothing is judged by).
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxvoice


def smoothed_loss(params, inputs_BxT, targets_BxT, carry, cfg, dropout_key=None, *, smoothing=0.1):
    """(1 - s) * cross-entropy + s * the mean -log p over all 256 symbols; returns (loss, carry) as
    `jaxvoice.loss` does, so it can stand in for it."""
    logits_BxTxV, carry = jaxvoice.forward(params, inputs_BxT, carry, cfg, dropout_key)
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV)
    nll_BxT = -jnp.take_along_axis(logp_BxTxV, targets_BxT.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    uniform_BxT = -logp_BxTxV.mean(axis=-1)
    return ((1.0 - smoothing) * nll_BxT + smoothing * uniform_BxT).mean(), carry


def train(cfg, corpus, steps: int, loss_fn) -> float:
    """Held-out bits/sample after `steps` updates with `loss_fn`."""
    B, T = cfg.train.batch_size, cfg.train.seq_length
    streams = jaxvoice.train_streams(corpus.split("train"), B, T)
    state = jaxvoice.init_state(cfg, streams.steps, B)
    step_fn = jaxvoice.make_train_step(cfg, streams.steps, loss_fn=loss_fn)
    state, loop = jaxvoice.train_loop(state, lambda s: streams.batch(s % streams.steps), step_fn, until=steps)
    val = jaxvoice.eval_streams(corpus.split("val"), B, T)
    return jaxvoice.evaluate(state.model_params, cfg.model, val) / math.log(2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="a corpus folder (default: 60 s of synthetic singing)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--smoothing", type=float, default=0.1)
    parser.add_argument("--set", action="append", default=[], help="config overrides, e.g. model.rnn_size=64")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = (
            jaxvoice.open_corpus(args.corpus)
            if args.corpus
            else jaxvoice.singing_corpus(Path(tmp), seconds=60.0)
        )
        cfg = jaxvoice.load_config("tiny", args.set)
        results = {
            "cross-entropy": train(cfg, corpus, args.steps, jaxvoice.loss),
            f"label smoothing {args.smoothing:g}": train(
                cfg, corpus, args.steps, functools.partial(smoothed_loss, smoothing=args.smoothing)
            ),
        }
    for name, bits in results.items():
        print(f"{name:>24}: held-out {bits:.4f} bits/sample after {args.steps} steps")
    return results


if __name__ == "__main__":
    main()
