import numpy as np
import pytest
import torch

from mambacontrol.data.covariates import encode_covariates
from mambacontrol.graph import AnatomyGraph, TrajectoryHead, group_percent_change
from mambacontrol.graph.trajectory import fit_prior, prior_design


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
    assert TrajectoryHead(embed_dim=8, num_nodes=5,
                          prior_terms=["age", "sex", "years"]).prior.shape == (5, 12)


def test_fit_prior_recovers_a_linear_rate_model():
    g = torch.Generator().manual_seed(0)
    n = 60
    dx = ["CN", "MCI", "AD"] * 20
    ages = 60 + 25 * torch.rand(n, generator=g)
    years = 0.5 + 4 * torch.rand(n, generator=g)
    cov = encode_covariates(ages.tolist(), years.tolist(), ["F", "M"] * 30, dx)
    true = torch.tensor([[-1.0, -3.0, -4.5, -0.2, -0.4, -0.6],
                         [2.0, 4.0, 6.0, 0.3, 0.5, 0.9]]).double()
    design = prior_design(cov.double(), years.double())
    log_ratio = years.double()[:, None] * (design @ true.T) / 100
    coef = fit_prior(cov, years, log_ratio, torch.ones(n, 2, dtype=torch.bool), ridge=1e-9)
    np.testing.assert_allclose(coef, true.numpy(), atol=1e-5)
    cn = torch.arange(0, n, 3)
    only_cn = fit_prior(cov[cn], years[cn], log_ratio[cn], torch.ones(len(cn), 2, dtype=torch.bool))
    assert (np.all(np.isfinite(only_cn))
            and np.all(only_cn[:, [1, 2, 4, 5]] == 0))  # absent diagnoses


def test_group_percent_change_uses_each_labels_node(atlas4):
    graph = AnatomyGraph.from_atlas(atlas4, "group")  # one node for both hippocampi
    labels = atlas4.label_ids
    vols = np.ones((1, len(labels)))
    vols[0, labels.index(47)] = 3.0
    log_ratio = np.zeros((1, graph.num_nodes))
    log_ratio[0, graph.label_to_node[47]] = np.log(0.9)
    out = group_percent_change(graph, log_ratio, vols, labels,
                               {"hippocampus": [47, 48], "brainstem": [35]})
    assert out["hippocampus"][0] == pytest.approx(-10.0)
    assert out["brainstem"][0] == pytest.approx(0.0)
