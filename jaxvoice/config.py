"""Typed settings: frozen dataclasses are the schema, TOML files and `--set section.key=value` fill them.

Defaults follow torch-rnn where it has one (README: Walk-through). A config is resolved once
(preset file, then overrides), validated, and saved with every run and checkpoint as TOML.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxvoice import files
from jaxvoice.errors import UserError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "stack"  # the model family: stack (char-rnn's layers of one cell) | a registered one
    cell: str = "lstm"  # lstm | gru | rnn (tanh) | a registered one (jaxvoice.register_cell, --import)
    rnn_size: int = 128
    num_layers: int = 2
    wordvec_size: int = 64
    dropout: float = 0.0  # between layers, training only
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    kernels: str = "auto"  # auto: the fast implementations (jaxvoice.fast) | xla: the cells' equations
    # kind = "tiered" (SampleRNN's frame-level tier, jaxvoice.tiered): cell x rnn_size x num_layers step once
    # per frame; wordvec_size is the sample embedding
    frame_size: int = 16  # samples per frame (train.seq_length must be a multiple)
    frame_input: str = "scaled"  # scaled: the frame's samples in [-2, 2] | embedded: their wordvecs
    sample_level: str = "mlp"  # mlp: over the last frame_size samples | rnn: one cell layer over every sample
    sample_size: int = 256  # width of the sample level
    sample_layers: int = 2  # the MLP's hidden layers
    sample_conditioning: str = "first"  # the frame tier conditions the MLP's first layer | every layer
    sample_input: str = "embedded"  # each sample into the sample level: embedded | scaled to [-2, 2] | both
    upsampling: str = "per_position"  # frame output -> its F vectors: per_position maps | shared (+ biases)
    tiers: int = 2  # 2: frame tier + sample level | 3: a top tier every top_frame_size samples above them
    top_frame_size: int = 64  # tiers = 3: samples per top-tier step, a multiple of frame_size
    sample_history: int = 0  # the W samples before the sample level's window, read linearly (0: none)
    sample_history_rank: int = 0  # Q > 0: the history through Q channels the frame tier scales (0: W x D)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 50  # B parallel contiguous streams
    seq_length: int = 50  # T steps of truncated BPTT
    learning_rate: float = 2e-3
    grad_clip: float = 5.0
    clip: str = "value"  # value: clamp each element (torch-rnn) | norm: scale by global norm
    lr_schedule: str = "step"  # step (torch-rnn decay) | constant | cosine
    lr_decay_every: int = 5  # epochs, for the step schedule
    lr_decay_factor: float = 0.5
    weight_decay: float = 0.0  # > 0: AdamW's decoupled decay of the matrices (0: Adam, torch-rnn's)
    ema_decay: float = 0.0  # > 0: evaluate, save and sample a moving average of the weights (0: the weights)
    ema_warmup: float = 10.0  # W > 1: the average's decay is (1 + t) / (W + t) until that reaches ema_decay
    state_reset_prob: float = 0.0  # p: each stream's carried state starts fresh at a window with chance p
    max_epochs: int = 50
    eval_every: int = 1000  # steps
    checkpoint_every: int = 1000  # steps
    keep_checkpoints: int = 3  # newest K kept, plus the best by val loss
    seed: int = 123
    sample_seconds: float = 0.0  # at every checkpoint, RUN/samples/step_N.wav of this length (0: off)


@dataclass(frozen=True)
class SampleConfig:
    length: int = 2000
    temperature: float = 1.0
    num_streams: int = 1
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    chunk: int = 2048  # steps per compiled scan
    seed: int = 0
    weights: str = "float32"  # float32 | bfloat16 (rounded weights: faster with many streams, see sample.py)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "sample": SampleConfig}

CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16"),
    "model.kernels": ("auto", "xla"),
    "train.clip": ("value", "norm"),
    "train.lr_schedule": ("step", "constant", "cosine"),
    "sample.weights": ("float32", "bfloat16"),
}


INT_LIMIT = (1 << 31) - 1
SEED_LIMIT = 1 << 32  # JAX keys from 32-bit seeds: a larger seed would silently equal a smaller one


def check_seed(seed: int, name: str = "seed") -> int:
    """`seed` if it is a whole number in 0 .. 2**32 - 1 (what a JAX or numpy seed holds exactly), else UserError."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{name} must be a whole number from 0 to {SEED_LIMIT - 1}, got {seed}")
    return seed


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _unknown_key(key: str) -> UserError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not close and "." not in key:
        close = [k for k in all_keys() if k.endswith("." + key)][:1]
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid sections are {', '.join(SECTIONS)}"
    return UserError(f"unknown config key '{key}'{hint}")


def _field_type(key: str) -> type:
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    types = {f.name: f.type for f in dataclasses.fields(cls)} if cls else {}
    if name not in types:
        raise _unknown_key(key)
    return {"int": int, "float": float, "str": str, "bool": bool}[types[name]]


def _coerce(key: str, value: Any, parse: bool) -> Any:
    """Check (TOML values) or parse (override strings, `parse`) a value against the field's type."""
    kind = _field_type(key)
    if parse and isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                return text.lower() == "true"
            return kind(text)
        except ValueError:
            raise UserError(f"{key} must be {kind.__name__}, got '{value}'") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise UserError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def _validate(cfg: Config) -> Config:
    for key, options in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in options:
            raise UserError(f"{key} must be one of {', '.join(options)}, got '{value}'")
    positive = [
        "model.rnn_size",
        "model.num_layers",
        "model.wordvec_size",
        "model.frame_size",
        "model.sample_size",
        "model.sample_layers",
        "model.top_frame_size",
        "train.batch_size",
        "train.seq_length",
        "train.lr_decay_every",
        "train.max_epochs",
        "train.eval_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "sample.num_streams",
        "sample.chunk",
    ]
    for key in positive:
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) <= 0:
            raise UserError(f"{key} must be positive, got {getattr(getattr(cfg, section), name)}")
    checks = [
        (0.0 <= cfg.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (
            math.isfinite(cfg.train.learning_rate) and cfg.train.learning_rate > 0,
            "train.learning_rate must be a positive number",
        ),
        (cfg.train.grad_clip > 0, "train.grad_clip must be positive"),
        (0.0 < cfg.train.lr_decay_factor <= 1.0, "train.lr_decay_factor must be in (0, 1]"),
        (cfg.train.weight_decay >= 0, "train.weight_decay must be >= 0 (0 turns it off)"),
        (
            0.0 <= cfg.train.state_reset_prob < 1.0,
            "train.state_reset_prob must be in [0, 1), e.g. 0.01 (0: fresh states only at epoch starts)",
        ),
        (
            0.0 <= cfg.train.ema_decay < 1.0,
            "train.ema_decay must be in [0, 1), e.g. 0.999 (0 turns the weights' moving average off)",
        ),
        (
            math.isfinite(cfg.train.ema_warmup) and cfg.train.ema_warmup > 1,
            "train.ema_warmup must be a number > 1, e.g. 10 (the average then spans ~1/9 of the steps so far)",
        ),
        (cfg.sample.temperature > 0, "sample.temperature must be > 0"),
        (
            math.isfinite(cfg.train.sample_seconds) and 0 <= cfg.train.sample_seconds <= 3600,
            "train.sample_seconds must be from 0 (off) to 3600",
        ),
        (cfg.sample.top_k >= 0, "sample.top_k must be >= 0 (0 turns it off)"),
        (0.0 < cfg.sample.top_p <= 1.0, "sample.top_p must be in (0, 1]"),
        (cfg.sample.length >= 0, "sample.length must be >= 0"),
        (cfg.model.sample_history >= 0, "model.sample_history must be >= 0 (0 turns it off)"),
        (
            cfg.model.sample_history_rank >= 0,
            "model.sample_history_rank must be >= 0 (0: one full map of the history)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    from jaxvoice import model  # the registries of model families and cells (and so JAX), only here

    model.check(cfg.model)
    multiple = model.window_multiple(cfg.model)
    if cfg.train.seq_length % multiple:
        raise UserError(
            f"train.seq_length must be a multiple of {multiple} for model.kind {cfg.model.kind} "
            f"(whole frames of its slowest tier), got {cfg.train.seq_length}"
        )
    check_seed(cfg.train.seed, "train.seed")
    check_seed(cfg.sample.seed, "sample.seed")
    for key in all_keys():  # sizes and counts end up in int32 shapes and step counters inside jit
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if type(value) is int and key not in ("train.seed", "sample.seed") and value > INT_LIMIT:
            raise UserError(f"{key} must be at most {INT_LIMIT}, got {value}")
    return cfg


def _merge(cfg: Config, tree: dict[str, Any], parse: bool) -> Config:
    """`cfg` with a {section: {key: value}} mapping merged in, each value type-checked (not yet validated)."""
    for section, values in tree.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise _unknown_key(section)
        updates = {name: _coerce(f"{section}.{name}", v, parse) for name, v in values.items()}
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **updates)})
    return cfg


def from_dict(tree: dict[str, Any], base: Config | None = None, parse: bool = False) -> Config:
    """Merge a {section: {key: value}} mapping into `base` (defaults if None), type-checked and validated."""
    return _validate(_merge(base or Config(), tree, parse))


def resolve_preset(name_or_path: str | Path) -> Path:
    """A path to a TOML file, or the name of a shipped preset ('tiny', 'voice_2016', ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.toml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
    raise UserError(f"config '{name_or_path}' not found: give a TOML file or one of the presets: {names}")


def load(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The resolved config: defaults, then the TOML file (path or preset name), then `key=value` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        file = resolve_preset(path)
        try:
            tree = files.loads_toml(file.read_text(encoding="utf-8"))
        except ValueError as e:  # TOMLDecodeError, UnicodeDecodeError, too deeply nested
            raise UserError(f"config {file} is not valid TOML: {e}") from None
        except OSError as e:
            raise UserError(f"cannot read config {file}: {e.strerror or e}") from None
    return apply_overrides(_merge(Config(), tree, parse=False), overrides)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """`cfg` with `section.key=value` overrides applied, validated once they all are (so their order does
    not matter: `model.tiers=3` may come before the `model.top_frame_size` it needs)."""
    for item in overrides:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or "." not in key:
            if not eq:
                raise UserError(
                    f"override '{item}' must look like section.key=value, e.g. train.batch_size=32"
                )
            raise _unknown_key(key)
        section, name = key.split(".", 1)
        cfg = _merge(cfg, {section: {name: value}}, parse=True)
    return _validate(cfg)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


# Keys that may change when a run is resumed: they do not change what the steps compute (model.kernels only
# how, to float rounding). Every sample.* key may change too: sampling settings are not part of training.
RESUMABLE_CHANGES = frozenset(
    {
        "train.max_epochs",
        "train.eval_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.sample_seconds",
        "model.kernels",
    }
)


def differences(a: Config, b: Config, *, resumable: bool = True) -> dict[str, tuple[Any, Any]]:
    """{key: (value in a, value in b)} for every training key (model.*, train.*) that differs; without
    `resumable`, only those that change what the steps compute (not in RESUMABLE_CHANGES)."""
    da, db = to_dict(a), to_dict(b)
    return {
        f"{s}.{k}": (da[s][k], db[s][k])
        for s in da
        if s != "sample"
        for k in da[s]
        if da[s][k] != db[s][k] and (resumable or f"{s}.{k}" not in RESUMABLE_CHANGES)
    }


def describe_differences(diff: dict[str, tuple[Any, Any]], a_name: str, b_name: str) -> str:
    """'model.rnn_size (128 in a_name, 64 in b_name), ...' for a message."""
    return ", ".join(f"{key} ({a!r} in {a_name}, {b!r} in {b_name})" for key, (a, b) in diff.items())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def dumps(cfg: Config) -> str:
    """TOML text of every value (the flat two-level shape needs no TOML writer library)."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {_toml_value(v)}" for name, v in values.items()]
        lines.append("")
    return "\n".join(lines)
