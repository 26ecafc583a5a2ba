"""validate_run_config: every stage's settings are checked before the first stage runs."""

import pytest

from mambacontrol.errors import ConfigError
from mambacontrol.training.runner import resolve_config
from mambacontrol.training.validate import validate_run_config


def _config(tiny_run_config, tiny_cohort, *overrides):
    return resolve_config(tiny_run_config, list(overrides), manifest=tiny_cohort)


def test_the_engine_takes_what_the_trainer_takes(tiny_run_config, tiny_cohort):
    # checkpoints only at the end, and no gradient clipping, are the Trainer's own options
    validate_run_config(_config(tiny_run_config, tiny_cohort, "engine.checkpoint_every=0",
                                "engine.max_grad_norm=null"))


@pytest.mark.parametrize("override,message", [
    ("engine.checkpoint_every=-1", "engine.checkpoint_every: -1 must be ≥ 0"),
    ("engine.keep_checkpoints=0", "engine.keep_checkpoints: 0 must be ≥ 1"),
    ("engine.max_grad_norm=0", "engine.max_grad_norm: 0.0 must be a positive number"),
    ("unet.train.condition_dropout=1", r"unet.train.condition_dropout: 1.0 must lie in \[0, 1\)"),
    ("controlnet.train.condition_dropout=-0.1", "controlnet.train.condition_dropout: -0.1"),
    ("unet.train.zero_horizon_pairs=1.5", "unet.train.zero_horizon_pairs: 1.5 must lie in"),
    ("controlnet.train.predicted_change=1.5", "controlnet.train.predicted_change: 1.5 must lie in"),
])
def test_bad_engine_settings_are_refused(tiny_run_config, tiny_cohort, override, message):
    with pytest.raises(ConfigError, match=message):
        validate_run_config(_config(tiny_run_config, tiny_cohort, override))
