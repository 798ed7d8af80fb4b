"""Recurrent cells as pure functions, and the registry that config, model, training, sampling and the
command line read them from.

A cell is a `Cell`, a tuple of pure functions (the way optax's GradientTransformation is a pair):

    init(key, input_size, hidden_size) -> params        one layer's arrays, under any names
    initial_carry(batch, hidden_size) -> carry          a pytree of float32 arrays, batch first (zeros)
    step(params, carry, xproj_BxG) -> (carry, h_BxH)    one time step
    project(params, x_NxI) -> xproj_NxG                 the part of a step that does not read the carry

`project` is applied to each row on its own, so the stack runs it once for all T steps of a layer (one GEMM
outside the time loop) and, for the first layer, once over the 256 symbols' embeddings, so that each step
reads a row. A cell without it gets x itself. `fast` is an optional faster implementation of a whole layer
(see `jaxvoice.fast`), tested equal to scanning `step`; `model.kernels = "xla"` turns every one of them off.
`dot_only` says that `step` and `project` use their weight matrices only as `dot(x, w)`: then a sampler
may give them weights stored its fastest way (`jaxvoice.stored`). `recurrent`, where given, names the state
a dot-only `step` multiplies by its `wh_HxG` (once): a sampler may then compute that product ahead, e.g. on
another core while a frame's samples are drawn, and give it as `stored.Given`.

    import jaxvoice
    def mgu_step(p, h, xproj): ...
    jaxvoice.register_cell("mgu", jaxvoice.Cell(init=..., initial_carry=..., step=mgu_step, project=...))

Shape letters: B batch, N rows (T * B), I input size, H hidden size, G a cell's projected width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxvoice import fast, stored
from jaxvoice.errors import UserError


class Cell(NamedTuple):
    """A recurrent cell: pure functions over a layer's params and carry (see the module docstring)."""

    init: Callable[[jax.Array, int, int], dict]
    initial_carry: Callable[[int, int], Any]
    step: Callable[[dict, Any, jax.Array], tuple[Any, jax.Array]]
    project: Callable[[dict, jax.Array], jax.Array] | None = None
    fast: Callable | None = None  # (params, carry, table_RxI, index_TxB | None) -> (hs_TxBxH, carry)
    dot_only: bool = False  # matrices used only through `dot`, so they may be `stored.Stored`
    recurrent: Callable[[Any], jax.Array] | None = None  # carry -> h_BxH, what `step` multiplies by wh_HxG


_CELLS: dict[str, Cell] = {}


def register_cell(name: str, cell: Cell) -> None:
    """Make `cell` available as `model.cell = name` to every part of jaxvoice (config checks, training,
    evaluation, sampling, checkpoints). Registering a name again replaces it."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a cell name must be an identifier, got {name!r}")
    if not isinstance(cell, Cell):
        raise TypeError(f"register_cell needs a jaxvoice.Cell, got {type(cell).__name__}")
    _CELLS[name] = cell


def get_cell(name: str) -> Cell:
    """The registered cell `name`; UserError naming the registered ones and the way to add one."""
    try:
        return _CELLS[name]
    except KeyError:
        raise UserError(
            f"model.cell '{name}' is not a registered cell ({', '.join(sorted(_CELLS))}): give the module that "
            "registers it with --import MODULE (from Python: import it before loading the config)"
        ) from None


def cell_names() -> list[str]:
    return sorted(_CELLS)


# --- building blocks ------------------------------------------------------------------------------------


def dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w computed in w's dtype (the compute dtype, model.dtype) with the sums returned in float32, so a
    bfloat16 model keeps its gate math and carried state in float32. `w` may be a `stored.Stored`, or a
    `stored.Given` x @ w computed ahead."""
    if isinstance(w, stored.Given):
        if w.product_BxO.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"a product given for rows {w.product_BxO.shape[:-1]} asked for {x.shape[:-1]}")
        return w.product_BxO
    if isinstance(w, stored.Stored):
        return stored.product(x, w)
    return jnp.matmul(x.astype(w.dtype), w, preferred_element_type=jnp.promote_types(w.dtype, jnp.float32))


def store_layer(cell_name: str, layer: dict, store: Callable) -> dict:
    """A layer's params with its matrices as `store(w_IxO)` keeps them (`jaxvoice.stored`), where the cell
    multiplies only through `dot` (`dot_only`); otherwise the layer as it is."""
    if not get_cell(cell_name).dot_only:
        return layer
    return jax.tree.map(lambda w: store(w) if w.ndim == 2 else w, layer)


def gated_init(gates: int, bias: Callable[[int], jax.Array] | None = None) -> Callable:
    """init for cells with input weights wx_IxG, recurrent weights wh_HxG and a bias b_G, G = gates * H:
    torch-rnn's N(0, 1/sqrt(I + H)) weights and (unless `bias` gives them) zero biases."""

    def init(key: jax.Array, input_size: int, hidden_size: int) -> dict:
        std = 1.0 / math.sqrt(input_size + hidden_size)
        G = gates * hidden_size
        kx, kh = jax.random.split(key)
        return {
            "wx_IxG": std * jax.random.normal(kx, (input_size, G), jnp.float32),
            "wh_HxG": std * jax.random.normal(kh, (hidden_size, G), jnp.float32),
            "b_G": bias(hidden_size) if bias else jnp.zeros((G,), jnp.float32),
        }

    return init


def linear_project(p: dict, x_NxI: jax.Array) -> jax.Array:
    """x W_x + b, the input part of every built-in cell."""
    return dot(x_NxI, p["wx_IxG"]) + p["b_G"]


def zeros(count: int) -> Callable[[int, int], Any]:
    """initial_carry of `count` states of width H (a single array when count is 1)."""

    def initial_carry(batch: int, hidden_size: int):
        states = tuple(jnp.zeros((batch, hidden_size), jnp.float32) for _ in range(count))
        return states[0] if count == 1 else states

    return initial_carry


# --- the built-in cells -------------------------------------------------------------------------------------


def lstm_step(p: dict, carry: tuple, xproj_BxG: jax.Array) -> tuple[tuple, jax.Array]:
    """LSTM (gate order i, f, o, g, as torch-rnn): c' = f c + i g, h' = o tanh(c')."""
    h, c = carry
    i, f, o, g = jnp.split(xproj_BxG + dot(h, p["wh_HxG"]), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def gru_step(p: dict, h: jax.Array, xproj_BxG: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GRU as cuDNN and PyTorch have it: the reset gate multiplies the recurrent product W_hn h, so one
    product serves all three gates (no recurrent bias)."""
    xr, xz, xn = jnp.split(xproj_BxG, 3, axis=-1)
    hr, hz, hn = jnp.split(dot(h, p["wh_HxG"]), 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return h, h


def rnn_step(p: dict, h: jax.Array, xproj_BxH: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The plain (Elman) RNN: h' = tanh(x W_x + b + h W_h)."""
    h = jnp.tanh(xproj_BxH + dot(h, p["wh_HxG"]))
    return h, h


def _forget_bias_one(hidden_size: int) -> jax.Array:
    """torch-rnn's LSTM bias: zero but the forget gate's, 1."""
    return jnp.zeros((4 * hidden_size,), jnp.float32).at[hidden_size : 2 * hidden_size].set(1.0)


def _first(carry: tuple) -> jax.Array:
    return carry[0]


def _itself(h: jax.Array) -> jax.Array:
    return h


LSTM = Cell(
    gated_init(4, _forget_bias_one), zeros(2), lstm_step, linear_project, fast.lstm_layer, True, _first
)
GRU = Cell(
    gated_init(3), zeros(1), gru_step, linear_project, fast.linear_input_layer(gru_step), True, _itself
)
RNN = Cell(
    gated_init(1), zeros(1), rnn_step, linear_project, fast.linear_input_layer(rnn_step), True, _itself
)

for _name, _cell in (("lstm", LSTM), ("gru", GRU), ("rnn", RNN)):
    register_cell(_name, _cell)
