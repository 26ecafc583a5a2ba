import numpy as np
import pytest

from mambacontrol.data import normalize_intensity


def test_percentiles_map_to_unit_range(rng):
    img = rng.normal(500, 100, size=(20, 20, 20))
    mask = np.zeros(img.shape, bool)
    mask[2:18, 2:18, 2:18] = True
    out = normalize_intensity(img, mask)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[~mask] == 0)
    inside = out[mask]
    assert 0.004 < (inside == 0).mean() < 0.007 and 0.004 < (inside == 1).mean() < 0.007


def test_scale_and_offset_invariant(rng):
    img = rng.gamma(2.0, 50.0, size=(12, 12, 12))
    mask = img > 20
    np.testing.assert_allclose(normalize_intensity(img, mask),
                               normalize_intensity(3.7 * img + 12.0, mask), atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="mask is empty"):
        normalize_intensity(np.ones((3, 3, 3)), np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="constant"):
        normalize_intensity(np.ones((3, 3, 3)), np.ones((3, 3, 3)))
