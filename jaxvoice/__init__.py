"""jaxvoice: teach recurrent networks raw audio as streams of 256 byte symbols.

Everything the command line does is a function here (imported on first use, so `import jaxvoice` is
instant and changes nothing in your process):

    import jax, jaxvoice
    cfg = jaxvoice.load_config("tiny", ["train.batch_size=32"])
    corpus = jaxvoice.prepare(["voice.wav"], "corpus/")            # or jaxvoice.open_corpus("corpus/")
    run = jaxvoice.Run.create("runs/a", cfg, "corpus/")
    result = jaxvoice.fit(run, steps=2000)                          # what `jaxvoice train` writes
    for chunk in jaxvoice.generate(result.state.model_params, cfg.model, jax.random.key(0), length=11025):
        ...

Lower down: `init_params`/`forward`/`loss`/`step` (pure functions of params), `init_state`,
`make_train_step(cfg, n, loss_fn=..., optimizer=...)`, `train_loop(..., hooks=[...])` with `Hook`s,
`register_cell(name, Cell(...))` and `register_family`. See README.md, "Python API", and examples/.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute) of the public API
_EXPORTS = {
    # configs
    "Config": ("config", "Config"),
    "ModelConfig": ("config", "ModelConfig"),
    "TrainConfig": ("config", "TrainConfig"),
    "SampleConfig": ("config", "SampleConfig"),
    "load_config": ("config", "load"),
    "apply_overrides": ("config", "apply_overrides"),
    # corpora
    "prepare": ("corpus", "prepare"),
    "singing_corpus": ("synth", "singing_corpus"),
    "Streams": ("streams", "Streams"),
    "train_streams": ("streams", "train_streams"),
    "eval_streams": ("streams", "eval_streams"),
    "open_corpus": ("corpus", "open_corpus"),
    "corpus_from_array": ("corpus", "from_array"),
    "Corpus": ("corpus", "Corpus"),
    # cells and models
    "Cell": ("cells", "Cell"),
    "register_cell": ("cells", "register_cell"),
    "Family": ("model", "Family"),
    "register_family": ("model", "register_family"),
    "init_params": ("model", "init_params"),
    "init_carry": ("model", "init_carry"),
    "forward": ("model", "forward"),
    "loss": ("model", "loss"),
    "step": ("model", "step"),
    # training
    "TrainState": ("train", "TrainState"),
    "init_state": ("train", "init_state"),
    "make_optimizer": ("train", "make_optimizer"),
    "make_train_step": ("train", "make_train_step"),
    "make_eval_step": ("train", "make_eval_step"),
    "evaluate": ("train", "evaluate"),
    "train_loop": ("loop", "train_loop"),
    "Hook": ("loop", "Hook"),
    "Loop": ("loop", "Loop"),
    "Diverged": ("loop", "Diverged"),
    "Run": ("run", "Run"),
    "fit": ("fitting", "fit"),
    "FitResult": ("fitting", "FitResult"),
    # sampling and checkpoints
    "generate": ("sample", "generate"),
    "restore": ("checkpoint", "restore_for_inference"),
    "UserError": ("errors", "UserError"),
}

# modules reachable as jaxvoice.NAME without an import of their own
_MODULES = {
    "cells",
    "checkpoint",
    "config",
    "corpus",
    "fast",
    "hooks",
    "loop",
    "model",
    "sample",
    "synth",
    "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(f"jaxvoice.{module}"), attribute)
        globals()[name] = value  # once: later lookups are plain attribute reads
        return value
    if name in _MODULES:
        return importlib.import_module(f"jaxvoice.{name}")
    raise AttributeError(f"module 'jaxvoice' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
