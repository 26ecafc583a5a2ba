"""The graph map of the ControlNet's hint: soft painting keeps every region on the latent grid."""

import numpy as np
import pytest
import torch

from mambacontrol.atlas import load_atlas
from mambacontrol.graph import AnatomyGraph, rasterize
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.pipeline.conditioning import graph_scan_inputs

DEMO_FACTOR = 4  # train/configs/demo.yaml: three autoencoder levels on the 4 mm grid


@pytest.fixture(scope="module")
def demo_grid():
    atlas = load_atlas(grid="4mm")
    return atlas, AnatomyGraph.from_atlas(atlas)


def _present(inputs, graph) -> np.ndarray:
    """(R,) whether each node's embedding reaches some latent voxel (one-hot embeddings)."""
    painted = rasterize(torch.eye(graph.num_nodes)[None], inputs.assignment)  # (1, R, x, y, z)
    return (painted[0].flatten(1).amax(1) > 0).numpy()


def test_every_region_is_present_in_the_soft_map_on_the_demo_grid(demo_grid):
    atlas, graph = demo_grid
    image = atlas.template.astype(np.float32)
    soft = graph_scan_inputs(image, atlas.labels, graph, DEMO_FACTOR, "soft")
    assert soft.assignment.shape == (graph.num_nodes, 12, 14, 12)
    assert soft.assignment.dtype == torch.float16
    assert _present(soft, graph).all()
    # majority painting loses small regions (40 of 134 here), both amygdalae among them
    majority = graph_scan_inputs(image, atlas.labels, graph, DEMO_FACTOR, "majority")
    lost = ~_present(majority, graph)
    assert lost.sum() > 20
    assert all(lost[graph.label_to_node[label]] for label in atlas.key_groups["amygdala"])


def test_soft_fractions_are_exact_in_half_precision(demo_grid):
    atlas, graph = demo_grid
    soft = graph_scan_inputs(atlas.template.astype(np.float32), atlas.labels, graph,
                             DEMO_FACTOR, "soft").assignment
    counts = soft.float() * DEMO_FACTOR**3  # voxels of each region in each block
    assert torch.equal(counts, counts.round())


def test_a_bad_painting_is_refused(demo_grid):
    atlas, graph = demo_grid
    with pytest.raises(ValueError, match="painting 'blur' is not soft or majority"):
        graph_scan_inputs(atlas.template, atlas.labels, graph, DEMO_FACTOR, "blur")
    with pytest.raises(ValueError, match="graph_painting 'blur'"):
        MambaControlNet(channels=(8, 16), norm_num_groups=4, num_head_channels=8,
                        context_dim=8, graph_painting="blur")
