import json

import numpy as np
import pytest
from scipy import ndimage

from mambacontrol.data import normalize_intensity
from mambacontrol.errors import MambaControlError, RegistrationError
from mambacontrol.io import Grid, Volume
from mambacontrol.registration import (
    AlignmentSettings,
    AtlasAlignment,
    AtlasTransform,
    align_to_atlas,
    template_similarity,
)
from mambacontrol.registration.alignment import antialias, n4_bias_field
from mambacontrol.testing.standins import (
    lps_grid,
    non_brain_images,
    rigid_motion,
    standin_scan,
)
from tests.registration.helpers import MOTION, transform_error_mm


@pytest.fixture(scope="module")
def aligned(standin_1mm, atlas4) -> AtlasAlignment:
    return align_to_atlas(standin_1mm, atlas4)


def test_recovers_the_motion_and_normalises(aligned, atlas4):
    err = transform_error_mm(aligned.transform.atlas_to_scan, MOTION, atlas4)
    assert err.mean() < 1.0 and err.max() < 2.0  # 4 mm atlas grid
    assert aligned.similarity > 0.9
    assert aligned.image.shape == atlas4.grid.shape and aligned.image.dtype == np.float32
    assert aligned.image.min() == 0.0 and aligned.image.max() == 1.0
    assert np.all(aligned.image[~atlas4.mask] == 0)
    np.testing.assert_array_equal(aligned.mask, atlas4.mask)
    assert aligned.similarity == pytest.approx(template_similarity(aligned.image, atlas4))


def test_round_trip_returns_the_scans_own_space(aligned, standin_1mm, atlas4):
    back = aligned.to_native(aligned.image)
    assert back.shape == standin_1mm.shape
    np.testing.assert_array_equal(back.affine, standin_1mm.affine)
    # compare with the scan inside the brain, away from the mask edge (4 mm atlas grid)
    brain = aligned.to_native(atlas4.mask.astype(np.uint8), order=0).data.astype(bool)
    core = ndimage.binary_erosion(brain, iterations=6)
    scan = standin_1mm.data[core]
    assert np.corrcoef(back.data[core], scan)[0, 1] > 0.85
    # the mask brought back covers the scan's brain (bright voxels) and little else
    bright = standin_1mm.data > 300
    assert (brain & bright).sum() / bright.sum() > 0.9


def test_to_native_keeps_label_dtype_and_to_atlas_inverts_it(aligned, atlas4):
    native = aligned.to_native(atlas4.labels, order=0)
    assert native.data.dtype == atlas4.labels.dtype
    assert set(np.unique(native.data)) <= set(np.unique(atlas4.labels))
    again = aligned.transform.to_atlas(native, order=0)
    inside = atlas4.mask
    assert np.mean(again[inside] == atlas4.labels[inside]) > 0.95


def test_volume_scale_converts_atlas_volumes_to_native_ones(atlas4):
    grid = atlas4.grid
    bigger = AtlasTransform(np.diag([1.1, 1.0, 0.9, 1.0]), grid, grid)
    assert bigger.volume_scale == pytest.approx(0.99)
    cube = np.zeros(grid.shape, np.uint8)
    cube[20:30, 20:30, 20:30] = 1
    native = bigger.to_native(cube, order=0)
    assert native.data.sum() * 64.0 == pytest.approx(1000 * 64.0 * bigger.volume_scale, rel=0.15)


def test_to_native_rejects_other_shapes(aligned):
    with pytest.raises(ValueError, match="atlas grid"):
        aligned.to_native(np.zeros((3, 3, 3)))


def test_transform_survives_json(aligned, standin_1mm):
    transform = aligned.transform
    loaded = AtlasTransform.from_dict(json.loads(json.dumps(transform.to_dict())))
    np.testing.assert_array_equal(loaded.atlas_to_scan, transform.atlas_to_scan)
    assert loaded.native_grid.same_as(Grid.of(standin_1mm), atol=0)
    assert loaded.atlas_grid.same_as(transform.atlas_grid, atol=0)
    np.testing.assert_allclose(loaded.scan_to_atlas @ loaded.atlas_to_scan, np.eye(4), atol=1e-9)
    assert transform.volume_scale == pytest.approx(1.0, abs=0.03)  # the stand-in moved rigidly
    np.testing.assert_array_equal(loaded.to_native(aligned.image).data,
                                  aligned.to_native(aligned.image).data)


def test_same_seed_same_result_and_input_untouched(atlas2, atlas4):
    scan = standin_scan(atlas2, lps_grid(atlas2, 4.0), motion=MOTION)
    data, affine = scan.data.copy(), scan.affine.copy()
    first = align_to_atlas(scan, atlas4, seed=3)
    second = align_to_atlas(scan, atlas4, seed=3)
    np.testing.assert_array_equal(first.transform.atlas_to_scan, second.transform.atlas_to_scan)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(scan.data, data)
    np.testing.assert_array_equal(scan.affine, affine)
    with pytest.raises(RegistrationError, match=f"{first.similarity:.3f} is below 0.99"):
        align_to_atlas(scan, atlas4, seed=3, min_similarity=0.99)


def test_skull_on_scan_with_neck(atlas2, atlas4):
    grid = lps_grid(atlas2, 2.0, crop_mm=((-15, -15), (-15, -15), (-45, -10)))
    motion = rigid_motion((-8.0, 5.0, -6.0), (-6.0, 8.0, -10.0), centre_mm=(0.0, -16.0, 6.0))
    scan = standin_scan(atlas2, grid, motion=motion, skull=True, seed=3)
    result = align_to_atlas(scan, atlas4)
    err = transform_error_mm(result.transform.atlas_to_scan, motion, atlas4)
    assert err.mean() < 2.0  # half a voxel of the 4 mm atlas grid
    assert result.similarity > 0.9


@pytest.mark.parametrize("kind", ["noise", "blob", "inverted"])
def test_non_brain_images_are_refused_in_one_line(atlas2, atlas4, kind):
    image = non_brain_images(lps_grid(atlas2, 4.0), atlas2)[kind]
    with pytest.raises(RegistrationError) as info:
        align_to_atlas(image, atlas4)
    msg = str(info.value)
    assert "\n" not in msg
    assert "similarity" in msg and "below 0.65" in msg and "not a T1-weighted brain MRI" in msg
    assert isinstance(info.value, MambaControlError)


def test_an_image_that_misses_the_brain_is_refused(atlas4):
    dot = np.zeros((40, 40, 40), np.float32)
    dot[5, 5, 5] = 100.0
    with pytest.raises(RegistrationError, match="does not cover the template brain"):
        align_to_atlas(Volume(dot, np.diag([2.0, 2.0, 2.0, 1.0])), atlas4)


def test_template_similarity(atlas4):
    assert template_similarity(atlas4.template, atlas4) == pytest.approx(1.0)
    assert template_similarity(np.zeros(atlas4.grid.shape), atlas4) == 0.0
    with pytest.raises(ValueError, match="atlas grid"):
        template_similarity(np.zeros((2, 2, 2)), atlas4)


def test_antialias_smooths_only_finer_volumes(rng):
    fine = Volume(rng.normal(size=(20, 20, 20)).astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    coarse = Volume(fine.data.copy(), np.diag([4.0, 4.0, 4.0, 1.0]))
    np.testing.assert_array_equal(antialias(coarse, 4.0), coarse.data)
    smoothed = antialias(fine, 4.0)
    assert smoothed.std() < 0.5 * fine.data.std()
    assert smoothed.mean() == pytest.approx(fine.data.mean(), abs=0.02)
    # a constant stays constant
    const = Volume(np.full((10, 10, 10), 3.0, np.float32), np.eye(4))
    np.testing.assert_allclose(antialias(const, 2.0), 3.0, rtol=1e-6)


def test_n4_moves_a_biased_scan_towards_the_clean_one(atlas4):
    mask = np.asarray(atlas4.mask, dtype=bool)
    clean = np.asarray(atlas4.template, dtype=np.float32) * 800.0 + 50.0
    x = np.linspace(-1.0, 1.0, clean.shape[0])[:, None, None]
    y = np.linspace(-1.0, 1.0, clean.shape[1])[None, :, None]
    bias = (1.0 + 0.3 * x + 0.2 * y ** 2).astype(np.float32)  # smooth, ±30 %
    biased = clean * bias
    field = n4_bias_field(biased, mask, atlas4.grid.affine)
    truth = normalize_intensity(clean, mask)
    before = np.abs(normalize_intensity(biased, mask) - truth)[mask].mean()
    after = np.abs(normalize_intensity(biased / field, mask) - truth)[mask].mean()
    assert field.shape == clean.shape and np.isfinite(field).all() and (field > 0).all()
    assert after < 0.5 * before


def test_alignment_records_its_bias_field_and_intensity_range(aligned, atlas4):
    assert aligned.bias_field is not None and aligned.bias_field.shape == atlas4.grid.shape
    lo, hi = aligned.intensity_range
    assert hi > lo


@pytest.mark.parametrize("kwargs,message", [
    ({"rigid_iterations": (100, 50)}, "rigid_iterations"),
    ({"affine_iterations": (100, -1, 10)}, "affine_iterations"),
    ({"sampling_rate": 0.0}, "sampling_rate"),
])
def test_alignment_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlignmentSettings(**kwargs)


def test_alignment_settings_map_levels_to_the_grid():
    kwargs = AlignmentSettings((100, 50, 0), (100, 50, 10), 0.1).ants_kwargs(2.0, "affine")
    assert kwargs["aff_shrink_factors"] == (4, 2, 1) and kwargs["aff_iterations"] == (100, 50, 10)
    assert kwargs["aff_random_sampling_rate"] == 0.1
    on_4mm = AlignmentSettings((100, 50, 0), (100, 50, 10), 0.1).ants_kwargs(4.0, "rigid")
    assert on_4mm["aff_shrink_factors"] == (2, 1) and on_4mm["aff_iterations"] == (100, 50)
