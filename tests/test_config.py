"""Pretraining config: YAML + overrides, round trip, and errors that name the key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from medssl.config import PretrainConfig, load_config, parse_override, save_config
from medssl.errors import MedsslError
from medssl.methods.simclr import SimCLROptions

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
METHOD_FILES = ["simclr", "micle", "moco", "byol", "mae"]


@pytest.mark.parametrize("name", METHOD_FILES)
def test_shipped_configs_load_and_round_trip(name, tmp_path):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.method == name
    again = load_config(save_config(cfg, tmp_path / "config.yaml"))
    assert again == cfg


def test_defaults_round_trip_with_overrides(tmp_path):
    cfg = load_config(None, ["optim.lr=0.5", "model.options.temperature=0.2",
                             "data.augment_overrides.crop_scale=[0.5, 1]", "train.steps=7", "train.epochs=null",
                             "data.source=null"])
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.model.options == SimCLROptions(temperature=0.2)  # parsed into the method's typed options
    assert cfg.train.steps == 7 and cfg.train.epochs is None
    assert load_config(save_config(cfg, tmp_path / "c.yaml")) == cfg


def test_override_values_are_yaml_scalars():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=x=y") == (["a"], "x=y")
    with pytest.raises(MedsslError, match="key.sub=value"):
        parse_override("novalue")


def test_int_is_accepted_for_a_float_field_but_not_the_reverse():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(MedsslError, match=r"data\.batch_size=1\.5 has the wrong type"):
        load_config(None, ["data.batch_size=1.5"])
    with pytest.raises(MedsslError, match=r"train\.channels_last='maybe' has the wrong type"):
        load_config(None, ["train.channels_last=maybe"])


@pytest.mark.parametrize("override, match", [
    ("optim.lrr=0.1", r"unknown key optim\.lrr; did you mean 'lr'"),
    ("trian.steps=3", r"unknown key trian; did you mean 'train'"),
    ("model.options.temprature=0.1", r"unknown key model\.options\.temprature; did you mean 'temperature'\?"),
    ("model.options.temperature=0", r"model\.options\.temperature=0\.0 must be positive"),
    ("model.options=3", r"model\.options=3 must be a mapping"),
    ("optim.lr=-0.1", r"optim\.lr=-0\.1 must be positive"),
    ("train.precision=64", r"train\.precision='64' must be one of 32-true, bf16-mixed, 16-mixed"),
    ("data.batch_size=1", r"data\.batch_size=1 is too small"),
    ("optim.name=adam", r"optim\.name='adam' must be one of adamw, lars, sgd"),
    ("method=simclrr", r"method='simclrr' must be one of"),
    ("data.augment=xray", r"unknown preset 'xray'"),
    ("data.augment_overrides.rotation_deg=400", r"rotation_deg=400"),
    ("data.pair_by=visit", r"data\.pair_by='visit' must be one of patient, study"),
])
def test_bad_keys_and_values_name_the_key(override, match):
    with pytest.raises(MedsslError, match=match):
        load_config(None, [override])


def test_one_training_length_on_the_command_line_replaces_the_files(tmp_path):
    cfg = load_config(None, ["train.steps=5"])
    assert (cfg.train.steps, cfg.train.epochs) == (5, None)
    assert load_config(None, ["train.steps=5", "train.epochs=null"]).train.steps == 5
    with pytest.raises(MedsslError, match=r"exactly one of train\.steps \(5\) and train\.epochs \(10\)"):
        load_config(None, ["train.steps=5", "train.epochs=10"])
    (tmp_path / "c.yaml").write_text("train:\n  steps: 5\n  epochs: 10\n")
    with pytest.raises(MedsslError, match=r"c\.yaml: .*exactly one of train\.steps"):
        load_config(tmp_path / "c.yaml")


def test_batch_must_split_over_processes():
    with pytest.raises(MedsslError, match=r"data\.batch_size=6 must be a multiple of the 4 processes"):
        load_config(None, ["data.batch_size=6", "train.devices=2", "train.num_nodes=2"])
    assert load_config(None, ["method=mae", "model.backbone=vit_tiny", "data.batch_size=2",
                              "train.devices=2"]).world_size == 2


def test_broken_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: simclr\noptim:\n  lr: [0.1\n  name: adamw\n")
    with pytest.raises(MedsslError, match=r"bad\.yaml line \d+: not valid YAML"):
        load_config(path)


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: simclr\ndata:\n  batch_sise: 8\n")
    with pytest.raises(MedsslError, match=r"c\.yaml: config: unknown key data\.batch_sise; did you mean 'batch_size'"):
        load_config(path)
    with pytest.raises(MedsslError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(MedsslError, match="must be a mapping"):
        load_config(path)


def test_default_config_is_valid():
    assert isinstance(load_config(None), PretrainConfig)
