import numpy as np
import pytest
import torch

from mambacontrol.errors import MambaControlError
from mambacontrol.graph import AnatomyGraph, majority_nodes, rasterize, region_fractions


@pytest.fixture(scope="module")
def graph4(atlas4):
    return AnatomyGraph.from_atlas(atlas4)


@pytest.fixture(scope="module")
def embeddings(graph4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, graph4.num_nodes, 5, generator=g)


def test_each_embedding_lands_exactly_on_its_region(atlas4, graph4, embeddings):
    labels = atlas4.labels
    node_map = torch.from_numpy(graph4.node_map(labels))
    hard = rasterize(embeddings, node_map)
    soft = rasterize(embeddings, region_fractions(labels, graph4, factor=1))
    assert hard.shape == soft.shape == (2, 5, *labels.shape)
    torch.testing.assert_close(soft, hard)
    for lab in (47, 4, 44, 116):
        node = graph4.label_to_node[lab]
        where = torch.from_numpy(labels == lab)
        painted = hard.permute(0, 2, 3, 4, 1)[:, where]  # (B, voxels, E)
        assert torch.equal(painted, embeddings[:, node, None].expand_as(painted))
    assert torch.all(hard.permute(0, 2, 3, 4, 1)[:, torch.from_numpy(labels == 0)] == 0)


def test_soft_fractions_on_a_coarse_grid(atlas4, graph4, embeddings):
    labels = atlas4.labels
    frac = region_fractions(labels, graph4, factor=4)
    assert frac.shape == (134, 12, 14, 12)
    brain = torch.from_numpy((labels > 0).reshape(12, 4, 14, 4, 12, 4).mean(axis=(1, 3, 5)))
    torch.testing.assert_close(frac.sum(0), brain.float())
    vox = torch.from_numpy(np.bincount(graph4.node_map(labels)[labels > 0], minlength=134)).float()
    torch.testing.assert_close(frac.sum(dim=(1, 2, 3)) * 64, vox)  # every voxel counted once
    out = rasterize(embeddings, frac)
    manual = (embeddings[0] * frac[:, 5, 6, 5, None]).sum(0)  # one block by hand
    torch.testing.assert_close(out[0, :, 5, 6, 5], manual)
    batched = rasterize(embeddings, frac.expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(batched, out)


def test_majority_assignment(atlas4, graph4, embeddings):
    labels = np.zeros((8, 4, 4), dtype=np.int32)
    labels[:4, :, :] = 47
    labels[4:, :3] = 48  # block 2: 48 fills 3/4
    labels[:3, 0, 0] = 0
    maj = majority_nodes(labels, graph4, factor=4)
    assert maj.shape == (2, 1, 1)
    assert maj[0, 0, 0] == graph4.label_to_node[47] and maj[1, 0, 0] == graph4.label_to_node[48]
    empty = np.zeros((4, 4, 4), dtype=np.int32)
    empty[0, 0, :2] = 47
    assert majority_nodes(empty, graph4, factor=4).item() == -1  # background wins
    out = rasterize(embeddings, maj.expand(2, -1, -1, -1))
    assert torch.equal(out[1, :, 1, 0, 0], embeddings[1, graph4.label_to_node[48]])


def test_bad_shapes_raise(atlas4, graph4, embeddings):
    with pytest.raises(MambaControlError, match="not divisible by factor 5"):
        region_fractions(atlas4.labels, graph4, factor=5)
    with pytest.raises(MambaControlError, match=r"not \(R, x, y, z\)"):
        rasterize(embeddings, torch.zeros(3, 2, 2, 2))
    with pytest.raises(MambaControlError, match="outside"):
        rasterize(embeddings, torch.full((2, 2, 2), 134))
    with pytest.raises(MambaControlError, match="batch 3"):
        rasterize(embeddings, torch.zeros(3, 2, 2, 2, dtype=torch.long))
