"""from_pretrained with a Hugging Face Hub id, offline, from a local cache folder in the Hub's
layout."""

import numpy as np
import pytest
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.cli.main import main
from mambacontrol.errors import ModelError
from mambacontrol.io import save_nifti
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.models.schedulers import NoiseSchedule
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.progression import (
    ProgressionPipeline,
    SamplingDefaults,
    resolve_model_folder,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """``<cache>/models--org--tiny/snapshots/<commit>/`` holding a saved model, ``refs/main``."""
    atlas = load_atlas(grid="4mm")
    torch.manual_seed(0)
    ae = Autoencoder(channels=[8, 8, 8], latent_channels=2, norm_num_groups=4)
    unet = DenoisingUNet(latent_channels=2, channels=[8, 16], attention_levels=[False, True],
                         norm_num_groups=4, num_head_channels=8, context_dim=8)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pipe = ProgressionPipeline(ae, unet, NoiseSchedule(num_train_timesteps=100), atlas,
                               sampling=SamplingDefaults(num_inference_steps=2, num_samples=1))
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / "models--org--tiny"
    pipe.save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache, pipe


@pytest.fixture
def offline(hub_cache, monkeypatch, tmp_path):
    cache, _ = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no folder called org/tiny here
    return cache


def _same_weights(a, b):
    for name in ("autoencoder", "unet"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hub_id_loads_offline_from_the_cache(hub_cache, offline):
    _, pipe = hub_cache
    assert resolve_model_folder("org/tiny") == offline / "models--org--tiny" / "snapshots" / COMMIT
    _same_weights(ProgressionPipeline.from_pretrained("org/tiny"), pipe)
    by_commit = ProgressionPipeline.from_pretrained("org/tiny", revision=COMMIT, cache_dir=offline)
    _same_weights(by_commit, pipe)


def test_hub_id_not_cached_offline_is_one_clear_line(offline):
    with pytest.raises(ModelError) as err:
        ProgressionPipeline.from_pretrained("org/missing")
    msg = str(err.value)
    assert msg.startswith("org/missing: not a local folder and not in the Hugging Face cache")
    assert "connect or download it first" in msg and "\n" not in msg
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        ProgressionPipeline.from_pretrained("org/tiny", revision="v2")  # no refs/v2 cached


def test_local_folder_wins_and_paths_are_not_hub_ids(hub_cache, offline, tmp_path):
    _, pipe = hub_cache
    pipe.save_pretrained(tmp_path / "org" / "tiny")  # a local folder of that name wins
    assert resolve_model_folder("org/tiny").resolve() == tmp_path / "org" / "tiny"
    for path in ("runs/a/b", "./x/y", "/abs/model", "../up/x", "model"):
        assert resolve_model_folder(path) == type(tmp_path)(path)
    with pytest.raises(ModelError, match="not a mambacontrol model"):
        ProgressionPipeline.from_pretrained("runs/a/b")


def test_predict_accepts_a_hub_id(hub_cache, offline, tmp_path, capsys):
    atlas = load_atlas(grid="4mm")
    scan = tmp_path / "scan.nii.gz"
    save_nifti(scan, np.asarray(atlas.template), atlas.grid.affine, dtype=np.float32)
    args = ["-q", "predict", str(scan), "--age", "70", "--sex", "F", "--diagnosis", "MCI",
            "--years", "1", "--no-volumes"]
    assert main([*args, "--model", "org/missing", "--out", str(tmp_path / "p0")]) == 2
    err = capsys.readouterr().err
    assert "org/missing: not a local folder and not in the Hugging Face cache" in err
    assert err.count("\n") == 1
    assert main([*args, "--model", "org/tiny", "--out", str(tmp_path / "p1"), "--samples", "1",
                 "--steps", "2"]) == 0
    assert (tmp_path / "p1" / "summary.json").is_file()
