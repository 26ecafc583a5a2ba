import shutil

import numpy as np
import pytest

from mambacontrol.atlas import DEFAULT_ATLAS, list_atlases, load_atlas
from mambacontrol.errors import MambaControlError


@pytest.fixture(scope="module")
def atlas2():
    return load_atlas(DEFAULT_ATLAS, "2mm")


def test_default_atlas_is_listed():
    assert DEFAULT_ATLAS in list_atlases()


@pytest.mark.parametrize("grid,shape", [("2mm", (96, 112, 96)), ("1p5mm", (120, 144, 120)),
                                        ("4mm", (48, 56, 48))])
def test_grids_and_files(grid, shape):
    a = load_atlas(grid=grid)
    a.verify()
    for m in ("template", "mask", "gm", "wm", "csf", "labels"):
        assert getattr(a, m).shape == shape
    if grid == "2mm":
        assert all(s % 16 == 0 for s in shape)


def test_region_table(atlas2):
    assert len(atlas2.regions) == 134
    present = set(np.unique(atlas2.labels)) - {0}
    assert present == set(atlas2.label_ids)
    assert atlas2.region(47).name == "Right Hippocampus"
    assert atlas2.region(48).hemisphere == "left"
    assert atlas2.region(76).hemisphere == "right"  # the source CSV has basal forebrain swapped
    assert atlas2.labels_in_group("hippocampus") == [47, 48]
    assert atlas2.key_groups["lateral_ventricles"] == [49, 50, 51, 52]
    assert atlas2.key_groups["entorhinal"] == [116, 117]
    assert atlas2.region(46).tissue == "csf"


def test_labels_sit_on_the_right_anatomy(atlas2):
    t1, lab = atlas2.template, atlas2.labels
    vent = t1[np.isin(lab, [51, 52])].mean()
    hippo = t1[np.isin(lab, [47, 48])].mean()
    wm = t1[np.isin(lab, [44, 45])].mean()
    assert vent < 0.75 * hippo < wm
    # tissue maps agree with the labels
    assert atlas2.wm[np.isin(lab, [44, 45])].mean() > 0.6
    assert atlas2.gm[np.isin(lab, [47, 48])].mean() > 0.5
    assert atlas2.csf[np.isin(lab, [51, 52])].mean() > 0.4


def test_right_is_right(atlas2):
    """Right hemisphere labels have positive world x (RAS)."""
    for right, left in [(47, 48), (51, 52), (31, 32)]:
        xr = (atlas2.grid.affine @ np.r_[np.argwhere(atlas2.labels == right).mean(0), 1])[0]
        xl = (atlas2.grid.affine @ np.r_[np.argwhere(atlas2.labels == left).mean(0), 1])[0]
        assert xr > 10 and xl < -10


def test_volumes_plausible(atlas2):
    v = atlas2.key_group_volumes()
    assert 6000 < v["hippocampus"] < 12000
    assert 1500 < v["amygdala"] < 5000
    assert 10000 < v["lateral_ventricles"] < 40000
    assert v["whole_brain"] > 1.0e6


def test_unknown_atlas_and_grid():
    with pytest.raises(MambaControlError, match="unknown atlas 'nope'"):
        load_atlas("nope")
    with pytest.raises(MambaControlError, match="no grid '3mm'"):
        load_atlas(grid="3mm")


def test_checksum_detects_tampering(tmp_path, monkeypatch):
    src = load_atlas().root
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    regions = dst / "regions.csv"
    regions.write_text(regions.read_text().replace("Hippocampus", "Hippo"))
    monkeypatch.setenv("MAMBACONTROL_ATLAS_PATH", str(tmp_path))
    a = load_atlas()
    assert a.root == dst
    with pytest.raises(MambaControlError, match="checksum"):
        a.verify()
