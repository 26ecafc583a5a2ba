"""percent_change: the one formula for a relative change in %."""

import numpy as np

from mambacontrol.data.change import percent_change


def test_percent_change_of_values_arrays_and_ratios():
    assert percent_change(110.0, 100.0) == 100.0 * (110.0 / 100.0 - 1.0)
    assert percent_change(0.98) == 100.0 * (0.98 - 1.0)
    new, base = np.array([90.0, 120.0, 5.0]), np.array([100.0, 100.0, 0.0])
    with np.errstate(divide="ignore"):
        out = percent_change(new, base)
    np.testing.assert_allclose(out[:2], [-10.0, 20.0])
    assert np.isinf(out[2])
    assert percent_change(np.float32(1.5)).dtype == np.float32  # computed in the inputs' dtype
