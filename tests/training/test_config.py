from collections.abc import Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Literal

import pytest

from mambacontrol.errors import ConfigError
from mambacontrol.training.config import (
    arguments_for,
    config_differences,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    require_same_config,
    signature_fields,
)


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine"] = "cosine"


@dataclass
class Train:
    steps: int = 10
    channels: list[int] = field(default_factory=lambda: [8, 16])
    optim: Optim = field(default_factory=Optim)
    resume_from: str | None = None
    amp: bool = False
    out: Path = Path("runs")
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    name: str
    seed: int = 0
    train: Train = field(default_factory=Train)


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_nested_values_and_keeps_defaults(tmp_path):
    path = write(tmp_path, "name: toy\ntrain:\n  steps: 5\n  optim:\n    lr: 1e-3\n"
                           "    betas: [0.5, 0.9]\n")
    cfg = load_config(Run, path)
    assert cfg == Run(name="toy", train=Train(steps=5, optim=Optim(lr=1e-3, betas=(0.5, 0.9))))
    assert isinstance(cfg.train.optim.lr, float) and isinstance(cfg.train.optim.betas, tuple)
    assert cfg.train.channels == [8, 16] and cfg.train.out == Path("runs")


def test_unknown_nested_key_names_dotted_key_valid_keys_and_file(tmp_path):
    path = write(tmp_path, "name: toy\ntrain:\n  optim:\n    lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Run, path)
    msg = str(err.value)
    assert "'train.optim.lrr'" in msg and "did you mean 'lr'" in msg
    assert "valid keys at 'train.optim': lr, betas, schedule" in msg
    assert str(path) in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="unknown key 'sed'.*at the top level: name, seed, train"):
        config_from_dict(Run, {"name": "x", "sed": 1})


@pytest.mark.parametrize("key, value, expected", [
    ("seed", "2.5", "seed: expected int, got 2.5 \\(float\\)"),
    ("seed", "true", "seed: expected int, got True \\(bool\\)"),
    ("train.steps", "'10'", "train.steps: expected int, got '10' \\(str\\)"),
    ("train.amp", "1", "train.amp: expected bool, got 1 \\(int\\)"),
    ("train.optim.lr", "fast", "train.optim.lr: expected float, got 'fast'"),
    ("train.optim.lr", "false", "train.optim.lr: expected float, got False"),
    ("train.optim.schedule", "linear", "'linear' is not one of 'constant', 'cosine'"),
    ("train.optim.betas", "[0.9]", "train.optim.betas: expected 2 values"),
    ("train.channels", "[8, x]", "train.channels\\[1\\]: expected int, got 'x'"),
    ("train.channels", "8", "train.channels: expected list\\[int\\], got 8"),
    ("train.resume_from", "[1]", "train.resume_from: expected str, got \\[1\\]"),
    ("train.weights", "{a: x}", "train.weights.a: expected float, got 'x'"),
    ("train.optim", "3", "train.optim: expected a mapping of lr, betas, schedule"),
])
def test_wrong_types_name_key_value_and_expected_type(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(Run, text="name: toy\n", overrides=[f"{key}={value}"])


def test_numbers_follow_yaml_with_float_kindness():
    # PyYAML reads "1e-4" as a str
    cfg = load_config(Run, text="name: toy\ntrain: {optim: {lr: 1e-4}}\n")
    assert cfg.train.optim.lr == 1e-4
    cfg = load_config(Run, text="name: toy\ntrain: {optim: {lr: 1}}\n")
    assert cfg.train.optim.lr == 1.0 and isinstance(cfg.train.optim.lr, float)


@dataclass
class Precision:
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    name: str = "run"
    amp: bool = False


@pytest.mark.parametrize("word", ["no", "off", "yes", "on", "No", "OFF"])
def test_yaml_11_booleans_stay_words(word):
    # PyYAML's YAML 1.1 reads no/off/yes/on as booleans; a config reads them as YAML 1.2 does
    cfg = load_config(Precision, text=f"name: {word}\n")
    assert cfg.name == word
    assert load_config(Precision, overrides=[f"name={word}"]).name == word
    with pytest.raises(ConfigError, match=f"amp: expected bool, got '{word}' \\(str\\)"):
        load_config(Precision, overrides=[f"amp={word}"])


def test_a_choice_named_no_is_the_word_and_true_false_stay_booleans():
    assert load_config(Precision, overrides=["mixed_precision=no"]).mixed_precision == "no"
    assert load_config(Precision, text="mixed_precision: no\n").mixed_precision == "no"
    assert load_config(Precision, overrides=["amp=true"]).amp is True
    assert load_config(Precision, text="amp: False\n").amp is False
    # a dumped config reads back the same
    cfg = Precision(mixed_precision="no", name="off", amp=True)
    assert load_config(Precision, text=dump_config(cfg)) == cfg


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing key 'name' \\(str\\)"):
        load_config(Run, text="seed: 1\n")


def test_overrides_parse_yaml_scalars_lists_and_null():
    cfg = load_config(Run, text="name: toy\ntrain: {resume_from: a}\n", overrides=[
        "train.optim.lr=3e-4", "train.channels=[4, 8, 16]", "train.resume_from=null",
        "seed=7", "train.optim.schedule=constant", "name=other", "train.weights.kl=1e-6"])
    assert cfg.train.optim.lr == 3e-4 and cfg.train.channels == [4, 8, 16]
    assert cfg.train.resume_from is None and cfg.seed == 7 and cfg.name == "other"
    assert cfg.train.optim.schedule == "constant" and cfg.train.weights == {"kl": 1e-6}


def test_bad_overrides_are_named():
    with pytest.raises(ConfigError,
                       match="override 'train.optim.lrr=1'.*unknown key 'train.optim.lrr'"):
        load_config(Run, text="name: t\n", overrides=["train.optim.lrr=1"])
    with pytest.raises(ConfigError, match="override 'seed.x=1': seed is a int, it has no key 'x'"):
        load_config(Run, text="name: t\n", overrides=["seed.x=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(Run, text="name: t\n", overrides=["seed"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, text="name: t\n", overrides=["train.channels=[1, 2"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Run, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line 3, column 1"):
        load_config(Run, write(tmp_path, "name: t\ntrain: [1,\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Run, write(tmp_path, "- 1\n- 2\n"))


def test_dump_round_trip_is_equal_and_plain(tmp_path):
    cfg = load_config(Run, text="name: toy\n",
                      overrides=["train.optim.lr=1e-5", "train.weights.a=2"])
    text = dump_config(cfg)
    assert "!!python" not in text and text.index("name") < text.index("train")
    assert load_config(Run, text=text) == cfg
    assert config_to_dict(cfg)["train"]["optim"]["betas"] == [0.9, 0.999]


def test_differences_and_resume_refusal():
    a = load_config(Run, text="name: toy\n")
    b = load_config(Run, text="name: toy\n",
                    overrides=["train.optim.lr=2e-4", "train.channels=[8]"])
    assert config_differences(a, a) == []
    assert config_differences(a, b) == ["train.channels: [8, 16] -> [8]",
                                        "train.optim.lr: 0.0001 -> 0.0002"]
    assert config_differences({"x": 1}, {"y": 1}) == ["x: 1 -> <absent>", "y: <absent> -> 1"]
    assert config_differences({"x": 1}, {"x": True}) == ["x: 1 -> true"]
    require_same_config(config_to_dict(a), a, "run directory r")
    with pytest.raises(ConfigError, match="run directory r was started with another config "
                                          "\\(train.channels: .*train.optim.lr: "
                                          "0.0001 -> 0.0002\\)"):
        require_same_config(config_to_dict(a), b, "run directory r")


class Net:
    """A component stand-in: its signature is the only place its defaults live."""

    def __init__(self, width: int, channels: Sequence[int] = (8, 16),
                 levels: Sequence[bool] | None = None, mode: Literal["a", "b"] = "a"):
        self.args = dict(width=width, channels=channels, levels=levels, mode=mode)


def test_signature_fields_take_names_types_and_defaults_from_the_signature():
    Section = make_dataclass("Section", signature_fields(Net, ["mode", "channels", "levels"])
                             + [("switch", bool, field(default=True))])
    assert [f.name for f in fields(Section)] == ["mode", "channels", "levels", "switch"]
    section = load_config(Section)
    assert section == Section(mode="a", channels=[8, 16], levels=None, switch=True)
    assert load_config(Section, overrides=["levels=[true, false]"]).levels == [True, False]
    with pytest.raises(ConfigError, match="channels: expected list\\[int\\], got 8"):
        load_config(Section, overrides=["channels=8"])
    with pytest.raises(ConfigError, match="'c' is not one of 'a', 'b'"):
        load_config(Section, overrides=["mode=c"])
    with pytest.raises(ValueError, match="'depth' is not an argument of Net"):
        signature_fields(Net, ["depth"])


def test_arguments_for_passes_a_section_back_to_its_callable():
    Section = make_dataclass("Section", signature_fields(Net, ["channels", "mode"])
                             + [("switch", bool, field(default=True))])
    section = Section()
    args = arguments_for(Net, section)
    assert args == {"channels": [8, 16], "mode": "a"}  # not the section's own switch
    args["channels"].append(32)
    assert section.channels == [8, 16]  # copies
    assert Net(width=4, **arguments_for(Net, section)).args["channels"] == [8, 16]
