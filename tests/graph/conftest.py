"""A tiny longitudinal cohort on the real 4 mm atlas, with known regional change.

Every subject's scans are the atlas template with its own intensity gain and noise, on the atlas
labels. The true follow-up volume of each region is the atlas volume scaled by
``exp(Δt · rate[diagnosis, region] / 100)``, written to the manifest's ``vol_r<label>`` columns,
as the synthetic cohort does.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.data.manifest import Manifest, Visit

RATES = {"CN": -0.5, "MCI": -2.0, "AD": -4.0}  # % per year for grey matter; CSF grows 3× as fast


@pytest.fixture(scope="session")
def atlas4():
    return load_atlas(grid="4mm")


def region_rates(atlas, diagnosis: str) -> np.ndarray:
    """(L,) annual % change of every label for one diagnosis."""
    base = RATES[diagnosis]
    return np.array([-3 * base if r.tissue == "csf"
                     else base * (1.5 if r.group == "hippocampus" else 1.0)
                     for r in atlas.regions])


def make_cohort(folder, atlas, n_subjects=6, visits=(0.0, 1.5, 3.0), seed=0, volume_columns=True,
                splits=None) -> Manifest:
    """Write a tiny cohort's NIfTIs into ``folder`` and return its manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels_path = folder / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(atlas.labels, dtype=np.int16), atlas.grid.affine),
             str(labels_path))
    base_vol = np.array([atlas.region_volumes()[lab] for lab in atlas.label_ids])
    dxs = ["CN", "MCI", "AD"]
    rows = []
    for s in range(n_subjects):
        dx = dxs[s % 3]
        sex = "F" if s % 2 else "M"
        age0 = 65.0 + 2.0 * s
        split = splits[s] if splits else "train"
        img = (atlas.template * rng.uniform(0.9, 1.1)
               + rng.normal(0, 0.02, atlas.grid.shape) * atlas.mask)
        path = folder / f"s{s}.nii.gz"
        nib.save(nib.Nifti1Image(img.astype(np.float32), atlas.grid.affine), str(path))
        for k, t in enumerate(visits):
            vols = base_vol * np.exp(t * region_rates(atlas, dx) / 100.0)
            extra = {f"vol_r{lab}": f"{v:.6f}"
                     for lab, v in zip(atlas.label_ids, vols)} if volume_columns else {}
            rows.append(Visit(f"s{s}", f"s{s}v{k}", path, age0 + t, sex, dx, split,
                              labels_path, extra))
    manifest = Manifest(rows)
    out = folder / "manifest.csv"
    manifest.to_csv(out)
    return Manifest.from_csv(out)
