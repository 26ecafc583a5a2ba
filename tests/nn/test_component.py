import json

import pytest
import torch
from diffusers.configuration_utils import register_to_config

from mambacontrol.errors import ModelError
from mambacontrol.nn.component import WEIGHTS_NAME, Component


class Tiny(Component):
    @register_to_config
    def __init__(self, channels: int = 4, levels=(1, 2)):
        super().__init__()
        self.lin = torch.nn.Linear(channels, channels * len(levels))


class Other(Component):
    @register_to_config
    def __init__(self, channels: int = 4):
        super().__init__()
        self.lin = torch.nn.Linear(channels, channels)


def test_round_trip_bit_identical(tmp_path):
    torch.manual_seed(0)
    m = Tiny(channels=3, levels=[1, 2, 3])
    m.save(tmp_path / "tiny")
    m2 = Tiny.load(tmp_path / "tiny")
    x = torch.randn(5, 3)
    assert torch.equal(m.lin(x), m2.lin(x))
    assert m2.config.levels == [1, 2, 3]
    assert not m2.training


def test_save_overwrites_atomically(tmp_path):
    Tiny(channels=2).save(tmp_path / "t")
    Tiny(channels=3).save(tmp_path / "t")
    assert Tiny.load(tmp_path / "t").config.channels == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_missing_folder_and_wrong_class(tmp_path):
    with pytest.raises(ModelError, match="not a saved Tiny"):
        Tiny.load(tmp_path / "nothing")
    Other().save(tmp_path / "o")
    with pytest.raises(ModelError, match="holds a Other, not a Tiny"):
        Tiny.load(tmp_path / "o")


def test_mismatched_config_and_weights(tmp_path):
    Tiny(channels=3).save(tmp_path / "t")
    cfg = json.loads((tmp_path / "t/config.json").read_text())
    cfg["channels"] = 5
    (tmp_path / "t/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="lin.weight has shape"):
        Tiny.load(tmp_path / "t")
    cfg["levels"] = "nonsense"
    cfg["channels"] = 3
    (tmp_path / "t/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError):
        Tiny.load(tmp_path / "t")


def test_corrupt_weights(tmp_path):
    Tiny().save(tmp_path / "t")
    w = tmp_path / "t" / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(ModelError, match="corrupt weights"):
        Tiny.load(tmp_path / "t")


def test_unknown_config_key_is_refused(tmp_path):
    Tiny().save(tmp_path / "t")
    cfg = json.loads((tmp_path / "t/config.json").read_text())
    cfg["prior_rate"] = [1, 2]
    (tmp_path / "t/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="unknown setting.*prior_rate"):
        Tiny.load(tmp_path / "t")


class Grown(Component):
    """Tiny after a release that added a setting: models saved before it had ``mode="old"``."""

    legacy_defaults = {"mode": "old"}

    @register_to_config
    def __init__(self, channels: int = 4, mode: str = "new"):
        super().__init__()
        self.lin = torch.nn.Linear(channels, channels)


def test_a_setting_older_models_lack_loads_as_what_they_did(tmp_path):
    Grown(mode="new").save(tmp_path / "g")
    assert Grown.load(tmp_path / "g").config.mode == "new"  # a saved setting is kept
    cfg = json.loads((tmp_path / "g/config.json").read_text())
    del cfg["mode"]  # as saved before the setting existed
    (tmp_path / "g/config.json").write_text(json.dumps(cfg))
    assert Grown.load(tmp_path / "g").config.mode == "old"
    assert Grown().config.mode == "new"  # a new model gets the __init__ default
