"""The graph stage's training (train_trajectory) on a tiny cohort with known regional change."""

import copy
import dataclasses
import logging
import math

import numpy as np
import pytest
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.data.covariates import CovariateNorm
from mambacontrol.errors import ConfigError, ManifestError, ModelError
from mambacontrol.graph import AnatomyGraph, TrajectoryHead, TrajectoryModel
from mambacontrol.graph.features import FeatureCache
from mambacontrol.graph.pairs import build_pairs, evaluate_loss, trajectory_loss
from mambacontrol.training.run_config import GraphStage
from mambacontrol.training.trajectory import TrajectoryConfig, _build_model, train_trajectory
from tests.graph.conftest import make_cohort, region_rates

SMALL = {"encoder": {"embed_dim": 16, "num_layers": 1, "num_tokens": 2, "token_heads": 2},
         "head": {"hidden": 16}, "eval_every": 25, "lr": 3e-3}


@pytest.fixture(scope="module")
def atlas4():
    return load_atlas(grid="4mm")


def test_head_overfits_a_tiny_cohort(tmp_path, atlas4):
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=6)
    result = train_trajectory(manifest, atlas4, {**SMALL, "population_prior": False}, steps=200,
                              seed=0)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < first / 10
    assert evaluate_loss(result.model, result.train) < first / 10


def test_population_prior_reproduces_a_linear_cohort(tmp_path, atlas4):
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=3)
    result = train_trajectory(manifest, atlas4, SMALL, steps=1)
    head = TrajectoryHead.from_config(result.model.head.config)  # untrained, the fitted prior
    emb = torch.zeros(len(result.train), 134, 16)
    pred = head(emb, result.train.covariates, result.train.years)
    # the cohort's rates depend on the diagnosis only: the prior reproduces every pair
    torch.testing.assert_close(pred, result.train.log_ratio, atol=2e-4, rtol=1e-3)


def test_trained_model_round_trip_and_truth(tmp_path, atlas4):
    splits = ["train", "train", "train", "valid", "valid", "test"]
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=6, splits=splits)
    res = train_trajectory(manifest, atlas4, SMALL, steps=50, seed=1, cache_dir=tmp_path / "cache",
                           out_dir=tmp_path / "model")
    assert len(res.train) == 9 and len(res.valid) == 6
    assert all("valid_loss" in h for h in res.history)
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
    seeded = train_trajectory(manifest, atlas4, SMALL, steps=50, seed=1)
    assert seeded.history == res.history
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


def test_graph_section_maps_onto_the_trajectory_config():
    stage = GraphStage()
    stage.model.head_hidden = 24
    stage.train.weight_decay = 0.01
    config = TrajectoryConfig.from_stage(stage, encoder={"embed_dim": 8})
    assert config == TrajectoryConfig(grouping=stage.model.grouping,
                                      homologue_edges=stage.model.homologue_edges,
                                      encoder={"embed_dim": 8}, head={"hidden": 24},
                                      lr=stage.train.lr, weight_decay=0.01,
                                      batch_size=stage.train.batch_size)
    section = {f.name for f in dataclasses.fields(stage.model) + dataclasses.fields(stage.train)}
    shared = {f.name for f in dataclasses.fields(TrajectoryConfig)} & section
    assert shared == {"grouping", "homologue_edges", "lr", "weight_decay", "batch_size"}


def _reference_loop(manifest, atlas, cfg, steps, seed):
    """The graph stage's former hand-written loop (AdamW, cosine LambdaLR, randint batches from a
    torch.Generator, best validation state), for comparison with the engine."""
    graph = AnatomyGraph.from_atlas(atlas, cfg.grouping, cfg.homologue_edges)
    cache, norm = FeatureCache(graph), CovariateNorm.from_dict(cfg.covariate_norm)
    train = build_pairs(manifest, "train", atlas, graph, cache, norm)
    valid = build_pairs(manifest, "valid", atlas, graph, cache, norm)
    model = _build_model(graph, train, norm, cfg, seed)
    optim = torch.optim.AdamW(list(model.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    best = (evaluate_loss(model, valid), copy.deepcopy(model.encoder.state_dict()),
            copy.deepcopy(model.head.state_dict()))
    history, running = [{"step": 0, "valid_loss": best[0]}], []
    for step in range(1, steps + 1):
        model.train(True)
        idx = torch.randint(len(train), (min(cfg.batch_size, len(train)),), generator=gen)
        pred = model(train.features[idx], train.covariates[idx], train.years[idx])
        loss = trajectory_loss(pred, train.log_ratio[idx], train.mask[idx])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % cfg.eval_every == 0 or step == steps:
            entry = {"step": step, "train_loss": float(np.mean(running)),
                     "valid_loss": evaluate_loss(model, valid)}
            running = []
            if entry["valid_loss"] < best[0]:
                best = (entry["valid_loss"], copy.deepcopy(model.encoder.state_dict()),
                        copy.deepcopy(model.head.state_dict()))
            history.append(entry)
    model.encoder.load_state_dict(best[1])
    model.head.load_state_dict(best[2])
    return model, history


def test_the_engine_trains_the_graph_exactly_as_the_former_loop(tmp_path, atlas4):
    splits = ["train", "train", "train", "valid", "valid", "test"]
    manifest = make_cohort(tmp_path / "c", atlas4, n_subjects=6, splits=splits)
    config = TrajectoryConfig.from_dict({**SMALL, "eval_every": 7, "batch_size": 4})
    model, history = _reference_loop(manifest, atlas4, config, steps=30, seed=3)
    result = train_trajectory(manifest, atlas4, config, steps=30, seed=3)
    assert result.history == history
    for mine, theirs in ((result.model.encoder, model.encoder), (result.model.head, model.head)):
        for key, value in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[key], value), key
