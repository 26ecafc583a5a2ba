"""Rebuild the bundled atlas ``icbm152-2009a-nmm`` from its two public sources.

Sources (fetched with ``pip download --no-deps``; neither becomes a dependency):

* ``nilearn`` wheel: ICBM152 2009a symmetric T1 template and its GM/WM probability maps
  (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``), 1 mm.
* ``deepmriprep==0.3.0`` wheel: the Neuromorphometrics label atlas as distributed with CAT12
  (``deepmriprep/data/templates/neuromorphometrics.{nii.gz,csv}``), 1 mm, same MNI space, another
  voxel grid.

Every output grid is built by integrating over each target voxel (``SUPERSAMPLE``³ sample points
per voxel): continuous maps are averaged (partial volume), labels take the majority vote. The
template is brain-extracted and intensity-normalised with the package's own normalisation, so it
looks like a preprocessed scan.

Usage::

    python atlases/build_atlas.py                 # downloads the two wheels into a temp folder
    python atlases/build_atlas.py --wheels DIR    # uses wheels already in DIR

Output is deterministic: the same wheels give the same bytes (see ``atlas.json`` checksums).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from mambacontrol.data.intensity import normalize_intensity  # noqa: E402

ATLAS_ID = "icbm152-2009a-nmm"
NILEARN_REQ = "nilearn==0.14.1"
DEEPMRIPREP_REQ = "deepmriprep==0.3.0"
NILEARN_DATA = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
NMM_DATA = "deepmriprep/data/templates/neuromorphometrics.{}"
# Written into atlas.json (``mambacontrol atlas info`` shows it); the full notices are in
# SOURCES.md.
LICENCE = {
    "template": "ICBM152 2009a: MNI copyright notice, Copyright (C) 1993-2009 Louis Collins, "
                "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill "
                "University: use, copy, modify and distribute for any purpose without fee, with "
                "the copyright notice kept; no warranty",
    "labels": "Neuromorphometrics labels (MICCAI 2012 Grand Challenge and Workshop on Multi-Atlas "
              "Labeling): Creative Commons Attribution-NonCommercial (CC BY-NC); labelled data "
              "provided by Neuromorphometrics, Inc. (http://neuromorphometrics.com/) under "
              "academic subscription",
    "use": "non-commercial research only: the labels' licence covers everything derived from "
           "them (synthetic cohorts, the anatomy graph, models trained with this atlas)",
}
SUPERSAMPLE = 4

# Grids: shape and the world coordinate (mm, RAS) of the first voxel centre. Both cover the
# MNI brain (x -72..72, y -108..75, z -72..84 mm) with margin; the 2 mm shape is divisible by 16,
# the 1.5 mm grid is BrLP's 120×144×120; the 4 mm grid (same field of view as 2 mm) is for
# quick demonstrations and tests on a CPU.
GRIDS = {
    "2mm": {"spacing": 2.0, "shape": (96, 112, 96)},
    "1p5mm": {"spacing": 1.5, "shape": (120, 144, 120)},
    "4mm": {"spacing": 4.0, "shape": (48, 56, 48)},
}
BRAIN_CENTRE_MM = np.array([0.0, -16.0, 6.0])

LOBES = {
    "Frontal lobe": "frontal",
    "Temporal lobe": "temporal",
    "Parietal lobe": "parietal",
    "Occipital lobe": "occipital",
    "Limbic cortex": "limbic",
    "Basal ganglia": "subcortical",
    "Diencephalon": "subcortical",
    "Basal Forebrain": "subcortical",
    "Amygdala": "medial temporal",
    "Hippocampus": "medial temporal",
    "Cerebellum": "cerebellum",
    "Brain stem": "brainstem",
    "Ventricle": "ventricles",
    "Optic chaism": "other",
}
# Groups (hemisphere-free structure names) that the CSV's short names do not give directly.
GROUP_BY_LABEL = {
    4: "third ventricle",
    11: "fourth ventricle",
    46: "csf",
    49: "inferior lateral ventricle",
    50: "inferior lateral ventricle",
    51: "lateral ventricle",
    52: "lateral ventricle",
    38: "cerebellum cortex",
    39: "cerebellum cortex",
    40: "cerebellum white matter",
    41: "cerebellum white matter",
    44: "cerebral white matter",
    45: "cerebral white matter",
    71: "cerebellar vermis",
    72: "cerebellar vermis",
    73: "cerebellar vermis",
    59: "thalamus",
    60: "thalamus",
    61: "ventral diencephalon",
    62: "ventral diencephalon",
    23: "accumbens",
    30: "accumbens",
}
LOBE_BY_LABEL = {44: "white matter", 45: "white matter", 116: "medial temporal",
                 117: "medial temporal", 170: "medial temporal", 171: "medial temporal",
                 102: "insula", 103: "insula", 172: "insula", 173: "insula"}
KEY_GROUPS = {
    "hippocampus": ["hippocampus"],
    "amygdala": ["amygdala"],
    "entorhinal": ["entorhinal area"],
    "lateral_ventricles": ["lateral ventricle", "inferior lateral ventricle"],
}


def fetch_wheels(dest: Path) -> tuple[Path, Path]:
    """Download the two source wheels into ``dest`` (no dependencies)."""
    for req in (NILEARN_REQ, DEEPMRIPREP_REQ):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", str(dest), req], check=True)
    return find_wheels(dest)


def find_wheels(folder: Path) -> tuple[Path, Path]:
    nl = sorted(folder.glob("nilearn-*.whl"))
    dm = sorted(folder.glob("deepmriprep-0.3.0-*.whl"))
    if not nl or not dm:
        raise SystemExit(f"{folder}: need a nilearn wheel and deepmriprep-0.3.0 wheel")
    return nl[-1], dm[-1]


def read_nifti_from_wheel(wheel: Path, member: str, tmp: Path) -> nib.Nifti1Image:
    with zipfile.ZipFile(wheel) as zf:
        target = tmp / Path(member).name
        target.write_bytes(zf.read(member))
    img = nib.load(str(target))
    return nib.Nifti1Image(np.asarray(img.dataobj), img.affine)


def region_table(wheel: Path) -> list[dict]:
    """Region rows from the Neuromorphometrics CSV, hemisphere taken from the name."""
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(NMM_DATA.format("csv")).decode("utf-8")
    rows = []
    for r in csv.DictReader(text.splitlines(), delimiter=";"):
        label = int(r["ROIid"])
        name = r["ROIname"].strip()
        if name.startswith("Right "):
            hemi, short = "right", name[6:]
        elif name.startswith("Left "):
            hemi, short = "left", name[5:]
        else:
            hemi, short = "midline", name
        if label in GROUP_BY_LABEL:
            group = GROUP_BY_LABEL[label]
        else:
            words = short.split(" ")
            # cortical names start with an abbreviation ("ACgG anterior cingulate gyrus")
            group = " ".join(words[1:]) if label >= 100 else short
            group = group.lower()
        tissue = "gm" if r["Vgm"] == "1" else "wm" if r["Vwm"] == "1" else "csf"
        lobe = LOBE_BY_LABEL.get(label, LOBES[r["CircRegion"]])
        rows.append({"label": label, "name": name, "hemisphere": hemi, "group": group,
                     "lobe": lobe, "tissue": tissue})
    rows.sort(key=lambda row: row["label"])
    return rows


def grid_affine(spacing: float, shape: tuple[int, int, int]) -> np.ndarray:
    """RAS affine of a grid of ``shape`` centred on the brain."""
    origin = BRAIN_CENTRE_MM - spacing * (np.array(shape) - 1) / 2.0
    origin = np.round(origin / 0.25) * 0.25
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = origin
    return aff


def subvoxel_points(shape, affine_target, affine_source, offset_index: int, n: int) -> np.ndarray:
    """Source voxel coordinates of the ``offset_index``-th of n³ sub-points of every target
    voxel."""
    k = np.unravel_index(offset_index, (n, n, n))
    offs = [(-0.5 + (ki + 0.5) / n) for ki in k]
    ii, jj, kk = np.meshgrid(*(np.arange(s, dtype=np.float64) + o for s, o in zip(shape, offs)),
                             indexing="ij")
    world = affine_target @ np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    return (np.linalg.inv(affine_source) @ world)[:3]


def average_into(src: np.ndarray, src_aff: np.ndarray, shape, aff: np.ndarray) -> np.ndarray:
    """Partial-volume average of a continuous map over each target voxel."""
    acc = np.zeros(int(np.prod(shape)), dtype=np.float64)
    for idx in range(SUPERSAMPLE**3):
        pts = subvoxel_points(shape, aff, src_aff, idx, SUPERSAMPLE)
        acc += ndimage.map_coordinates(src.astype(np.float64), pts, order=1, mode="constant")
    return (acc / SUPERSAMPLE**3).reshape(shape)


def majority_into(labels: np.ndarray, src_aff: np.ndarray, shape, aff: np.ndarray,
                  label_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Majority label per target voxel and the winning label's volume fraction."""
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    lut[label_ids] = np.arange(1, len(label_ids) + 1)
    dense = lut[labels]
    counts = np.zeros((len(label_ids) + 1, int(np.prod(shape))), dtype=np.uint8)
    cols = np.arange(counts.shape[1])
    for idx in range(SUPERSAMPLE**3):
        pts = subvoxel_points(shape, aff, src_aff, idx, SUPERSAMPLE)
        sample = ndimage.map_coordinates(dense, pts, order=0, mode="constant")
        counts[sample, cols] += 1  # one increment per column: fancy indexing is exact here
    win = counts.argmax(axis=0)
    # a region too small to win any voxel keeps the voxel where it has the largest share
    for k in range(1, len(label_ids) + 1):
        if not (win == k).any():
            win[counts[k].argmax()] = k
    frac = counts[win, cols] / SUPERSAMPLE**3
    ids = np.array([0] + list(label_ids))
    return ids[win].reshape(shape), frac.reshape(shape)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(data: np.ndarray, aff: np.ndarray, path: Path, dtype) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=4)  # MNI
    img.set_sform(aff, code=4)
    nib.save(img, str(path))


def build(nilearn_whl: Path, nmm_whl: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        t1 = read_nifti_from_wheel(nilearn_whl, NILEARN_DATA.format("t1"), tmp)
        gm = read_nifti_from_wheel(nilearn_whl, NILEARN_DATA.format("gm"), tmp)
        wm = read_nifti_from_wheel(nilearn_whl, NILEARN_DATA.format("wm"), tmp)
        lab = read_nifti_from_wheel(nmm_whl, NMM_DATA.format("nii.gz"), tmp)
    regions = region_table(nmm_whl)
    label_ids = [r["label"] for r in regions]
    src_labels = np.asarray(lab.dataobj).astype(np.int64)
    present = set(np.unique(src_labels).tolist()) - {0}
    if present != set(label_ids):
        raise SystemExit(f"label map and region table disagree: {sorted(present ^ set(label_ids))}")

    t1_data = np.asarray(t1.dataobj, dtype=np.float64)
    # the template is already brain-extracted: its support (union the labelled voxels) is the brain
    labels_on_t1 = ndimage.map_coordinates(
        src_labels, subvoxel_points(t1.shape, t1.affine, lab.affine, 0, 1), order=0
    ).reshape(t1.shape)
    brain_src = ((t1_data > 0) | (labels_on_t1 > 0)).astype(np.float64)

    out.mkdir(parents=True, exist_ok=True)
    grids_meta = {}
    for name, spec in GRIDS.items():
        shape, spacing = spec["shape"], spec["spacing"]
        aff = grid_affine(spacing, shape)
        mask = average_into(brain_src, t1.affine, shape, aff) >= 0.5
        mask = ndimage.binary_fill_holes(mask)
        gm_g = np.clip(average_into(np.asarray(gm.dataobj) / 255.0, gm.affine, shape, aff), 0, 1)
        wm_g = np.clip(average_into(np.asarray(wm.dataobj) / 255.0, wm.affine, shape, aff), 0, 1)
        gm_g *= mask
        wm_g *= mask
        csf_g = np.clip(mask - gm_g - wm_g, 0.0, 1.0)
        t1_g = average_into(t1_data, t1.affine, shape, aff)
        t1_g = normalize_intensity(t1_g, mask)
        labels_g, _ = majority_into(src_labels, lab.affine, shape, aff, label_ids)
        labels_g = np.where(mask, labels_g, 0)

        gdir = out / name
        gdir.mkdir(exist_ok=True)
        save(np.round(t1_g, 4), aff, gdir / "t1.nii.gz", np.float32)
        save(mask, aff, gdir / "mask.nii.gz", np.uint8)
        save(np.round(gm_g, 3), aff, gdir / "gm.nii.gz", np.float32)
        save(np.round(wm_g, 3), aff, gdir / "wm.nii.gz", np.float32)
        save(np.round(csf_g, 3), aff, gdir / "csf.nii.gz", np.float32)
        save(labels_g, aff, gdir / "labels.nii.gz", np.int16)
        files = {f: sha256(gdir / f"{f}.nii.gz")
                 for f in ("t1", "mask", "gm", "wm", "csf", "labels")}
        grids_meta[name] = {"spacing_mm": spacing, "shape": list(shape),
                            "affine": aff.tolist(), "sha256": files}
        print(f"{name}: shape {shape}, brain {mask.sum() * spacing**3 / 1000:.0f} cm³, "
              f"{len(np.unique(labels_g)) - 1} labels present")

    with open(out / "regions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(regions[0]))
        writer.writeheader()
        writer.writerows(regions)
    key_groups = {key: [r["label"] for r in regions if r["group"] in groups]
                  for key, groups in KEY_GROUPS.items()}
    key_groups["whole_brain"] = [r["label"] for r in regions if r["tissue"] in ("gm", "wm")]
    meta = {
        "id": ATLAS_ID,
        "description": "ICBM152 2009a nonlinear symmetric template (T1, GM, WM; CSF = mask - GM "
                       "- WM) with the Neuromorphometrics labels (134 regions), resampled by "
                       "partial-volume averaging and majority vote.",
        "sources": {"template": NILEARN_REQ, "labels": DEEPMRIPREP_REQ},
        "licence": LICENCE,
        "regions_sha256": sha256(out / "regions.csv"),
        "key_groups": key_groups,
        "grids": grids_meta,
    }
    (out / "atlas.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="folder holding the two wheels")
    parser.add_argument("--out", type=Path, default=HERE / ATLAS_ID)
    args = parser.parse_args()
    if args.wheels:
        nl, dm = find_wheels(args.wheels)
        build(nl, dm, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            nl, dm = fetch_wheels(Path(tmp))
            build(nl, dm, args.out)


if __name__ == "__main__":
    main()
