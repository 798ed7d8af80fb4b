"""The model: 256 byte symbols in, the next symbol's logits out, as pure functions of a dict pytree.

A model family is a `Family` of pure functions, registered by name (`model.kind`) the way a cell is; the
default family, "stack", is char-rnn's: an embedding, `model.num_layers` layers of a registered cell
(`jaxvoice.cells`), dropout between layers and a linear output layer. The public functions below dispatch on
`cfg.kind`, so training, evaluation, sampling and checkpoints work the same for every family:

    init_params(key, cfg) -> params                    init_carry(cfg, batch) -> carry
    forward(params, tokens_BxT, carry, cfg, dropout_key=None) -> (logits_BxTxV, carry)
    loss(params, tokens_BxT, targets_BxT, carry, cfg, dropout_key=None) -> (mean nats, carry)
    step(params, carry, token_B, cfg) -> (logits_BxV, carry)             one generation step

A carry is a pytree of float32 arrays with the batch (the parallel streams) as their first axis; the
stack's is a tuple with one cell carry per layer.

Shape letters: B batch (parallel streams), T time steps, V vocabulary (256), E wordvec_size, H rnn_size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxvoice import cells, fast, stored
from jaxvoice.config import ModelConfig
from jaxvoice.errors import UserError

V = 256
BITS_PER_NAT = 1.0 / math.log(2.0)


class Family(NamedTuple):
    """A model family: pure functions of (params, carry, cfg). `logits` is time-major (logits_TxBxV), the
    layout the loss reads without a transpose. `check(cfg)` raises UserError for settings it cannot build.
    `window(cfg)`: the windows it reads (training, evaluation, priming) are a multiple of this many steps.
    `sample_scan(sp, carry, token_B, u_CxB, choose, cfg) -> (carry, token_B, tokens_CxB)`: its own
    generation loop over C steps (`choose(logits_BxV, u_B) -> token_B`, a `draw.Choice`, whose
    `native_temperature` lets a loop draw in a kernel of its own by the same rule; by default `step` in a
    scan), on the params `sample_prepare(params, cfg, store)` made (by default the params themselves):
    `store(w_IxO, rows=1)` keeps a weight matrix the sampler's fastest way for a product of `rows` rows per
    stream (a `stored.Stored`, which `cells.dot` and `dense` multiply by)."""

    init_params: Callable[[jax.Array, ModelConfig], dict]
    init_carry: Callable[[ModelConfig, int], Any]
    logits: Callable[[dict, jax.Array, Any, ModelConfig, jax.Array | None], tuple[jax.Array, Any]]
    step: Callable[[dict, Any, jax.Array, ModelConfig], tuple[jax.Array, Any]]
    check: Callable[[ModelConfig], None] = lambda cfg: None
    window: Callable[[ModelConfig], int] = lambda cfg: 1
    sample_scan: Callable | None = None
    sample_prepare: Callable | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, family: Family) -> None:
    """Make `family` available as `model.kind = name` everywhere (registering a name again replaces it)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a model family's name must be an identifier, got {name!r}")
    _FAMILIES[name] = family


def _builtin_families() -> None:
    """The families that ship with jaxvoice but live in their own modules (imported on first use)."""
    if "tiered" not in _FAMILIES:
        import jaxvoice.tiered  # noqa: F401 (registers "tiered")


def family_names() -> list[str]:
    _builtin_families()
    return sorted(_FAMILIES)


def get_family(cfg: ModelConfig) -> Family:
    if cfg.kind not in _FAMILIES:
        _builtin_families()
    try:
        return _FAMILIES[cfg.kind]
    except KeyError:
        raise UserError(
            f"model.kind '{cfg.kind}' is not a registered model family ({', '.join(sorted(_FAMILIES))}): give the "
            "module that registers it with --import MODULE"
        ) from None


def check(cfg: ModelConfig) -> None:
    """UserError for a model config that no registered family or cell can build."""
    get_family(cfg).check(cfg)


def window_multiple(cfg: ModelConfig) -> int:
    """Training, evaluation and priming windows are a multiple of this many symbols (1 for the stack)."""
    return get_family(cfg).window(cfg)


# --- the public functions -----------------------------------------------------------------------------------


def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    return get_family(cfg).init_params(key, cfg)


def init_carry(cfg: ModelConfig, batch_size: int) -> Any:
    """The zero state of `batch_size` streams."""
    return get_family(cfg).init_carry(cfg, batch_size)


def forward(
    params: dict, tokens_BxT: jax.Array, carry: Any, cfg: ModelConfig, dropout_key: jax.Array | None = None
) -> tuple[jax.Array, Any]:
    """Logits [B, T, V] (float32) of the symbol after each input, and the carry after the last step.
    Dropout only when a key is given."""
    logits_TxBxV, carry = get_family(cfg).logits(params, tokens_BxT, carry, cfg, dropout_key)
    return logits_TxBxV.transpose(1, 0, 2), carry


def cross_entropy(logits_TxBxV: jax.Array, targets_TxB: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] per position, in one pass over the logits (no one-hot array)."""
    picked_TxB = jnp.sum(jnp.where(jnp.arange(V) == targets_TxB[..., None], logits_TxBxV, 0.0), axis=-1)
    return jax.nn.logsumexp(logits_TxBxV, axis=-1) - picked_TxB


def loss(
    params: dict,
    tokens_BxT: jax.Array,
    targets_BxT: jax.Array,
    carry: Any,
    cfg: ModelConfig,
    dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, Any]:
    """Mean cross-entropy in nats over all B*T targets, and the new carry (for the next window)."""
    logits_TxBxV, carry = get_family(cfg).logits(params, tokens_BxT, carry, cfg, dropout_key)
    return cross_entropy(logits_TxBxV, targets_BxT.T.astype(jnp.int32)).mean(), carry


def step(params: dict, carry: Any, token_B: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, Any]:
    """One generation step: logits_BxV for the symbol after token_B, and the new carry."""
    return get_family(cfg).step(params, carry, token_B, cfg)


# --- the stack: char-rnn's layers of a registered cell ------------------------------------------------------


def _stack_init(key: jax.Array, cfg: ModelConfig) -> dict:
    """torch-rnn's initialisation: N(0, 1) embeddings, each layer by its cell, U(+-1/sqrt(H)) output weights."""
    cell, H = cells.get_cell(cfg.cell), cfg.rnn_size
    keys = jax.random.split(key, cfg.num_layers + 2)
    bound = 1.0 / math.sqrt(H)
    return {
        "embed_VxE": jax.random.normal(keys[0], (V, cfg.wordvec_size), jnp.float32),
        "layers": [
            cell.init(keys[layer + 1], cfg.wordvec_size if layer == 0 else H, H)
            for layer in range(cfg.num_layers)
        ],
        "out_HxV": jax.random.uniform(keys[-1], (H, V), jnp.float32, -bound, bound),
        "out_b_V": jnp.zeros((V,), jnp.float32),
    }


def _stack_carry(cfg: ModelConfig, batch_size: int) -> tuple:
    cell = cells.get_cell(cfg.cell)
    return tuple(cell.initial_carry(batch_size, cfg.rnn_size) for _ in range(cfg.num_layers))


def dropout_masks(key: jax.Array, cfg: ModelConfig, shape: tuple) -> list[jax.Array]:
    """Per layer l, the multiplier (0 or 1/(1-p)) for the input of layer l (l > 0) and, at l = 0, for the
    output of the last layer (torch-rnn puts dropout after every recurrent layer)."""
    keys = jax.random.split(key, cfg.num_layers)
    keep = 1.0 - cfg.dropout
    return [jax.random.bernoulli(k, keep, shape).astype(jnp.float32) / keep for k in keys]


def _in_compute_dtype(layer_params: dict, dtype) -> dict:
    """A layer's matrices in the compute dtype (model.dtype); vectors (biases), and products given ahead
    (`stored.Given`: float32 sums), stay as they are."""
    return jax.tree.map(
        lambda w: w.astype(dtype) if not isinstance(w, stored.Given) and w.ndim >= 2 else w,
        layer_params,
        is_leaf=lambda w: isinstance(w, stored.Given),
    )


def _scan_layer(cell: cells.Cell, p: dict, carry: Any, table_RxI: jax.Array, index_TxB: jax.Array | None):
    """A cell over a layer's T steps, as its equations say: `project` once for every input row (the first
    layer: the 256 embeddings, read per step by token), then `step` in a `lax.scan`."""
    xproj_RxG = table_RxI if cell.project is None else cell.project(p, table_RxI)
    if index_TxB is None:
        B = jax.tree.leaves(carry)[0].shape[0]
        xproj_TxBxG = xproj_RxG.reshape(xproj_RxG.shape[0] // B, B, -1)
    else:
        xproj_TxBxG = xproj_RxG[index_TxB]
    carry, hs_TxBxH = jax.lax.scan(lambda c, x: cell.step(p, c, x), carry, xproj_TxBxG)
    return hs_TxBxH, carry


def _uses_fast(cfg: ModelConfig, cell: cells.Cell) -> bool:
    return cfg.kernels == "auto" and cell.fast is not None


def dense_init(key: jax.Array, fan_in: int, fan_out: int) -> jax.Array:
    """A dense layer's [fan_in, fan_out] weights, N(0, 1 / fan_in): unit-variance inputs give unit-variance
    outputs."""
    return jax.random.normal(key, (fan_in, fan_out), jnp.float32) / math.sqrt(fan_in)


def dense(cfg: ModelConfig, x: jax.Array, w: jax.Array, *, copy_x: bool = True) -> jax.Array:
    """x @ w in the compute dtype (float32 sums) for a big whole-sequence product. With kernels "auto" its
    reverse pass is `fast.projection`'s: in bfloat16 its dx = dy W^T takes the cotangent in bfloat16, as
    the forward takes x (XLA's own derivative multiplies it in float32); in float32 on a CPU with
    `copy_x` its weight gradient is YNNPACK's GEMM over a copied x^T. Pass copy_x=False where x is an
    elementwise result XLA fuses into its consumers (a ReLU layer's output): its transposed copy would
    recompute it column by column. A `stored.Stored` w (generation) is multiplied its own way."""
    if isinstance(w, stored.Stored):
        return stored.product(x, w)
    w = w.astype(jnp.dtype(cfg.dtype))
    if cfg.kernels != "auto":
        return cells.dot(x, w)
    if w.dtype != jnp.float32:  # the copied x^T gained nothing in bfloat16 (2026-12-03, Intel Xeon)
        return fast.projection(x, w, False)
    if copy_x and jax.default_backend() == "cpu":  # a CPU GEMM trick
        return fast.projection(x, w)
    return cells.dot(x, w)


def run_layers(cfg, layers: list, carry: tuple, table_RxI, index_TxB, masks=None):
    """`cfg.cell` layers over T steps, each layer's steps at once: (hs_TxBxH of the last, new carry). The first
    layer's inputs are rows of `table_RxI` by `index_TxB` ([T, B]; or with index None the T * B rows in
    order); `masks[l]` (dropout, [T, B, H]) multiplies the input of layer l > 0."""
    cell, dtype = cells.get_cell(cfg.cell), jnp.dtype(cfg.dtype)
    layer_fn = cell.fast if _uses_fast(cfg, cell) else (lambda *a: _scan_layer(cell, *a))
    new_carry, hs_TxBxH = [], None
    for layer, lp in enumerate(layers):
        if layer > 0:
            if masks is not None:
                hs_TxBxH = hs_TxBxH * masks[layer]
            T, B = hs_TxBxH.shape[:2]
            table_RxI, index_TxB = hs_TxBxH.reshape(T * B, -1), None
        hs_TxBxH, layer_carry = layer_fn(_in_compute_dtype(lp, dtype), carry[layer], table_RxI, index_TxB)
        new_carry.append(layer_carry)
    return hs_TxBxH, tuple(new_carry)


def step_layers(cfg, layers: list, carry: tuple, x_BxI):
    """One step of `cfg.cell` layers, as the cell's equations say: (h_BxH of the last, new carry)."""
    cell, dtype = cells.get_cell(cfg.cell), jnp.dtype(cfg.dtype)
    new_carry = []
    for layer, lp in enumerate(layers):
        lp = _in_compute_dtype(lp, dtype)
        xproj_BxG = x_BxI if cell.project is None else cell.project(lp, x_BxI)
        layer_carry, x_BxI = cell.step(lp, carry[layer], xproj_BxG)
        new_carry.append(layer_carry)
    return x_BxI, tuple(new_carry)


def _stack_logits(params, tokens_BxT, carry, cfg, dropout_key):
    """Time-major logits_TxBxV and the new carry, layer by layer: each layer's T steps at once. The first
    layer's input is one-hot: each step reads a row of the embedding table."""
    B, T = tokens_BxT.shape
    masks = None
    if dropout_key is not None and cfg.dropout > 0:
        masks = dropout_masks(dropout_key, cfg, (T, B, cfg.rnn_size))
    index_TxB = tokens_BxT.T.astype(jnp.int32)
    hs_TxBxH, new_carry = run_layers(cfg, params["layers"], carry, params["embed_VxE"], index_TxB, masks)
    if masks is not None:
        hs_TxBxH = hs_TxBxH * masks[0]
    return dense(cfg, hs_TxBxH, params["out_HxV"]) + params["out_b_V"], new_carry


def _stack_step(params, carry, token_B, cfg):
    x_BxI = params["embed_VxE"][token_B.astype(jnp.int32)]
    h_BxH, new_carry = step_layers(cfg, params["layers"], carry, x_BxI)
    out_HxV = stored.as_dtype(params["out_HxV"], jnp.dtype(cfg.dtype))
    return cells.dot(h_BxH, out_HxV) + params["out_b_V"], new_carry


def _stack_sample_prepare(params, cfg, store):
    """The output's matrix as `store` keeps it, and the layers' where the cell allows it (`dot_only`)."""
    layers = [cells.store_layer(cfg.cell, lp, store) for lp in params["layers"]]
    return dict(params, layers=layers, out_HxV=store(params["out_HxV"]))


def _stack_check(cfg: ModelConfig) -> None:
    cells.get_cell(cfg.cell)


STACK = Family(
    _stack_init, _stack_carry, _stack_logits, _stack_step, _stack_check, sample_prepare=_stack_sample_prepare
)
register_family("stack", STACK)
