"""io.figures: off-screen figures, reproducible PNG bytes, slice picking."""

import subprocess
import sys

import numpy as np

from mambacontrol.io.figures import mask_centre, new_figure, png_bytes, save_png


def _figure():
    fig = new_figure((2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_png_bytes_repeat_and_carry_no_version_unless_asked(tmp_path):
    fig = _figure()
    png = png_bytes(fig)
    assert png.startswith(b"\x89PNG") and png == png_bytes(_figure())
    assert b"Matplotlib" not in png and b"Matplotlib" in png_bytes(fig, software_stamp=True)
    assert save_png(fig, tmp_path / "a" / "f.png").read_bytes() == png


def test_mask_centre():
    mask = np.zeros((4, 5, 6), bool)
    assert mask_centre(mask) is None
    mask[1, 2, 3] = mask[3, 2, 5] = True
    np.testing.assert_array_equal(mask_centre(mask), [2.0, 2.0, 4.0])


def test_importing_io_or_drawing_needs_no_pyplot():
    code = ("import sys, mambacontrol.io; assert 'matplotlib' not in sys.modules; "
            "import mambacontrol.io.figures as f; f.png_bytes(f.new_figure((1, 1))); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
