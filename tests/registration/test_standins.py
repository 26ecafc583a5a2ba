import numpy as np
import pytest

from mambacontrol.io import Grid
from mambacontrol.testing.standins import (
    lps_grid,
    non_brain_images,
    radial_warp,
    random_smooth_warp,
    rigid_motion,
    standin_scan,
)


def test_lps_grid_covers_the_cropped_field_of_view(atlas4):
    g = lps_grid(atlas4, 2.0)
    assert g.affine[0, 0] == -2.0 and g.affine[1, 1] == -2.0 and g.affine[2, 2] == 2.0
    first = atlas4.grid.affine[:3, 3]
    corner = g.affine @ np.r_[np.array(g.shape) - 1, 1.0]
    assert corner[0] == pytest.approx(first[0] + 10.0, abs=2.0)  # left crop 10 mm
    assert corner[2] == pytest.approx(first[2] + (atlas4.grid.shape[2] - 1) * 4.0 - 8.0, abs=2.0)


def test_rigid_motion_is_rigid_and_fixes_its_centre():
    m = rigid_motion((10.0, 20.0, 30.0), (0.0, 0.0, 0.0), centre_mm=(5.0, 6.0, 7.0))
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(m @ [5.0, 6.0, 7.0, 1.0], [5.0, 6.0, 7.0, 1.0], atol=1e-12)


def test_standin_is_moved_by_the_motion(atlas4):
    grid = lps_grid(atlas4, 4.0)
    motion = rigid_motion((0.0, 0.0, 0.0), (10.0, 0.0, 0.0))
    scan = standin_scan(atlas4, grid, motion=motion, noise=0.0, bias=0.0)
    still = standin_scan(atlas4, grid, noise=0.0, bias=0.0)
    np.testing.assert_array_equal(scan.data, still.data)
    np.testing.assert_allclose(scan.affine, motion @ grid.affine)
    skull = standin_scan(atlas4, lps_grid(atlas4, 4.0, ((-20, -20),) * 3), skull=True)
    assert (skull.data > 500).sum() > (still.data > 500).sum()  # scalp and neck are bright


def test_radial_warp_global_scaling_and_local_jacobian(atlas4):
    a = atlas4.grid.affine
    warped, jac = radial_warp(atlas4.template, a, (0.0, -16.0, 6.0), 0.05)
    np.testing.assert_allclose(jac, 0.95**3, rtol=1e-6)
    # the warped brain occupies (about) 0.95³ of the volume
    ratio = (warped > 0.2).sum() / (atlas4.template > 0.2).sum()
    assert ratio == pytest.approx(0.95**3, abs=0.03)
    # local: the analytic determinant equals a finite-difference one of the same map
    c = np.array([0.0, -16.0, 6.0])
    amp, sigma = 0.2, 10.0

    def phi(x):
        r = x - c
        return c + r * (1.0 - amp * np.exp(-(r @ r) / (2 * sigma**2)))

    _, jac_local = radial_warp(atlas4.template, a, tuple(c), amp, sigma)
    for ijk in ([24, 28, 24], [25, 29, 25], [27, 27, 22]):
        x = (a @ np.r_[ijk, 1.0])[:3]
        h = 1e-4
        fd = np.stack([(phi(x + h * e) - phi(x - h * e)) / (2 * h) for e in np.eye(3)], axis=1)
        assert jac_local[tuple(ijk)] == pytest.approx(np.linalg.det(fd), rel=1e-4)
    with pytest.raises(ValueError, match="amplitude"):
        radial_warp(atlas4.template, a, (0.0, 0.0, 0.0), 1.0)


def test_random_smooth_warp_moves_image_and_labels_together(atlas4):
    image, labels = random_smooth_warp(atlas4.template, atlas4.labels, atlas4.grid.affine,
                                       amplitude_mm=4.0, seed=2)
    assert labels.dtype == atlas4.labels.dtype
    assert 0.2 < np.mean(labels[atlas4.mask] != atlas4.labels[atlas4.mask]) < 0.8
    same = random_smooth_warp(atlas4.template, atlas4.labels, atlas4.grid.affine,
                              amplitude_mm=4.0, seed=2)
    np.testing.assert_array_equal(same[0], image)
    # image and labels moved together: the warped image fits the warped labels better than the
    # original labels (mean intensity per region is more homogeneous)
    def spread(img, lab):
        return np.mean([img[lab == i].std() for i in atlas4.label_ids if (lab == i).sum() > 30])

    assert spread(image, labels) < spread(image, atlas4.labels)


def test_non_brain_images(atlas4):
    grid = lps_grid(atlas4, 4.0)
    images = non_brain_images(grid, atlas4)
    assert set(images) == {"noise", "blob", "cube", "inverted", "top_slab"}
    for v in images.values():
        assert v.shape == grid.shape and v.data.dtype == np.float32
        assert Grid.of(v).same_as(grid)
