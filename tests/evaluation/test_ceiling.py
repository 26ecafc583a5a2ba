"""The autoencoder ceiling: the true later scan through a model's representation, decoded as a
prediction is, scored beside the models (issue 13)."""

import csv
import json

import numpy as np
import pytest
import torch

from mambacontrol.cli.main import main
from mambacontrol.data import Manifest
from mambacontrol.evaluation.evaluate import CHANGE_THRESHOLD, GridScans
from mambacontrol.evaluation.metrics import image_metrics
from mambacontrol.evaluation.records import AUTOENCODER_CEILING, TRAJECTORY_HEAD
from mambacontrol.pipeline.progression import ProgressionPipeline, reconstruct_follow_up


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return ProgressionPipeline.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def first_test_pair(tiny_cohort, pipe):
    manifest = Manifest.from_csv(tiny_cohort)
    pair = manifest.select("test").pairs()[0]
    scans = GridScans(manifest, pipe.atlas, seed=0)
    return pair, scans.load(pair.earlier), scans.load(pair.later)


def difference_of_decodes(pipe, base, follow) -> np.ndarray:
    """x_base + D(E(follow)) − D(E(base)), clipped to [0, 1], zero outside the brain mask."""
    ae = pipe.autoencoder
    x = torch.from_numpy(base.image.astype(np.float32))[None, None]
    y = torch.from_numpy(follow.image.astype(np.float32))[None, None]
    with torch.no_grad():
        image = (x + ae.decode(ae.encode(y)) - ae.decode(ae.encode(x)))[0, 0].double()
    return np.where(base.mask, image.clamp(0, 1).numpy(), 0.0)


def test_reconstruction_is_the_difference_of_decodes(pipe, first_test_pair):
    _, base, follow = first_test_pair
    got = pipe.reconstruct(base.image, follow.image, mask=base.mask)
    assert got.shape == base.image.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, difference_of_decodes(pipe, base, follow), atol=1e-5)
    assert not np.allclose(got, np.where(base.mask, base.image, 0.0), atol=1e-4)


def test_the_baseline_reconstructs_to_itself_under_the_difference_rule(pipe, first_test_pair):
    _, base, _ = first_test_pair
    got = pipe.reconstruct(base.image, base.image, mask=base.mask)
    np.testing.assert_allclose(got, np.where(base.mask, base.image.clip(0, 1), 0.0), atol=1e-6)
    direct = pipe.reconstruct(base.image, base.image, mask=base.mask, decode="direct")
    assert np.abs(direct - got).max() > 1e-3  # the direct rule keeps the reconstruction error


def test_a_latent_gain_scales_the_latent_change(pipe, first_test_pair):
    """z_base + g (z_follow − z_base): g = 1 is the ceiling, g = 0 the baseline itself, and the
    decoded change of g = 2 is the decoder's response to twice the latent change."""
    _, base, follow = first_test_pair
    ae = pipe.autoencoder
    ceiling = reconstruct_follow_up(ae, base.image, follow.image, base.mask, latent_gain=1.0)
    np.testing.assert_array_equal(ceiling, pipe.reconstruct(base.image, follow.image,
                                                            mask=base.mask))
    none = reconstruct_follow_up(ae, base.image, follow.image, base.mask, latent_gain=0.0)
    np.testing.assert_allclose(none, np.where(base.mask, base.image.clip(0, 1), 0.0), atol=1e-6)
    x, y = (torch.from_numpy(a.astype(np.float32))[None, None] for a in (base.image, follow.image))
    with torch.no_grad():
        z_base, z_follow = ae.encode(x), ae.encode(y)
        want = (x + ae.decode(2 * z_follow - z_base) - ae.decode(z_base))[0, 0].double()
    twice = reconstruct_follow_up(ae, base.image, follow.image, base.mask, latent_gain=2.0)
    np.testing.assert_allclose(twice, np.where(base.mask, want.clamp(0, 1).numpy(), 0.0),
                               atol=1e-5)


def test_reconstruct_refuses_a_scan_off_the_grid(pipe, first_test_pair):
    _, base, _ = first_test_pair
    with pytest.raises(ValueError, match="follow-up shape .* is not the model grid"):
        pipe.reconstruct(base.image, base.image[1:])


def test_the_ceiling_row_is_the_reconstruction_scored(tiny_model, tiny_cohort, pipe,
                                                      first_test_pair, tmp_path):
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--manifest", str(tiny_cohort), "--model", str(tiny_model),
                 "--out", str(out), "--max-pairs", "1", "--samples", "1", "--steps", "1",
                 "--baselines", "copy"]) == 0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["methods"] == [tiny_model.name, "copy-baseline", TRAJECTORY_HEAD,
                                  AUTOENCODER_CEILING, "measurement-floor"]
    assert summary["method_kinds"][AUTOENCODER_CEILING] == "ceiling"
    assert "change_ratio" in summary["key_groups"][AUTOENCODER_CEILING]["hippocampus"]

    pair, base, follow = first_test_pair
    with (out / "pairs.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["method"] == AUTOENCODER_CEILING)
    assert (row["baseline_uid"], row["followup_uid"]) == (pair.earlier.image_uid,
                                                          pair.later.image_uid)
    expected = image_metrics(difference_of_decodes(pipe, base, follow), base.image, follow.image,
                             base.mask, threshold=CHANGE_THRESHOLD)
    for key, value in expected.items():
        assert float(row[key]) == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert "autoencoder-ceiling" in (out / "report.html").read_text()

    off = tmp_path / "off"
    assert main(["-q", "evaluate", "--manifest", str(tiny_cohort), "--model", str(tiny_model),
                 "--out", str(off), "--max-pairs", "1", "--samples", "1", "--steps", "1",
                 "--baselines", "copy", "--no-ceiling"]) == 0
    methods = json.loads((off / "metrics.json").read_text())["summary"]["methods"]
    assert AUTOENCODER_CEILING not in methods
