import dataclasses

import pytest

from jaxvoice import config
from jaxvoice.errors import UserError


def test_defaults_are_torch_rnns():
    cfg = config.Config()
    assert (cfg.train.batch_size, cfg.train.seq_length) == (50, 50)
    assert (cfg.model.wordvec_size, cfg.model.rnn_size, cfg.model.num_layers, cfg.model.dropout) == (
        64,
        128,
        2,
        0.0,
    )
    assert (cfg.train.learning_rate, cfg.train.grad_clip) == (2e-3, 5.0)
    assert (cfg.train.lr_decay_every, cfg.train.lr_decay_factor, cfg.train.checkpoint_every) == (5, 0.5, 1000)
    assert (cfg.sample.length, cfg.sample.temperature) == (2000, 1.0)


@pytest.mark.parametrize("name", ["tiny", "small", "voice_2016", "voice_cpu"])
def test_presets_load_and_say_how_to_launch(name):
    cfg = config.load(name)
    text = config.resolve_preset(name).read_text()
    assert text.startswith("#") and "jaxvoice train" in text
    assert cfg.model.cell == "lstm"


def test_voice_2016_is_the_2016_run():
    cfg = config.load("voice_2016")
    assert (cfg.model.rnn_size, cfg.model.num_layers, cfg.model.wordvec_size) == (680, 3, 110)
    assert (cfg.train.batch_size, cfg.train.seq_length) == (50, 50)


def test_overrides_are_typed():
    cfg = config.load("tiny", ["train.batch_size=7", "train.learning_rate=1e-3", "model.cell=gru"])
    assert cfg.train.batch_size == 7 and cfg.train.learning_rate == 1e-3 and cfg.model.cell == "gru"
    with pytest.raises(UserError, match="train.batch_size must be int"):
        config.load(None, ["train.batch_size=seven"])
    with pytest.raises(UserError, match="model.cell .transformer. is not a registered cell"):
        config.load(None, ["model.cell=transformer"])
    with pytest.raises(UserError, match="section.key=value"):
        config.load(None, ["train.batch_size"])


def test_overrides_are_validated_together_in_any_order():
    """Settings that only work together (a frame-level model's frame size and its windows) may be given in
    any order; the result is validated once, and still refused when it does not work."""
    # one at a time, the first order would fail at frame_size 48 (tiny's windows are 64)
    settings = ["model.kind=tiered", "model.frame_size=48", "train.seq_length=96"]
    for order in (settings, settings[::-1]):
        cfg = config.load("tiny", order)
        assert (cfg.model.kind, cfg.model.frame_size, cfg.train.seq_length) == ("tiered", 48, 96)
    with pytest.raises(UserError, match="train.seq_length must be a multiple of 48"):
        config.load("tiny", [*settings[:-1], "train.seq_length=80"])


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("train.batchsize", "train.batch_size"),
        ("model.rnnsize", "model.rnn_size"),
        ("seq_length", "train.seq_length"),
    ],
)
def test_unknown_key_suggests_the_closest(key, suggestion):
    with pytest.raises(UserError, match=f"did you mean '{suggestion}'"):
        config.load(None, [f"{key}=3"])


def test_unknown_key_in_a_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nbatch_sise = 4\n")
    with pytest.raises(UserError, match="train.batch_size"):
        config.load(path)
    path.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        config.load(path)
    path.write_text('[train]\nbatch_size = "4"\n')
    with pytest.raises(UserError, match="must be int"):
        config.load(path)


@pytest.mark.parametrize(
    "override",
    [
        "train.batch_size=0",
        "model.dropout=1.0",
        "sample.temperature=0",
        "sample.top_p=1.5",
        "train.learning_rate=-1",
        "train.ema_decay=1.0",
        "train.ema_decay=-0.5",
        "train.ema_warmup=1",
        "train.ema_warmup=nan",
    ],
)
def test_impossible_values_are_refused(override):
    with pytest.raises(UserError):
        config.load(None, [override])


def test_dumps_round_trips(tmp_path):
    cfg = config.load("voice_2016", ["train.clip=norm", "sample.top_k=40"])
    path = tmp_path / "resolved.toml"
    path.write_text(config.dumps(cfg))
    assert config.load(path) == cfg
    assert dataclasses.asdict(config.load(path)) == config.to_dict(cfg)


def test_missing_preset_lists_the_presets():
    with pytest.raises(UserError, match="tiny"):
        config.load("no_such_preset")


@pytest.mark.parametrize("name", sorted(p.stem for p in config.PRESET_DIR.glob("*.toml")))
def test_every_preset_builds_and_says_how_to_launch_it(name):
    """Each shipped preset loads, its model family accepts it (check and param shapes, nothing computed),
    and its comment gives a launch line."""
    import jax

    from jaxvoice import model

    cfg = config.load(name)
    model.check(cfg.model)
    shapes = jax.eval_shape(lambda: model.init_params(jax.random.key(0), cfg.model))
    assert jax.tree.leaves(shapes)
    assert f"jaxvoice train --config {name}" in (config.PRESET_DIR / f"{name}.toml").read_text()
