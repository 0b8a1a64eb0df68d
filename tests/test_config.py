"""Configs are data: typed, checked, with the fix named."""

from pathlib import Path

import pytest

from pyrovae.errors import ConfigError
from pyrovae.run.config import Config, apply_overrides, config_from_dict, load_config
from pyrovae.run.recipes import build

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_build(path):
    from pyrovae.data.splits import image_shape
    from pyrovae.run.configcheck import validate

    cfg = load_config(path)
    model, guide = build(cfg, image_shape(cfg.data.name))
    assert model.latent_dim == guide.latent_dim
    validate(cfg)  # options, pixels against likelihood, on the meta device
    assert config_from_dict(cfg.to_dict()) == cfg


def test_dianne_reference_run_is_one_config_away():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "dianne_mnist_2d.toml")
    assert cfg.model.options["latent_dim"] == 2
    assert cfg.model.options["hidden"] == [512, 512, 512] and cfg.guide.options["hidden"] == [512, 512, 512]
    assert (cfg.train.batch_size, cfg.train.max_steps, cfg.train.num_particles) == (128, 5000, 1)
    assert cfg.model.options["likelihood"] == "bernoulli"


def test_unknown_keys_name_the_closest_one():
    with pytest.raises(ConfigError, match=r"train\.epoch.*did you mean 'epochs'"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="unknown config key 'sed'.*did you mean 'seed'"):
        config_from_dict({"sed": 1})


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size must be int"):
        config_from_dict({"train": {"batch_size": "128"}})
    with pytest.raises(ConfigError, match=r"train\.grad_clip must be float or null"):
        config_from_dict({"train": {"grad_clip": "big"}})
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_toml_errors_and_overrides(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    raw = apply_overrides(Config().to_dict(), ["train.epochs=3", "model.hidden=[10, 10]", "device=cpu"])
    cfg = config_from_dict(raw)
    assert cfg.train.epochs == 3 and cfg.model.options["hidden"] == [10, 10] and cfg.device == "cpu"
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["epochs"])


def test_the_pixel_mode_comes_from_the_likelihood_when_the_config_leaves_it_out():
    """An 8-bit likelihood on one's own folder needs no data.pixels; the choice is recorded."""
    vae = lambda likelihood: {"name": "vae", "likelihood": likelihood}  # noqa: E731
    assert config_from_dict({"model": vae("discretized_logistic_mixture")}).data.pixels == "8bit"
    assert config_from_dict({"model": vae("gaussian")}).data.pixels == "continuous"
    assert config_from_dict({"model": vae("bernoulli")}).data.pixels == "dynamic"
    assert config_from_dict({}).data.pixels == "dynamic"  # no likelihood named: the default VAE's
    explicit = config_from_dict({"model": vae("gaussian"), "data": {"pixels": "dynamic"}})
    assert explicit.data.pixels == "dynamic"  # said: kept (and then checked against the likelihood)
    recorded = config_from_dict({"model": vae("categorical")}).to_dict()
    assert recorded["data"]["pixels"] == "8bit" and config_from_dict(recorded).data.pixels == "8bit"


def test_config_override_is_the_set_of_the_command_line():
    base = Config()
    changed = base.override("train.epochs=3", ("data.root", "/d"), "model.hidden=[10, 10]")
    assert changed == config_from_dict(
        apply_overrides(base.to_dict(), ["train.epochs=3", "data.root=/d", "model.hidden=[10, 10]"])
    )
    assert changed.train.epochs == 3 and base.train.epochs != 3  # a new config; the old one stays
    with pytest.raises(ConfigError, match="train.epochs must be an integer >= 0"):
        base.override("train.epochs=-1")
