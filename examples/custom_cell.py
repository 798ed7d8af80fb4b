"""A cell of your own: the minimal gated unit (Zhou et al., 2016), registered, trained from Python and
sampled with the command line.

    python examples/custom_cell.py --out runs/mgu --steps 500
    jaxvoice sample --import examples/custom_cell.py --run runs/mgu/run --seconds 3

Importing this file registers the cell "mgu" (that is all `--import` needs: `jaxvoice eval`, `sample`,
`report` and `train --resume` then read runs that use it); running it trains such a run on synthetic
singing (or on your corpus, `--corpus DIR`).

The MGU has one gate: f = sigmoid(x W_f + h U_f + b_f), h~ = tanh(x W_h + (f * h) U_h + b_h),
h' = (1 - f) h + f h~. Its parameters have names of their own; the input part of both lines is `project`
(one GEMM for all steps of a layer), the rest is `step`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxvoice
from jaxvoice.cells import dot


def mgu_init(key, input_size: int, hidden_size: int) -> dict:
    kx, kf, kh = jax.random.split(key, 3)
    std = 1.0 / math.sqrt(input_size + hidden_size)
    H = hidden_size
    return {
        "wx_Ix2H": std * jax.random.normal(kx, (input_size, 2 * H)),  # [W_f, W_h]
        "b_2H": jnp.zeros((2 * H,)),
        "uf_HxH": std * jax.random.normal(kf, (H, H)),
        "uh_HxH": std * jax.random.normal(kh, (H, H)),
    }


def mgu_project(p: dict, x_NxI: jax.Array) -> jax.Array:
    return dot(x_NxI, p["wx_Ix2H"]) + p["b_2H"]


def mgu_step(p: dict, h_BxH: jax.Array, xproj_Bx2H: jax.Array):
    xf, xh = jnp.split(xproj_Bx2H, 2, axis=-1)
    f = jax.nn.sigmoid(xf + dot(h_BxH, p["uf_HxH"]))
    candidate = jnp.tanh(xh + dot(f * h_BxH, p["uh_HxH"]))
    h_BxH = (1.0 - f) * h_BxH + f * candidate
    return h_BxH, h_BxH


MGU = jaxvoice.Cell(
    init=mgu_init,
    initial_carry=lambda batch, hidden: jnp.zeros((batch, hidden), jnp.float32),
    step=mgu_step,
    project=mgu_project,
    dot_only=True,  # its matrices are used only through `dot`: sampling may store them its fastest way
)
jaxvoice.register_cell("mgu", MGU)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/mgu"))
    parser.add_argument("--corpus", help="a corpus folder (default: 60 s of synthetic singing in OUT/)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rnn-size", type=int, default=128)
    args = parser.parse_args(argv)

    corpus = args.corpus or jaxvoice.singing_corpus(args.out, seconds=60.0)
    cfg = jaxvoice.load_config("tiny", ["model.cell=mgu", f"model.rnn_size={args.rnn_size}"])
    run = jaxvoice.Run.create(args.out / "run", cfg, corpus)
    result = jaxvoice.fit(run, steps=args.steps)
    print(
        f"MGU {cfg.model.num_layers} x {cfg.model.rnn_size}: step {result.step}, val {result.val_loss:.4f} nats"
    )
    print(f"listen: jaxvoice sample --import {__file__} --run {run.path} --seconds 3")


if __name__ == "__main__":
    main()
