"""Label maps in the ids people have: the atlas's own, or FreeSurfer's (also SynthSeg, FastSurfer).

A subject's segmentation (``--segmentation``, a manifest's ``segm_path``) may hold

- ``atlas``: the atlas's own label ids (``Atlas.label_ids``; 134 Neuromorphometrics regions for the
  default atlas), used as they are;
- ``freesurfer``: FreeSurfer's ``aseg`` / ``aparc+aseg`` ids (FreeSurferColorLUT), which SynthSeg
  (with or without ``--parc``) and FastSurfer (``aparc.DKTatlas+aseg``) also write; mapped onto the
  atlas's regions here, the rest filled from the atlas's labels propagated by registration.

:func:`detect_format` tells them apart from the ids present (a map whose ids fit both, e.g. a few
subcortical ids only, or neither, e.g. an intensity image, is refused: give the format);
:func:`map_to_atlas` maps a map to atlas ids and :func:`merge_with_propagated` completes it;
:func:`segmentation_labels` does both (propagating only when the map needs it).

How FreeSurfer ids map (by the atlas's region ``group`` and ``hemisphere`` in ``regions.csv``,
never by atlas label numbers; L = left ids, R = right ids):

==================================  =================================================  ========
FreeSurfer ids                      atlas regions (group, same hemisphere)             kind
==================================  =================================================  ========
17 / 53 hippocampus                 hippocampus                                        direct
18 / 54 amygdala                    amygdala                                           direct
4 / 43 lateral ventricle,           lateral ventricle                                  direct
31 / 63 choroid plexus
5 / 44 inferior lateral ventricle   inferior lateral ventricle                         direct
2 / 41 cerebral white matter,       cerebral white matter                              direct
78 / 79 WM hypointensities,
wmparc 3000–3035 / 4000–4035,
5001 / 5002
7 / 46 cerebellum white matter      cerebellum white matter                            direct
10 / 49 (and 9 / 48) thalamus       thalamus                                           direct
11 / 50 caudate, 12 / 51 putamen,   caudate, putamen, pallidum, accumbens              direct
13 / 52 pallidum, 26 / 58 accumbens
14, 15 3rd, 4th ventricle           third ventricle, fourth ventricle (midline)        direct
16 brain stem, 24 CSF,              brain stem, csf, optic chiasm (midline)            direct
85 optic chiasm
1006 / 2006 entorhinal (aparc)      entorhinal area                                    direct
other aparc (DK/DKT)                the Neuromorphometrics gyri that overlap each      split
1001–1035 / 2001–2035               (e.g. superiortemporal: STG, planum polare,
                                    planum temporale); single-gyrus ones direct
3 / 42 cerebral cortex,             every cortical region of the hemisphere            split
aparc 1000 / 2000,                  (frontal, temporal, parietal, occipital, limbic,
aparc.a2009s 11100–11175 /          insula lobes; entorhinal area, parahippocampal)
12100–12175
6 / 45, 8 / 47 cerebellum cortex    cerebellum cortex + cerebellar vermis (midline)    split
28 / 60 ventral DC                  ventral diencephalon + basal forebrain             split
77 WM hypointensities,              cerebral white matter, left or right               split
251–255 corpus callosum
19 / 55, 20 / 56, 25 / 57, 27 / 59, none (insula/operculum of old asegs, lesions,      unmapped
29 / 61, 30 / 62, 72, 80–82         substantia nigra, vessels, 5th ventricle ...)
==================================  =================================================  ========

*direct*: the segmentation alone sets the region's extent. *split*: one FreeSurfer structure covers
several atlas regions (less those another id present sets directly, e.g. entorhinal); its voxels
take the atlas-propagated label where that is one of them, else
the nearest such label (grown through the structure). *unmapped* ids (and split structures whose
regions this atlas lacks) take the propagated label unless that region is one set *directly*.
FreeSurfer's background (0) stays background: the segmentation says where the brain is. Ids that
FreeSurfer's LUT lists but its tools never write (e.g. 1/40, cerebral exterior) are not read as
FreeSurfer's, so that a brain mask (ids 0/1) is refused rather than mapped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mambacontrol.atlas.atlas import Atlas, Region
from mambacontrol.errors import InputFileError, MambaControlError

log = logging.getLogger(__name__)

FORMATS = ("auto", "atlas", "freesurfer")

FREESURFER_NAMES: dict[int, str] = {
    2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex",
    4: "Left-Lateral-Ventricle", 5: "Left-Inf-Lat-Vent", 6: "Left-Cerebellum-Exterior",
    7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex", 9: "Left-Thalamus-unused",
    10: "Left-Thalamus", 11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum",
    14: "3rd-Ventricle", 15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus",
    18: "Left-Amygdala", 19: "Left-Insula", 20: "Left-Operculum", 24: "CSF", 25: "Left-Lesion",
    26: "Left-Accumbens-area", 27: "Left-Substancia-Nigra", 28: "Left-VentralDC",
    29: "Left-undetermined", 30: "Left-vessel", 31: "Left-choroid-plexus",
    41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex",
    43: "Right-Lateral-Ventricle", 44: "Right-Inf-Lat-Vent", 45: "Right-Cerebellum-Exterior",
    46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex", 48: "Right-Thalamus-unused",
    49: "Right-Thalamus", 50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum",
    53: "Right-Hippocampus", 54: "Right-Amygdala", 55: "Right-Insula", 56: "Right-Operculum",
    57: "Right-Lesion", 58: "Right-Accumbens-area", 59: "Right-Substancia-Nigra",
    60: "Right-VentralDC", 61: "Right-undetermined", 62: "Right-vessel", 63: "Right-choroid-plexus",
    72: "5th-Ventricle", 77: "WM-hypointensities", 78: "Left-WM-hypointensities",
    79: "Right-WM-hypointensities", 80: "non-WM-hypointensities", 81: "Left-non-WM-hypointensities",
    82: "Right-non-WM-hypointensities", 85: "Optic-Chiasm", 251: "CC_Posterior",
    252: "CC_Mid_Posterior", 253: "CC_Central", 254: "CC_Mid_Anterior", 255: "CC_Anterior",
    5001: "Left-UnsegmentedWhiteMatter", 5002: "Right-UnsegmentedWhiteMatter",
}

# Desikan-Killiany (aparc, and DKT's subset): id - 1000 (left) or - 2000 (right) -> name, groups
_DK: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("unknown", ("*cortex*",)),
    1: ("bankssts", ("superior temporal gyrus", "middle temporal gyrus")),
    2: ("caudalanteriorcingulate", ("anterior cingulate gyrus", "middle cingulate gyrus")),
    3: ("caudalmiddlefrontal", ("middle frontal gyrus", "superior frontal gyrus",
                                "precentral gyrus")),
    4: ("corpuscallosum", ("*cortex*",)),
    5: ("cuneus", ("cuneus", "calcarine cortex", "superior occipital gyrus")),
    6: ("entorhinal", ("entorhinal area",)),
    7: ("fusiform", ("fusiform gyrus", "occipital fusiform gyrus", "inferior temporal gyrus")),
    8: ("inferiorparietal", ("angular gyrus", "supramarginal gyrus", "superior occipital gyrus",
                             "middle occipital gyrus")),
    9: ("inferiortemporal", ("inferior temporal gyrus", "fusiform gyrus")),
    10: ("isthmuscingulate", ("posterior cingulate gyrus", "precuneus")),
    11: ("lateraloccipital", ("inferior occipital gyrus", "middle occipital gyrus",
                              "superior occipital gyrus", "occipital pole",
                              "occipital fusiform gyrus")),
    12: ("lateralorbitofrontal", ("lateral orbital gyrus", "anterior orbital gyrus",
                                  "posterior orbital gyrus",
                                  "orbital part of the inferior frontal gyrus",
                                  "medial orbital gyrus")),
    13: ("lingual", ("lingual gyrus", "calcarine cortex")),
    14: ("medialorbitofrontal", ("medial orbital gyrus", "gyrus rectus", "medial frontal cortex",
                                 "subcallosal area", "anterior orbital gyrus")),
    15: ("middletemporal", ("middle temporal gyrus",)),
    16: ("parahippocampal", ("parahippocampal gyrus",)),
    17: ("paracentral", ("precentral gyrus medial segment", "postcentral gyrus medial segment",
                         "supplementary motor cortex")),
    18: ("parsopercularis", ("opercular part of the inferior frontal gyrus", "frontal operculum")),
    19: ("parsorbitalis", ("orbital part of the inferior frontal gyrus",)),
    20: ("parstriangularis", ("triangular part of the inferior frontal gyrus",)),
    21: ("pericalcarine", ("calcarine cortex",)),
    22: ("postcentral", ("postcentral gyrus",)),
    23: ("posteriorcingulate", ("middle cingulate gyrus", "posterior cingulate gyrus")),
    24: ("precentral", ("precentral gyrus",)),
    25: ("precuneus", ("precuneus",)),
    26: ("rostralanteriorcingulate", ("anterior cingulate gyrus",)),
    27: ("rostralmiddlefrontal", ("middle frontal gyrus",)),
    28: ("superiorfrontal", ("superior frontal gyrus", "superior frontal gyrus medial segment",
                            "supplementary motor cortex")),
    29: ("superiorparietal", ("superior parietal lobule",)),
    30: ("superiortemporal", ("superior temporal gyrus", "planum polare", "planum temporale")),
    31: ("supramarginal", ("supramarginal gyrus", "parietal operculum")),
    32: ("frontalpole", ("frontal pole",)),
    33: ("temporalpole", ("temporal pole",)),
    34: ("transversetemporal", ("transverse temporal gyrus",)),
    35: ("insula", ("anterior insula", "posterior insula", "central operculum",
                   "frontal operculum", "parietal operculum")),
}
for _i, (_name, _) in _DK.items():
    FREESURFER_NAMES[1000 + _i] = f"ctx-lh-{_name}"
    FREESURFER_NAMES[2000 + _i] = f"ctx-rh-{_name}"
for _i in range(36):  # wmparc: white matter under each DK region
    FREESURFER_NAMES[3000 + _i] = f"wm-lh-{_DK.get(_i, ('region ' + str(_i),))[0]}"
    FREESURFER_NAMES[4000 + _i] = f"wm-rh-{_DK.get(_i, ('region ' + str(_i),))[0]}"
for _i in range(100, 176):  # aparc.a2009s (Destrieux)
    FREESURFER_NAMES[11000 + _i] = f"ctx_lh_a2009s_{_i}"
    FREESURFER_NAMES[12000 + _i] = f"ctx_rh_a2009s_{_i}"

CORTEX = "*cortex*"
CORTICAL_LOBES = ("frontal", "temporal", "parietal", "occipital", "limbic", "insula")
CORTICAL_GROUPS = ("entorhinal area", "parahippocampal gyrus")


def _side(hemi: str, *groups: str) -> tuple[tuple[str, str], ...]:
    return tuple((hemi, g) for g in groups)


def _pair(left: int, right: int, *groups: str) -> dict[int, tuple[tuple[str, str], ...]]:
    return {left: _side("left", *groups), right: _side("right", *groups)}


FREESURFER_TO_ATLAS: dict[int, tuple[tuple[str, str], ...]] = {
    **_pair(17, 53, "hippocampus"), **_pair(18, 54, "amygdala"),
    **_pair(4, 43, "lateral ventricle"), **_pair(31, 63, "lateral ventricle"),
    **_pair(5, 44, "inferior lateral ventricle"),
    **_pair(2, 41, "cerebral white matter"), **_pair(78, 79, "cerebral white matter"),
    **_pair(5001, 5002, "cerebral white matter"),
    **_pair(3, 42, CORTEX),
    **_pair(7, 46, "cerebellum white matter"),
    **_pair(10, 49, "thalamus"), **_pair(9, 48, "thalamus"),
    **_pair(11, 50, "caudate"), **_pair(12, 51, "putamen"), **_pair(13, 52, "pallidum"),
    **_pair(26, 58, "accumbens"),
    **_pair(28, 60, "ventral diencephalon", "basal forebrain"),
    6: _side("left", "cerebellum cortex") + _side("midline", "cerebellar vermis"),
    8: _side("left", "cerebellum cortex") + _side("midline", "cerebellar vermis"),
    45: _side("right", "cerebellum cortex") + _side("midline", "cerebellar vermis"),
    47: _side("right", "cerebellum cortex") + _side("midline", "cerebellar vermis"),
    14: _side("midline", "third ventricle"), 15: _side("midline", "fourth ventricle"),
    16: _side("midline", "brain stem"), 24: _side("midline", "csf"),
    85: _side("midline", "optic chiasm"),
    77: _side("left", "cerebral white matter") + _side("right", "cerebral white matter"),
    **{i: _side("left", "cerebral white matter") + _side("right", "cerebral white matter")
       for i in range(251, 256)},
    **{1000 + i: _side("left", *g) for i, (_, g) in _DK.items()},
    **{2000 + i: _side("right", *g) for i, (_, g) in _DK.items()},
    **{3000 + i: _side("left", "cerebral white matter") for i in range(36)},
    **{4000 + i: _side("right", "cerebral white matter") for i in range(36)},
    **{11000 + i: _side("left", CORTEX) for i in range(100, 176)},
    **{12000 + i: _side("right", CORTEX) for i in range(100, 176)},
}
"""FreeSurfer id -> (hemisphere, atlas region group) pairs it covers (``*cortex*``: every cortical
region of that hemisphere). Ids in :data:`FREESURFER_NAMES` but not here have no atlas region."""


@dataclass(frozen=True, eq=False)
class SegmentationMapping:
    """A label map in atlas ids, as far as its own ids map.

    Attributes:
        labels_atlas: (X, Y, Z) int32 atlas label ids; 0 where the map is background and where its
            id has no single atlas region (split and unmapped ids: see
            :func:`merge_with_propagated`).
        fmt: ``atlas`` or ``freesurfer``.
        mapped_fraction: fraction of the labelled voxels whose id maps to atlas regions (direct or
            split); 1 for ``atlas``.
        unmapped_ids: ids present that map to no atlas region (sorted).
        mapped_regions: atlas labels whose extent the map sets directly (sorted).
        split: id present -> the atlas labels its voxels are shared among (from the propagated map).
        source: (X, Y, Z) int32 the map's own ids.
    """

    labels_atlas: np.ndarray
    fmt: str
    mapped_fraction: float
    unmapped_ids: tuple[int, ...]
    mapped_regions: tuple[int, ...]
    split: dict[int, tuple[int, ...]] = field(default_factory=dict)
    source: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        """True when ``labels_atlas`` needs no atlas-propagated labels (the ``atlas`` format)."""
        return self.fmt == "atlas"

    def summary(self) -> str:
        """One line for the log, e.g. ``freesurfer ids: 99.6 % of labelled voxels mapped ...``."""
        if self.fmt == "atlas":
            return f"atlas ids: {len(self.mapped_regions)} regions, used as they are"
        names = ", ".join(f"{i} {FREESURFER_NAMES.get(i, '?')}" for i in self.unmapped_ids[:6])
        more = f" (+{len(self.unmapped_ids) - 6} more)" if len(self.unmapped_ids) > 6 else ""
        return (f"freesurfer ids: {100 * self.mapped_fraction:.1f} % of labelled voxels mapped, "
                f"{len(self.mapped_regions)} atlas regions set directly, {len(self.split)} "
                "structures shared among atlas regions by the propagated labels"
                + (f"; no atlas region for {names}{more}" if names else ""))


def freesurfer_ids() -> frozenset[int]:
    """Every FreeSurfer id this module knows (aseg, aparc DK/DKT, aparc.a2009s, wmparc)."""
    return frozenset(FREESURFER_NAMES)


def _present_ids(labels: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise InputFileError(f"{what}: a label map must be 3-D (X, Y, Z), not shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == bool):
        raise InputFileError(f"{what}: label map of type {arr.dtype}; give integer label ids")
    ids = np.unique(arr)
    if np.issubdtype(ids.dtype, np.floating):
        if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
            bad = ids[~np.isfinite(ids) | (ids != np.round(ids))][0]
            raise InputFileError(f"{what}: holds non-integer values (e.g. {bad:g}); a label map "
                                 "holds integer ids: give the segmentation, not an image")
    ids = ids.astype(np.int64)
    if ids.size and ids[0] < 0:
        raise InputFileError(f"{what}: holds negative ids ({int(ids[0])}); label ids are >= 0")
    return ids[ids != 0]


def _fmt_ids(ids) -> str:
    ids = sorted(int(i) for i in ids)
    shown = ", ".join(str(i) for i in ids[:8])
    return shown + (f" ... ({len(ids)} ids)" if len(ids) > 8 else "")


def _looks_like(ids: np.ndarray, atlas: Atlas) -> str:
    s = set(int(i) for i in ids)
    lo, hi = int(ids.min()), int(ids.max())
    if s <= {1}:
        return "only the id 1, as in a brain mask"
    if s <= {1, 2, 3}:
        return f"ids {_fmt_ids(s)}, as in a tissue-class map (CSF/GM/WM)"
    if len(s) >= 20 and hi - lo + 1 == len(s):
        return f"ids {lo}–{hi} (every value in between), as in an image saved as integers"
    foreign = sorted(s - set(atlas.label_ids) - freesurfer_ids())
    return f"{len(s)} ids in {lo}–{hi}, {_fmt_ids(foreign)} in neither"


def detect_format(ids, atlas: Atlas, *, what: str = "segmentation") -> str:
    """``atlas`` or ``freesurfer`` from the ids a label map holds.

    Args:
        ids: the map's distinct ids (0, background, is ignored), or the (X, Y, Z) map itself.
        atlas: the atlas whose ids are one of the formats.
        what: how the map is named in errors (e.g. its path).

    Raises:
        InputFileError: the map is empty, its ids fit both formats (give the format) or neither.
    """
    arr = np.asarray(ids)
    present = _present_ids(arr if arr.ndim == 3 else arr.reshape(-1, 1, 1), what)
    if present.size == 0:
        raise InputFileError(f"{what}: label map is empty (all background); give a segmentation "
                             "or leave it out to propagate the atlas's labels")
    s = set(int(i) for i in present)
    atlas_ok = s <= set(atlas.label_ids)
    fs_ok = s <= freesurfer_ids()
    if atlas_ok and not fs_ok:
        return "atlas"
    if fs_ok and not atlas_ok:
        return "freesurfer"
    if atlas_ok and fs_ok:
        raise InputFileError(
            f"{what}: ids {_fmt_ids(s)} are both atlas '{atlas.id}' and FreeSurfer ids; "
            "give the format (--seg-format atlas or freesurfer)")
    raise InputFileError(
        f"{what}: {_looks_like(present, atlas)} look like neither the atlas's labels "
        f"('{atlas.id}', {len(atlas.label_ids)} regions) nor FreeSurfer's (aseg/aparc+aseg, "
        "SynthSeg, FastSurfer); give a label map in one of them, or leave it out so the atlas's "
        "labels are propagated by registration")


def _region_matches(region: Region, hemi: str, group: str) -> bool:
    if region.hemisphere != hemi:
        return False
    if group == CORTEX:
        return region.tissue == "gm" and (region.lobe in CORTICAL_LOBES
                                          or region.group in CORTICAL_GROUPS)
    return region.group == group


def freesurfer_targets(atlas: Atlas) -> dict[int, tuple[int, ...]]:
    """FreeSurfer id -> the atlas labels it covers (empty: none), from the atlas's region table."""
    out: dict[int, tuple[int, ...]] = {}
    for fs_id in FREESURFER_NAMES:
        spec = FREESURFER_TO_ATLAS.get(fs_id, ())
        out[fs_id] = tuple(r.label for r in atlas.regions
                           if any(_region_matches(r, h, g) for h, g in spec))
    return out


def map_to_atlas(labels: np.ndarray, atlas: Atlas, fmt: str = "auto", *,
                 what: str = "segmentation") -> SegmentationMapping:
    """Map a label map to the atlas's ids as far as its own ids allow.

    Args:
        labels: (X, Y, Z) integer label map (already on the grid it will be used on).
        atlas: the atlas.
        fmt: ``auto`` (detect from the ids), ``atlas`` or ``freesurfer``.
        what: how the map is named in errors and the log (e.g. its path).

    Returns:
        :class:`SegmentationMapping`; complete it with :func:`merge_with_propagated` unless
        ``.complete``.

    Raises:
        InputFileError: an unknown format, ids foreign to the given format, or (``auto``) ids that
            fit both formats or neither.
    """
    if fmt not in FORMATS:
        raise MambaControlError(f"segmentation format '{fmt}' is not one of {', '.join(FORMATS)}")
    arr = np.asarray(labels)
    present = _present_ids(arr, what)
    if fmt == "auto" or present.size == 0:
        fmt = detect_format(present, atlas, what=what)  # also refuses an empty map
    known = set(atlas.label_ids) if fmt == "atlas" else freesurfer_ids()
    foreign = sorted(set(int(i) for i in present) - known)
    if foreign:
        named = f"atlas '{atlas.id}'" if fmt == "atlas" else "FreeSurfer (aseg, aparc+aseg)"
        raise InputFileError(
            f"{what}: ids {_fmt_ids(foreign)} are not {named} ids; give the right --seg-format "
            "(auto detects it) or a label map in the atlas's or FreeSurfer's ids")
    src = arr.astype(np.int32)
    if fmt == "atlas":
        return SegmentationMapping(src, "atlas", 1.0, (), tuple(int(i) for i in present), {}, src)
    targets = freesurfer_targets(atlas)
    lut_size = int(present.max()) + 1 if present.size else 1
    direct = np.zeros(lut_size, np.int32)
    split: dict[int, tuple[int, ...]] = {}
    unmapped: list[int] = []
    for i in (int(i) for i in present):
        if len(targets.get(i, ())) == 1:
            direct[i] = targets[i][0]
    owned = set(direct[present].tolist()) - {0}
    for i in (int(i) for i in present):
        t = targets.get(i, ())
        if len(t) > 1:  # a region set directly by another id is not shared out again
            split[i] = tuple(lab for lab in t if lab not in owned) or t
        elif not t:
            unmapped.append(i)
    out = direct[src]
    counts = np.bincount(src.ravel(), minlength=lut_size)
    labelled = counts[1:].sum()
    unmapped_voxels = sum(int(counts[i]) for i in unmapped)
    mapping = SegmentationMapping(
        out, "freesurfer", float(1 - unmapped_voxels / labelled) if labelled else 0.0,
        tuple(unmapped), tuple(sorted({int(v) for v in direct[present] if v})), split, src)
    log.info("%s: %s", what, mapping.summary())
    return mapping


def _neighbour_fill(out: np.ndarray, todo: np.ndarray, cls: np.ndarray, allowed: np.ndarray,
                    reference: np.ndarray) -> None:
    """Fill ``todo`` voxels of ``out`` (modified) with labels their class allows
    (``allowed[cls, label]``): grown from their 6-neighbours while that reaches them, then the
    allowed label whose centroid in ``reference`` (or ``out``) is nearest."""
    shape = out.shape
    flat = out.reshape(-1)
    idx = np.flatnonzero(todo)
    c = cls.reshape(-1)[idx]
    coords = np.stack(np.unravel_index(idx, shape))
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    while idx.size:
        filled = np.zeros(idx.size, bool)
        for axis in range(3):
            for step in (-1, 1):
                nb_coord = coords[axis] + step
                ok = (nb_coord >= 0) & (nb_coord < shape[axis]) & ~filled
                nb = flat[np.where(ok, idx + step * strides[axis], idx)]
                ok &= allowed[c, nb]
                flat[idx[ok]] = nb[ok]
                filled |= ok
        if not filled.any():
            break
        idx, c, coords = idx[~filled], c[~filled], coords[:, ~filled]
    if not idx.size:
        return
    # isolated voxels: the nearest region centroid among the allowed labels
    size = allowed.shape[1]
    for source in (reference, out):
        lab = source.reshape(-1)
        counts = np.bincount(lab, minlength=size)[:size]
        grid = np.indices(shape).reshape(3, -1)
        centroids = np.stack([np.bincount(lab, weights=g, minlength=size)[:size] for g in grid], 1)
        centroids /= np.maximum(counts, 1)[:, None]
        present = counts > 0
        for k in np.unique(c):
            sel = c == k
            cand = np.flatnonzero(allowed[k] & present)
            if not cand.size:
                continue
            d = ((coords[:, sel].T[:, None, :] - centroids[cand][None]) ** 2).sum(-1)
            flat[idx[sel]] = cand[d.argmin(1)]
            keep = ~sel
            idx, c, coords = idx[keep], c[keep], coords[:, keep]
        if not idx.size:
            return


def merge_with_propagated(mapping: SegmentationMapping, propagated: np.ndarray) -> np.ndarray:
    """Complete a mapped segmentation with atlas labels propagated by registration.

    Args:
        mapping: from :func:`map_to_atlas`.
        propagated: (X, Y, Z) atlas label ids on the same grid (e.g.
            ``registration.propagate_labels``).

    Returns:
        (X, Y, Z) int32 atlas label ids: the directly mapped regions as the segmentation has them;
        voxels of split structures with the propagated label where it is one of the structure's
        regions, else the nearest one of them (grown from the 6-neighbours; for a voxel that
        growth cannot reach, the region whose propagated centroid is nearest); voxels of unmapped
        ids with the propagated label unless it is a directly mapped region (else the nearest label
        that is not); background where the segmentation has background.
    """
    prop = np.asarray(propagated)
    if prop.shape != mapping.labels_atlas.shape:
        raise MambaControlError(f"propagated labels have shape {prop.shape}, the segmentation "
                                f"{mapping.labels_atlas.shape}; give both on the same grid")
    out = mapping.labels_atlas.copy()
    if mapping.complete or mapping.source is None:
        return out
    src = mapping.source
    todo = (out == 0) & (src != 0)
    if not todo.any():
        return out
    size = int(max(prop.max(initial=0), out.max(initial=0))) + 1
    # class 0: unmapped ids (any label but the direct ones); class k: the k-th split structure
    allowed = np.ones((1 + len(mapping.split), size), bool)
    allowed[:, 0] = False
    allowed[0, [r for r in mapping.mapped_regions if r < size]] = False
    cls = np.zeros(src.shape, np.int32)
    for k, (fs_id, labels) in enumerate(mapping.split.items(), start=1):
        allowed[k] = False
        allowed[k, [lab for lab in labels if lab < size]] = True
        cls[src == fs_id] = k
    prop_i = np.clip(prop.astype(np.int64), 0, size - 1)
    take = todo & allowed[cls, prop_i]
    out[take] = prop_i[take]
    todo &= ~take
    _neighbour_fill(out, todo, cls, allowed, prop_i)
    return out


def segmentation_labels(labels: np.ndarray, atlas: Atlas, fmt: str = "auto", *,
                        propagate: Callable[[], np.ndarray] | np.ndarray | None = None,
                        what: str = "segmentation") -> tuple[np.ndarray, SegmentationMapping]:
    """A user's label map (on the atlas grid) as complete atlas labels, in one call.

    Args:
        labels: (X, Y, Z) label map in atlas or FreeSurfer ids.
        atlas: the atlas.
        fmt: ``auto``, ``atlas`` or ``freesurfer``.
        propagate: the atlas labels propagated onto the same grid, or a function computing them
            (called only when the map needs them, i.e. not for the ``atlas`` format).
        what: how the map is named in errors and the log.

    Returns:
        ``((X, Y, Z) int32 atlas ids, the SegmentationMapping)``.

    Raises:
        InputFileError: see :func:`map_to_atlas`; MambaControlError when the map needs propagated
            labels and ``propagate`` is None.
    """
    mapping = map_to_atlas(labels, atlas, fmt, what=what)
    if mapping.complete:
        return mapping.labels_atlas, mapping
    if propagate is None:
        raise MambaControlError(f"{what}: FreeSurfer ids need the atlas's labels propagated by "
                                "registration for the regions they do not set; give propagate")
    prop = propagate() if callable(propagate) else propagate
    return merge_with_propagated(mapping, prop), mapping
