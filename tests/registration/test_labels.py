import numpy as np
import pytest

from mambacontrol.registration import propagate_labels
from mambacontrol.testing.standins import random_smooth_warp


def mean_dice(a: np.ndarray, b: np.ndarray, ids, min_voxels: int = 20) -> float:
    scores = []
    for i in ids:
        x, y = a == i, b == i
        if y.sum() >= min_voxels:
            scores.append(2.0 * (x & y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def subject(atlas4):
    """A new 'subject': the template and its labels warped by a random smooth deformation."""
    image, labels = random_smooth_warp(atlas4.template, atlas4.labels, atlas4.grid.affine,
                                       amplitude_mm=4.0, smoothness_mm=15.0, seed=1)
    return image * atlas4.mask, labels


def test_propagated_labels_overlap_the_true_labels(subject, atlas4):
    image, truth = subject
    labels = propagate_labels(image, atlas4)
    assert labels.shape == atlas4.grid.shape and labels.dtype == np.int32
    assert set(np.unique(labels)) <= {0, *atlas4.label_ids}
    before = mean_dice(atlas4.labels, truth, atlas4.label_ids)
    after = mean_dice(labels, truth, atlas4.label_ids)
    assert after > before + 0.1
    assert after > 0.75  # 4 mm grid; 2 mm figures in docs/benchmarks.md
    hippocampus = atlas4.key_groups["hippocampus"]
    assert mean_dice(labels, truth, hippocampus) > 0.75


def test_rejects_images_off_the_atlas_grid(atlas4):
    with pytest.raises(ValueError, match="atlas grid"):
        propagate_labels(np.zeros((10, 10, 10)), atlas4)
