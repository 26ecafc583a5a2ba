import logging

import numpy as np
import pytest
import torch

from mambacontrol.data.covariates import encode_covariates
from mambacontrol.errors import ConfigError, ManifestError, ModelError
from mambacontrol.graph import (
    AnatomyGraph,
    TrajectoryHead,
    TrajectoryModel,
    group_percent_change,
    train_trajectory,
)
from mambacontrol.graph.training import evaluate_loss
from mambacontrol.graph.trajectory import fit_prior, prior_design
from tests.graph.conftest import make_cohort, region_rates

SMALL = {"encoder": {"embed_dim": 16, "num_layers": 1, "num_tokens": 2, "token_heads": 2},
         "head": {"hidden": 16}, "eval_every": 25, "lr": 3e-3}


def _covariates(n, dx="AD", age=70.0):
    return encode_covariates([age] * n, [1.0] * n, ["F"] * n, [dx] * n)


def test_untrained_head_predicts_the_prior_and_no_change_at_zero_horizon():
    torch.manual_seed(0)
    # design (default terms: age): CN, MCI, AD intercepts, then CN, MCI, AD age slopes (per age sd)
    coef = [[-1.0, -2.0, -4.0, 0.0, 0.0, -0.5]] * 4 + [[2.0, 3.0, 6.0, 0.0, 0.0, 1.0]]
    head = TrajectoryHead(embed_dim=8, num_nodes=5, prior_coef=coef)
    emb = torch.randn(3, 5, 8)
    out = head(emb, _covariates(3), torch.tensor([0.0, 1.0, 2.5]))
    assert out.shape == (3, 5) and torch.all(out[0] == 0)
    torch.testing.assert_close(out[2], torch.tensor([-4.0] * 4 + [6.0]) * 2.5 / 100)
    older = head(emb[:1], _covariates(1, age=80.0), torch.tensor([1.0]))  # one sd older
    torch.testing.assert_close(older[0], torch.tensor([-4.5] * 4 + [7.0]) / 100)
    mci = head(emb[:1], _covariates(1, "MCI", age=80.0), torch.tensor([1.0]))
    torch.testing.assert_close(mci[0], torch.tensor([-2.0] * 4 + [3.0]) / 100)
    linear = TrajectoryHead(embed_dim=8, num_nodes=5, curvature=False)
    with torch.no_grad():
        linear.mlp[-1].weight.normal_()
    y = linear(emb[:1].expand(2, -1, -1), _covariates(2), torch.tensor([1.0, 3.0]))
    assert not torch.all(y == 0)
    torch.testing.assert_close(y[1], 3 * y[0])  # without curvature the change is linear in Δt
    with pytest.raises(ValueError, match="prior_coef"):
        TrajectoryHead(embed_dim=8, num_nodes=5, prior_coef=[[0.0, 0.0]])
    with pytest.raises(ValueError, match="prior terms"):
        TrajectoryHead(embed_dim=8, num_nodes=5, prior_terms=["height"])
    assert TrajectoryHead(embed_dim=8, num_nodes=5, prior_terms=["age", "sex", "years"]).prior.shape == (5, 12)


def test_fit_prior_recovers_a_linear_rate_model():
    g = torch.Generator().manual_seed(0)
    n = 60
    dx = ["CN", "MCI", "AD"] * 20
    ages = 60 + 25 * torch.rand(n, generator=g)
    years = 0.5 + 4 * torch.rand(n, generator=g)
    cov = encode_covariates(ages.tolist(), years.tolist(), ["F", "M"] * 30, dx)
    true = torch.tensor([[-1.0, -3.0, -4.5, -0.2, -0.4, -0.6], [2.0, 4.0, 6.0, 0.3, 0.5, 0.9]]).double()
    design = prior_design(cov.double(), years.double())
    log_ratio = years.double()[:, None] * (design @ true.T) / 100
    coef = fit_prior(cov, years, log_ratio, torch.ones(n, 2, dtype=torch.bool), ridge=1e-9)
    np.testing.assert_allclose(coef, true.numpy(), atol=1e-5)
    cn = torch.arange(0, n, 3)
    only_cn = fit_prior(cov[cn], years[cn], log_ratio[cn], torch.ones(len(cn), 2, dtype=torch.bool))
    assert np.all(np.isfinite(only_cn)) and np.all(only_cn[:, [1, 2, 4, 5]] == 0)  # absent diagnoses


def test_head_overfits_a_tiny_cohort(tmp_path, atlas4):
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=6)
    result = train_trajectory(manifest, atlas4, {**SMALL, "population_prior": False}, steps=200, seed=0)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < first / 10
    assert evaluate_loss(result.model, result.train) < first / 10


def test_population_prior_reproduces_a_linear_cohort(tmp_path, atlas4):
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=3)
    result = train_trajectory(manifest, atlas4, SMALL, steps=1)
    head = TrajectoryHead.from_config(result.model.head.config)  # an untrained head with the fitted prior
    emb = torch.zeros(len(result.train), 134, 16)
    pred = head(emb, result.train.covariates, result.train.years)
    # the cohort's rates depend on the diagnosis only: the prior reproduces every pair
    torch.testing.assert_close(pred, result.train.log_ratio, atol=2e-4, rtol=1e-3)


def test_trained_model_round_trip_and_truth(tmp_path, atlas4):
    splits = ["train", "train", "train", "valid", "valid", "test"]
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=6, splits=splits)
    res = train_trajectory(manifest, atlas4, SMALL, steps=50, seed=1, cache_dir=tmp_path / "cache",
                           out_dir=tmp_path / "model")
    assert len(res.train) == 9 and len(res.valid) == 6 and all("valid_loss" in h for h in res.history)
    assert res.history[0]["step"] == 0  # the untrained state (the prior) is a candidate
    # truth: the manifest's log volume ratios, per node
    graph = AnatomyGraph.from_atlas(atlas4)
    pair = res.train.pairs[0]
    expected = pair.years * region_rates(atlas4, pair.earlier.diagnosis) / 100
    np.testing.assert_allclose(res.train.log_ratio[0].numpy(), expected, rtol=1e-4, atol=1e-6)
    loaded = TrajectoryModel.load(tmp_path / "model")
    loaded.check_graph(graph)
    p = pair.earlier
    feats = res.train.features[0].numpy()
    a = loaded.predict(feats, p.age, pair.years, p.sex, p.diagnosis)
    b = res.model.predict(feats, p.age, pair.years, p.sex, p.diagnosis)
    assert a.shape == (1, 134) and np.array_equal(a, b)
    assert train_trajectory(manifest, atlas4, SMALL, steps=50, seed=1).history == res.history  # seeded
    with pytest.raises(ModelError, match="grouping"):
        loaded.check_graph(AnatomyGraph.from_atlas(atlas4, "group"))


def test_label_count_fallback_and_bad_manifests(tmp_path, atlas4, caplog):
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=2, volume_columns=False)
    with caplog.at_level(logging.WARNING):
        res = train_trajectory(manifest, atlas4, SMALL, steps=2)
    assert "sub-voxel" in caplog.text
    assert torch.all(res.train.log_ratio == 0)  # same label map at every visit: no visible change
    one_visit = make_cohort(tmp_path / "d", atlas4, n_subjects=2, visits=(0.0,))
    with pytest.raises(ManifestError, match="no visit pairs"):
        train_trajectory(one_visit, atlas4, SMALL, steps=2)
    with pytest.raises(ConfigError, match="unknown trajectory config key"):
        train_trajectory(manifest, atlas4, {"learning_rate": 1.0}, steps=2)


def test_group_percent_change_uses_each_labels_node(atlas4):
    graph = AnatomyGraph.from_atlas(atlas4, "group")  # one node for both hippocampi
    labels = atlas4.label_ids
    vols = np.ones((1, len(labels)))
    vols[0, labels.index(47)] = 3.0
    log_ratio = np.zeros((1, graph.num_nodes))
    log_ratio[0, graph.label_to_node[47]] = np.log(0.9)
    out = group_percent_change(graph, log_ratio, vols, labels, {"hippocampus": [47, 48], "brainstem": [35]})
    assert out["hippocampus"][0] == pytest.approx(-10.0)
    assert out["brainstem"][0] == pytest.approx(0.0)


def test_per_node_variant_trains_saves_and_loads_without_edges(tmp_path, atlas4):
    """The per-node ablation through ``TrajectoryConfig.encoder``: trained, saved and loaded with
    no edges, and a prediction for one node does not move when another node's features change."""
    splits = ["train", "train", "train", "test"]  # no valid split: the last state is kept
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=4, splits=splits)
    config = {**SMALL, "encoder": {**SMALL.get("encoder", {}), "per_node": True}}
    res = train_trajectory(manifest, atlas4, config, steps=20, seed=0, out_dir=tmp_path / "model")
    loaded = TrajectoryModel.load(tmp_path / "model")
    assert loaded.encoder.config.per_node and loaded.encoder.edge_index.shape == (2, 0)
    pair = res.train.pairs[0]
    feats = res.train.features[0].numpy().copy()
    p = pair.earlier
    before = loaded.predict(feats, p.age, pair.years, p.sex, p.diagnosis)
    node = AnatomyGraph.from_atlas(atlas4).node_names.index("Left Hippocampus")
    feats[node] *= 1.5
    after = loaded.predict(feats, p.age, pair.years, p.sex, p.diagnosis)
    others = np.arange(134) != node
    assert after[0, node] != before[0, node]  # the node sees its own features
    np.testing.assert_array_equal(after[0, others], before[0, others])
