"""Weight matrices stored the way generation reads them fastest, behind `cells.dot`.

A generation step multiplies one row per stream by every weight matrix, so its speed is the speed of
reading the weights, and that depends on how they lie in memory (docs/performance.md): jaxvoice's CPU
kernel reads them packed in 16-column panels (`packed_matmul`); XLA's CPU matrix-vector product reads
[out, in] rows faster than [in, out] columns at one stream. A `Stored` is one matrix kept one of these
ways, made once per model by the sampler (`store`). `cells.dot(x, w)` and `model.dense` multiply by it like
by the plain matrix, so a cell's step, written once as its equations, runs unchanged on stored weights
(where the cell says it only multiplies through `cells.dot`: `Cell.dot_only`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvoice import packed_matmul

FORMS = ("columns", "rows", "packed")  # [in, out] as trained | [out, in] | panels for packed_matmul


@jax.tree_util.register_pytree_node_class
class Stored:
    """x @ W for W [in, out] kept as `form` says, in `data` (a pytree leaf, so it goes through jit, device_put
    and tree_map like the array it replaces); `form` and `out_features` are static."""

    def __init__(self, data: jax.Array, form: str, out_features: int):
        self.data, self.form, self.out_features = data, form, out_features

    @property
    def dtype(self):
        return self.data.dtype

    def tree_flatten(self):
        return (self.data,), (self.form, self.out_features)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    def __repr__(self) -> str:
        return (
            f"Stored({self.form}, out_features={self.out_features}, {self.data.dtype}{list(self.data.shape)})"
        )


@jax.tree_util.register_pytree_node_class
class Given:
    """x @ W computed before the step that multiplies by W, for the one x that step will multiply:
    `cells.dot(x, given)` returns it. A sampler uses it to compute a frame tier's recurrent product while the
    previous frame's samples are drawn, on another core (`cells.Cell.recurrent`, `jaxvoice.tiered`)."""

    def __init__(self, product_BxO: jax.Array):
        self.product_BxO = product_BxO

    def tree_flatten(self):
        return (self.product_BxO,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0])

    def __repr__(self) -> str:
        return f"Given({self.product_BxO.dtype}{list(self.product_BxO.shape)})"


def store(w_IxO: jax.Array, form: str, dtype: str = "float32") -> Stored:
    """`w_IxO` kept as `form` ("packed" needs `packed_matmul.available()`), its elements in `dtype`."""
    if form == "packed":
        data = packed_matmul.pack(w_IxO, dtype)
    elif form in ("columns", "rows"):
        data = (w_IxO.T if form == "rows" else w_IxO).astype(dtype)
    else:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    return Stored(data, form, w_IxO.shape[1])


def as_dtype(w, dtype):
    """A plain matrix in `dtype` (the compute dtype); a `Stored` one as it was stored."""
    return w if isinstance(w, Stored) else w.astype(dtype)


def product(x_BxI: jax.Array, w: Stored) -> jax.Array:
    """x @ W in the stored dtype, the sums in float32."""
    if w.form == "packed":
        return packed_matmul.matmul(x_BxI, w.data, w.out_features)
    contract = ((1,), (1,)) if w.form == "rows" else ((1,), (0,))
    return jax.lax.dot_general(
        x_BxI.astype(w.data.dtype), w.data, (contract, ((), ())), preferred_element_type=jnp.float32
    )
