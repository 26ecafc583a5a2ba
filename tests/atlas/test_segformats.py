import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.atlas.segformats import (
    FREESURFER_NAMES,
    detect_format,
    freesurfer_targets,
    map_to_atlas,
    merge_with_propagated,
    segmentation_labels,
)
from mambacontrol.errors import InputFileError, MambaControlError

# atlas group -> FreeSurfer (left, right) id, to write the atlas's anatomy in aseg ids
ASEG = {
    "hippocampus": (17, 53), "amygdala": (18, 54), "lateral ventricle": (4, 43),
    "inferior lateral ventricle": (5, 44), "cerebral white matter": (2, 41),
    "cerebellum white matter": (7, 46), "cerebellum cortex": (8, 47), "thalamus": (10, 49),
    "caudate": (11, 50), "putamen": (12, 51), "pallidum": (13, 52), "accumbens": (26, 58),
    "ventral diencephalon": (28, 60), "basal forebrain": (28, 60),
}
MIDLINE = {"third ventricle": 14, "fourth ventricle": 15, "brain stem": 16, "csf": 24,
           "optic chiasm": 85, "cerebellar vermis": 8}


@pytest.fixture(scope="module")
def atlas():
    return load_atlas(grid="4mm")


def to_aseg(atlas, aparc=False):
    """The atlas's own label map rewritten in FreeSurfer ids (cortex as 3/42, or aparc's 1006)."""
    lut = np.zeros(max(atlas.label_ids) + 1, np.int32)
    for r in atlas.regions:
        side = 0 if r.hemisphere == "left" else 1
        if r.group in ASEG:
            lut[r.label] = ASEG[r.group][side]
        elif r.group in MIDLINE:
            lut[r.label] = MIDLINE[r.group]
        elif aparc and r.group == "entorhinal area":
            lut[r.label] = (1006, 2006)[side]
        else:
            assert r.tissue == "gm", r
            lut[r.label] = (3, 42)[side]
    return lut[atlas.labels]


def test_every_atlas_region_has_freesurfer_ids(atlas):
    targets = freesurfer_targets(atlas)
    reached = {lab for labs in targets.values() for lab in labs}
    assert reached == set(atlas.label_ids)
    assert [atlas.region(x).name for x in targets[4]] == ["Left Lateral Ventricle"]
    assert [atlas.region(x).name for x in targets[53]] == ["Right Hippocampus"]
    assert [atlas.region(x).name for x in targets[2006]] == ["Right Ent entorhinal area"]
    assert targets[30] == ()  # a vessel has no region


def test_aseg_mapped_to_atlas_regions(atlas):
    aseg = to_aseg(atlas)
    assert detect_format(aseg, atlas) == "freesurfer"
    m = map_to_atlas(aseg, atlas)
    assert m.fmt == "freesurfer" and not m.complete and m.mapped_fraction == 1.0
    assert m.unmapped_ids == ()
    hip, amy = atlas.key_groups["hippocampus"], atlas.key_groups["amygdala"]
    for group, fs_ids in (("hippocampus", (17, 53)), ("amygdala", (18, 54)),
                          ("lateral ventricle", (4, 43))):
        for fs_id in fs_ids:
            got = set(np.unique(m.labels_atlas[aseg == fs_id]).tolist())
            assert len(got) == 1 and atlas.region(got.pop()).group == group
    # left is left: FreeSurfer's 4 is the left lateral ventricle, not the atlas's 4 (3rd ventricle)
    left_ventricle = atlas.labels_in_group("lateral ventricle")[1]
    assert set(np.unique(m.labels_atlas[aseg == 4])) == {left_ventricle}
    assert np.array_equal(np.isin(m.labels_atlas, hip), np.isin(atlas.labels, hip))
    assert np.array_equal(np.isin(m.labels_atlas, amy), np.isin(atlas.labels, amy))
    assert set(m.mapped_regions) >= set(hip + amy + atlas.key_groups["lateral_ventricles"])
    assert (m.labels_atlas[aseg == 3] == 0).all()  # cortex waits for the propagated labels
    assert {3, 42, 8, 47, 28, 60} <= set(m.split)
    # the atlas's own labels as the propagated map give back the atlas exactly
    merged = merge_with_propagated(m, atlas.labels)
    assert merged.dtype == np.int32 and np.array_equal(merged, atlas.labels)


def test_merge_keeps_segmentation_regions_when_registration_is_off(atlas):
    aseg = to_aseg(atlas, aparc=True)
    m = map_to_atlas(aseg, atlas, "freesurfer")
    shifted = np.roll(atlas.labels, (2, -1, 1), axis=(0, 1, 2))  # a registration 2 voxels off
    merged = merge_with_propagated(m, shifted)
    assert ((merged != 0) == (aseg != 0)).all()  # every labelled voxel lands in some region
    for key in ("hippocampus", "amygdala", "entorhinal"):
        ids = atlas.key_groups[key]
        assert np.array_equal(np.isin(merged, ids), np.isin(atlas.labels, ids)), key
    targets = freesurfer_targets(atlas)
    for fs_id in (3, 42, 8, 28):  # split structures only take their own regions
        assert set(np.unique(merged[aseg == fs_id])) <= set(targets[fs_id])
    right_cortex = np.unique(merged[aseg == 42])
    assert all(atlas.region(x).hemisphere == "right" for x in right_cortex)
    assert len(right_cortex) > 30


def test_unmapped_ids_reported_and_filled(atlas):
    aseg = to_aseg(atlas)
    put = atlas.labels_in_group("putamen")
    vessel = np.isin(atlas.labels, put) & (np.indices(aseg.shape)[2] % 2 == 0)
    aseg[vessel] = 30
    m = map_to_atlas(aseg, atlas)
    assert m.unmapped_ids == (30,) and 0.98 < m.mapped_fraction < 1
    assert "30 Left-vessel" in m.summary()
    merged = merge_with_propagated(m, atlas.labels)
    assert (merged[vessel] != 0).all()
    assert not np.isin(merged[vessel], m.mapped_regions).any()  # putamen is the segmentation's


def test_atlas_ids_detected_and_used_as_they_are(atlas):
    assert detect_format(atlas.labels, atlas) == "atlas"
    m = map_to_atlas(atlas.labels, atlas)
    assert m.fmt == "atlas" and m.complete and m.mapped_fraction == 1.0
    assert np.array_equal(m.labels_atlas, atlas.labels)
    assert np.array_equal(merge_with_propagated(m, np.zeros_like(atlas.labels)), atlas.labels)


@pytest.mark.parametrize("make,pattern", [
    (lambda a: (np.arange(a.labels.size) % 256).reshape(a.labels.shape),
     r"ids 1–255 \(every value in between\).*look like neither the atlas's labels"),
    (lambda a: (a.labels > 0).astype(np.uint8), r"brain mask.*look like neither"),
    (lambda a: np.where(a.labels > 0, 1 + a.labels % 3, 0), r"tissue-class map"),
    (lambda a: np.where(a.labels > 0, a.labels + 300, 0), r"neither"),
    (lambda a: np.zeros(a.labels.shape, np.int16), r"empty"),
    (lambda a: a.labels * 0.5, r"non-integer values"),
])
def test_foreign_maps_refused(atlas, make, pattern):
    with pytest.raises(InputFileError, match=pattern):
        map_to_atlas(make(atlas), atlas, what="seg.nii.gz")


def test_ambiguous_ids_need_the_format(atlas):
    small = np.where(np.isin(atlas.labels, [36, 37]), 11, 0)  # caudate in FreeSurfer's id 11 ...
    small[atlas.labels == 4] = 4  # ... and the 3rd ventricle: both formats know 4 and 11
    with pytest.raises(InputFileError, match="both atlas .* and FreeSurfer ids; give the format"):
        map_to_atlas(small, atlas)
    fs = map_to_atlas(small, atlas, "freesurfer")
    assert {atlas.region(x).name for x in np.unique(fs.labels_atlas) if x} == {
        "Left Caudate", "Left Lateral Ventricle"}
    assert np.array_equal(map_to_atlas(small, atlas, "atlas").labels_atlas, small)


def test_explicit_format_checked(atlas):
    with pytest.raises(InputFileError, match="are not atlas 'icbm152-2009a-nmm' ids"):
        map_to_atlas(to_aseg(atlas), atlas, "atlas")
    with pytest.raises(InputFileError, match=r"are not FreeSurfer \(aseg, aparc\+aseg\) ids"):
        map_to_atlas(atlas.labels, atlas, "freesurfer")
    with pytest.raises(InputFileError, match="empty"):
        map_to_atlas(np.zeros((4, 4, 4), np.int16), atlas, "freesurfer")
    with pytest.raises(MambaControlError, match="format 'synthseg' is not one of"):
        map_to_atlas(atlas.labels, atlas, "synthseg")


def test_names_cover_aparc():
    assert FREESURFER_NAMES[1006] == "ctx-lh-entorhinal"
    assert FREESURFER_NAMES[2035] == "ctx-rh-insula"


def test_detect_from_id_lists(atlas):
    assert detect_format([0, 2, 3, 17, 41, 42, 53], atlas) == "freesurfer"  # SynthSeg-like
    assert detect_format([0, 2, 41, 17, 53, 1006, 2030], atlas) == "freesurfer"  # aparc+aseg
    assert detect_format(atlas.label_ids, atlas) == "atlas"
    with pytest.raises(InputFileError, match="non-integer"):
        detect_format([0, 1.5], atlas)


def test_segmentation_labels_propagates_only_when_needed(atlas):
    calls = []

    def propagate():
        calls.append(1)
        return atlas.labels

    labels, m = segmentation_labels(atlas.labels, atlas, propagate=propagate)
    assert m.fmt == "atlas" and not calls and np.array_equal(labels, atlas.labels)
    labels, m = segmentation_labels(to_aseg(atlas), atlas, propagate=propagate)
    assert m.fmt == "freesurfer" and calls == [1] and np.array_equal(labels, atlas.labels)
    with pytest.raises(MambaControlError, match="give propagate"):
        segmentation_labels(to_aseg(atlas), atlas)
