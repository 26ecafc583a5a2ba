import json

import numpy as np
import pytest
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.data.covariates import CovariateNorm, encode_covariates
from mambacontrol.errors import MambaControlError, ModelError
from mambacontrol.graph import AnatomyGraph, FeatureNorm, GraphEncoder, node_features

TINY = {"embed_dim": 16, "num_layers": 2, "num_tokens": 3, "token_heads": 2}


@pytest.fixture(scope="module")
def graph4(atlas4):
    return AnatomyGraph.from_atlas(atlas4)


@pytest.fixture(scope="module")
def inputs(atlas4, graph4):
    f = node_features(atlas4.template, atlas4.labels, graph4)
    feats = torch.from_numpy(np.stack([f, f * 1.01]))
    cov = encode_covariates([70, 75], [1.0, 3.0], ["F", "M"], ["CN", "AD"])
    return feats, cov


def _norm(atlas4, graph4):
    f = node_features(atlas4.template, atlas4.labels, graph4)
    return FeatureNorm.fit(np.stack([f, f * 1.05, f * 0.95]))


@pytest.mark.parametrize("conv", ["gcn", "cheb", "gat"])
def test_shapes_for_every_layer_type(graph4, inputs, conv):
    torch.manual_seed(0)
    enc = GraphEncoder.from_graph(graph4, conv=conv, gat_heads=2, **TINY)
    emb, tokens = enc(*inputs)
    assert emb.shape == (2, 134, 16) and tokens.shape == (2, 3, 16)
    assert torch.isfinite(emb).all() and not torch.allclose(emb[0], emb[1])
    emb.sum().backward()
    assert enc.input_proj.weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in enc.layers[0].conv.parameters()
               if p.grad is not None) > 0


def test_batch_items_are_independent(graph4, inputs):
    torch.manual_seed(0)
    enc = GraphEncoder.from_graph(graph4, **TINY).eval()
    emb, tokens = enc(*inputs)
    emb1, tokens1 = enc(inputs[0][1:], inputs[1][1:])
    torch.testing.assert_close(emb1[0], emb[1])
    torch.testing.assert_close(tokens1[0], tokens[1])


def test_save_load_round_trip_keeps_graph_and_statistics(tmp_path, atlas4, graph4, inputs):
    torch.manual_seed(0)
    norm = _norm(atlas4, graph4)
    enc = GraphEncoder.from_graph(graph4, norm, CovariateNorm(72.0, 8.0, 5.0), **TINY).eval()
    enc.save(tmp_path / "enc")
    cfg = json.loads((tmp_path / "enc/config.json").read_text())
    assert cfg["graph"]["atlas_checksum"] == atlas4.checksum and cfg["graph"]["grid"] == "4mm"
    assert np.allclose(cfg["feature_std"], norm.std)
    loaded = GraphEncoder.load(tmp_path / "enc")
    assert torch.equal(loaded.eigenvectors, enc.eigenvectors)
    assert torch.equal(loaded.edge_index, enc.edge_index)
    assert torch.equal(loaded.norm_std, enc.norm_std)
    for a, b in zip(loaded(*inputs), enc(*inputs)):
        assert torch.equal(a, b)
    assert loaded.covariate_norm == CovariateNorm(72.0, 8.0, 5.0)
    torch.testing.assert_close(loaded.covariates(80, 5.0, "F", "MCI")[0, :2],
                               torch.tensor([1.0, 1.0]))
    loaded.check_graph(graph4)


def test_another_atlas_grid_or_grouping_is_detected(atlas4, graph4):
    enc = GraphEncoder.from_graph(graph4, **TINY)
    with pytest.raises(ModelError, match="grouping is 'region' in the model but 'lobe' here"):
        enc.check_graph(AnatomyGraph.from_atlas(atlas4, "lobe"))
    with pytest.raises(ModelError, match="atlas_checksum"):
        enc.check_graph(AnatomyGraph.from_atlas(load_atlas(grid="2mm")))
    bare = GraphEncoder(num_nodes=134, num_edges=10, **TINY)
    with pytest.raises(ModelError, match="no graph identity"):
        bare.check_graph(graph4)


def test_ablation_switches(graph4, inputs):
    torch.manual_seed(0)
    full = GraphEncoder.from_graph(graph4, **TINY).eval()
    torch.manual_seed(0)
    no_refine = GraphEncoder.from_graph(graph4, fourier_refine=False, **TINY).eval()
    assert full.refine is not None and no_refine.refine is None
    assert not any("refine" in k for k in no_refine.state_dict())
    no_refine.load_state_dict({k: v for k, v in full.state_dict().items() if "refine" not in k})
    # refinement is identity at init
    torch.testing.assert_close(no_refine(*inputs)[0], full(*inputs)[0])
    with torch.no_grad():
        full.refine.gain.normal_()
    assert not torch.allclose(no_refine(*inputs)[0], full(*inputs)[0])

    no_filters = GraphEncoder.from_graph(graph4, spectral_filters=False, **TINY)
    assert no_filters.filter_bank is None and no_filters.input_proj.in_features == 10
    assert full.input_proj.in_features == 10 * 7  # raw + low-pass + 5 wavelet scales
    assert GraphEncoder.from_graph(graph4, filter_kind="heat", filter_scales=[1, 2],
                                   **TINY).input_proj.in_features == 30
    bare = GraphEncoder.from_graph(graph4, spectral_filters=False, fourier_refine=False, **TINY)
    assert bare(*inputs)[0].shape == (2, 134, 16)
    modes = GraphEncoder.from_graph(graph4, fourier_modes=12, **TINY)
    assert modes.refine.gain.shape == (12, 16)


def test_bad_arguments_and_inputs(graph4, inputs):
    with pytest.raises(ValueError, match="conv 'sage'"):
        GraphEncoder.from_graph(graph4, conv="sage")
    with pytest.raises(ValueError, match="divisible"):
        GraphEncoder.from_graph(graph4, embed_dim=10, token_heads=4)
    with pytest.raises(ValueError, match="fourier_modes"):
        GraphEncoder.from_graph(graph4, fourier_modes=500)
    with pytest.raises(ValueError, match="feature_mean"):
        GraphEncoder(num_nodes=134, num_edges=4, feature_mean=[[0.0]], feature_std=[[1.0]])
    enc = GraphEncoder.from_graph(graph4, **TINY)
    with pytest.raises(MambaControlError, match=r"not \(B, 134, 10\)"):
        enc(inputs[0][:, :50], inputs[1])
    with pytest.raises(MambaControlError, match="covariates"):
        enc(inputs[0], inputs[1][:1])


@pytest.mark.parametrize("conv", ["gcn", "cheb"])
def test_per_node_encoder_sees_no_neighbour(tmp_path, graph4, inputs, conv):
    """The per-node ablation: changing one node's features moves that node's embedding only;
    with the graph's edges, its neighbours move too. It saves and loads without edges."""
    feats, cov = inputs
    node = graph4.node_names.index("Left Hippocampus")
    neighbours = np.flatnonzero(graph4.weights[node] > 0)
    bumped = feats.clone()
    bumped[:, node] += 1.0
    moved = {}
    for per_node in (False, True):
        torch.manual_seed(0)
        enc = GraphEncoder.from_graph(graph4, conv=conv, per_node=per_node, **TINY).eval()
        with torch.no_grad():
            delta = (enc(bumped, cov)[0] - enc(feats, cov)[0]).abs().amax(dim=(0, 2))
        moved[per_node] = delta
        assert delta[node] > 1e-4
    assert (moved[False][neighbours] > 1e-6).all()
    others = np.setdiff1d(np.arange(graph4.num_nodes), [node])
    assert float(moved[True][others].max()) == 0.0
    torch.manual_seed(0)
    enc = GraphEncoder.from_graph(graph4, conv=conv, per_node=True, **TINY).eval()
    assert enc.edge_index.shape == (2, 0) and torch.equal(enc.eigenvectors, torch.eye(134))
    enc.save(tmp_path / "enc")
    loaded = GraphEncoder.load(tmp_path / "enc")
    assert loaded.config.per_node and loaded.edge_index.shape == (2, 0)
    for a, b in zip(loaded(feats, cov), enc(feats, cov)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="per-node encoder has no edges"):
        GraphEncoder(num_nodes=134, num_edges=10, per_node=True, **TINY)
