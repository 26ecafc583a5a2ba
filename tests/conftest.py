"""Shared fixtures: tiny NIfTI files and manifests written to a temporary folder."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture
def write_nifti(tmp_path):
    """Write an array as NIfTI and return its path: ``write_nifti(data, name, affine=None)``."""

    def _write(data, name="img.nii.gz", affine=None):
        path = tmp_path / name
        aff = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
        nib.save(nib.Nifti1Image(np.asarray(data), aff), str(path))
        return path

    return _write


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """A synthetic cohort of 7 subjects (2–3 visits) on the 4 mm atlas grid, built once."""
    # lazy (here and below): only the tests that use these fixtures pay for the imports
    from mambacontrol.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, subjects=7, seed=5, grid="4mm", visits=(2, 3), split=(0.6, 0.15, 0.25),
                    figure=False)
    return out / "manifest.csv"


TINY_RUN_YAML = """
seed: 0
data: {grid: 4mm}
engine: {mixed_precision: "no", checkpoint_every: 2, keep_checkpoints: 2, log_every: 1,
         image_every: 2}
autoencoder:
  model: {channels: [8, 8, 8], latent_channels: 2, num_res_blocks: 1, norm_num_groups: 4}
  train: {steps: 2, batch_size: 1, lr: 1.0e-3, warmup_steps: 0, patch_size: [16, 16, 16],
          scale_scans: 2}
graph:
  model: {embed_dim: 8, num_layers: 1, num_tokens: 2}
  train: {steps: 3, batch_size: 4}
# the guidance null's training on, so every tiny run (and the resume test) goes through it
unet:
  model: {channels: [8, 16], attention_levels: [false, true], norm_num_groups: 4,
          num_head_channels: 8}
  train: {steps: 3, batch_size: 2, lr: 1.0e-3, warmup_steps: 0,
          condition_dropout: 0.3, zero_horizon_pairs: 0.3}
controlnet:
  model: {mamba_d_state: 4, fourier_modes: [2, 2, 2], hint_width: 8}
  train: {steps: 3, batch_size: 2, lr: 1.0e-3, warmup_steps: 0,
          condition_dropout: 0.3, zero_horizon_pairs: 0.3}
sampling: {num_inference_steps: 2, num_samples: 2}
"""


@pytest.fixture(scope="session")
def tiny_run_config(tmp_path_factory):
    """A YAML run config with every stage tiny (seconds on a CPU)."""
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY_RUN_YAML)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_cohort, tiny_run_config, tmp_path_factory):
    """A model trained through every stage of the tiny config (a run folder)."""
    from mambacontrol.training.runner import TrainingRun, resolve_config  # lazy: torch

    out = tmp_path_factory.mktemp("run")
    cfg = resolve_config(tiny_run_config, [], manifest=tiny_cohort)
    TrainingRun(cfg, out).run("all")
    return out
