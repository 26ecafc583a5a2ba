"""Bring a scan onto the model's atlas grid: image, brain mask, labels, and the way back.

A scan already on the atlas grid (the synthetic cohort, or data preprocessed by us earlier) is
used as it is: brain-extracted, intensity-normalised. Any other scan is affinely registered to the
atlas template (:func:`mambacontrol.registration.align_to_atlas`); its labels come from its own
segmentation carried along the same transform, or, without one, from the atlas by deformable
registration (:func:`mambacontrol.registration.propagate_labels`). For training and evaluation,
:func:`prepare_manifest` does this once per scan and writes the results as NIfTI on the grid, so
every later step reads scans that are already on the grid.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from mambacontrol.atlas import Atlas, load_atlas
from mambacontrol.atlas.segformats import SegmentationMapping, segmentation_labels
from mambacontrol.data import Manifest, normalize_intensity
from mambacontrol.data.intensity import intensity_range
from mambacontrol.errors import ConfigError, InputFileError, RegistrationError
from mambacontrol.io import Grid, OutputFolder, Volume, load_nifti, save_nifti, unique_names
from mambacontrol.pipeline.shards import Shard
from mambacontrol.registration import (
    AtlasTransform,
    align_to_atlas,
    propagate_labels,
    template_similarity,
)

MIN_SIMILARITY_ON_GRID = 0.45
"""Brain check of scans already on the atlas grid (not registered, so not the registration's
0.65): 12 synthetic subjects' visits scored 0.585 and more on the 4 mm grid, 0.533 and more on
the 2 mm grid; non-brains (noise, a blob, a cube, inverted contrast, a shifted or flipped
template) at most 0.36 on either (docs/benchmarks.md)."""


@dataclass(eq=False)
class PreparedScan:
    """A scan on the atlas grid.

    Attributes:
        image: (X, Y, Z) float32, brain-extracted and normalised to [0, 1].
        mask: (X, Y, Z) bool brain mask.
        labels: (X, Y, Z) int32 atlas label ids.
        label_source: ``segmentation`` (the scan's own) or ``propagated`` (atlas by registration).
        transform: the map back to the scan's own space (None when the scan was already on
            the grid).
        similarity: the scan's similarity to the template (the brain check).
        affine: (4, 4) the scan's own affine when it was already on the grid.
        intensity_scale: the scan's units per normalised unit (``hi − lo`` of the normalisation;
            1 for a scan that was already normalised).
        bias_field: (X, Y, Z) the N4 bias field on the grid (None: not corrected).
        segmentation_format: the ids the user's segmentation held (``atlas``, ``freesurfer``;
            None without one).
    """

    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    label_source: str
    transform: AtlasTransform | None = None
    similarity: float | None = None
    affine: np.ndarray | None = None
    intensity_scale: float = 1.0
    bias_field: np.ndarray | None = None
    segmentation_format: str | None = None

    @property
    def volume_scale(self) -> float:
        """Native mm³ per atlas mm³ (1 for a scan that was already on the grid)."""
        return 1.0 if self.transform is None else self.transform.volume_scale

    def change_to_native(self, change: np.ndarray) -> Volume:
        """A change of normalised intensity on the grid, (X, Y, Z), as a change in the scan's own
        units and space: undoes the normalisation's scale and the bias-field correction, so that
        the scan plus it is the changed scan."""
        scaled = np.asarray(change, dtype=np.float32) * np.float32(self.intensity_scale)
        if self.bias_field is not None:
            scaled = scaled * self.bias_field
        return self.to_native(scaled, order=1)

    def to_native(self, array: np.ndarray, order: int = 1) -> Volume:
        """Map an (X, Y, Z) array on the atlas grid into the scan's own space: its exact shape and
        affine (for a scan that was already on the grid, the array itself)."""
        if self.transform is None:
            if self.affine is None:
                raise ValueError("this prepared scan records no way back to its own space")
            return Volume(np.asarray(array), np.asarray(self.affine, dtype=np.float64).copy())
        return self.transform.to_native(array, order)


def load_on_grid(image_path: str | os.PathLike, segm_path: str | os.PathLike,
                 mask_path: str | os.PathLike | None, atlas: Atlas) -> PreparedScan:
    """A scan already prepared on the atlas grid (image, labels, optional mask file).

    Raises:
        InputFileError: when a file is bad or not on the atlas grid.
    """
    image = load_nifti(image_path)
    labels = load_nifti(segm_path, labels=True)
    for vol, p in ((image, image_path), (labels, segm_path)):
        if not Grid.of(vol).same_as(atlas.grid):
            raise InputFileError(f"{p}: grid {vol.shape} is not the atlas grid {atlas.grid.shape} "
                                 f"({atlas.id} {atlas.grid_name}); prepare the scan first")
    if mask_path:
        mask = load_nifti(mask_path, labels=True).data > 0
    else:
        mask = on_grid_mask(image.data, labels.data)
    img, scale = _normalized_on_grid(image.data, mask)
    similarity = check_brain_on_grid(img, atlas, image_path)
    return PreparedScan(img, mask, labels.data.astype(np.int32), "segmentation",
                        similarity=similarity, affine=image.affine, intensity_scale=scale)


def _normalized_on_grid(data: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """A scan on the grid normalised (unless it already lies in [0, 1]) and its intensity scale."""
    img = np.asarray(data, dtype=np.float32)
    if img.min() >= 0 and img.max() <= 1:
        return img, 1.0
    lo, hi = intensity_range(img, mask)
    return normalize_intensity(img, mask), hi - lo


def check_brain_on_grid(image: np.ndarray, atlas: Atlas, source) -> float:
    """The brain check of a scan that skipped registration because it is already on the grid:
    the template similarity of :func:`mambacontrol.registration.align_to_atlas`, with the
    threshold :data:`MIN_SIMILARITY_ON_GRID`.

    Returns:
        The similarity.

    Raises:
        RegistrationError: when the image does not look like a brain on the atlas grid.
    """
    similarity = template_similarity(image, atlas)
    if similarity < MIN_SIMILARITY_ON_GRID:
        raise RegistrationError(
            f"{source}: on the atlas grid, but its similarity to the template {similarity:.3f} is "
            f"below {MIN_SIMILARITY_ON_GRID:.2f}; the image is probably not a T1-weighted brain "
            "MRI brought to this atlas (other contrast, not a head, or another atlas's grid)")
    return similarity


def on_grid_mask(image: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Brain mask of a brain-extracted scan on the grid: non-zero voxels (and labelled ones),
    holes filled."""
    support = np.asarray(image) != 0
    if labels is not None:
        support |= np.asarray(labels) > 0
    return ndimage.binary_fill_holes(support)


def prepare_scan(image: str | os.PathLike | Volume, atlas: Atlas,
                 segmentation: str | os.PathLike | Volume | None = None, *, seed: int = 0,
                 bias_correction: bool = True, mask: str | os.PathLike | Volume | None = None,
                 seg_format: str = "auto") -> PreparedScan:
    """Bring a scan (and its optional segmentation and brain mask) onto ``atlas.grid``.

    Each may be given as a NIfTI path or as already loaded by :func:`load_nifti` (nothing is
    read twice).

    Args:
        image: the scan.
        segmentation: its label map, in its space: atlas label ids or FreeSurfer ids (aseg,
            aparc+aseg; SynthSeg, FastSurfer), mapped onto the atlas's regions with the rest
            propagated from the atlas (:mod:`mambacontrol.atlas.segformats`).
        seed: registration seed.
        bias_correction: N4 bias-field correction of a registered scan before normalisation
            (a scan already on the grid is taken as prepared).
        mask: the scan's own brain mask (e.g. SynthStrip's), in its space; default: the
            atlas brain mask after registration (for a scan on the grid: its non-zero voxels).
        seg_format: the segmentation's ids: ``auto`` (detected), ``atlas`` or ``freesurfer``.

    Raises:
        InputFileError: for a bad file (see :func:`mambacontrol.io.load_nifti`) or a segmentation
            that does not overlay its scan.
        RegistrationError: when the scan does not register to the template.
    """
    scan = _loaded(image, labels=False)
    seg = _loaded(segmentation, labels=True)
    user_mask = _loaded(mask, labels=True)
    if Grid.of(scan).same_as(atlas.grid):
        return _prepare_on_grid(scan, seg, user_mask, atlas, seed=seed, seg_format=seg_format)
    return _prepare_registered(scan, seg, user_mask, atlas, seed=seed,
                               bias_correction=bias_correction, seg_format=seg_format)


def _loaded(source: str | os.PathLike | Volume | None, *, labels: bool) -> Volume | None:
    """A volume as it is, a path loaded (:func:`load_nifti`), None (or ``""``) as None."""
    if isinstance(source, Volume):
        return source
    return load_nifti(source, labels=labels) if source else None


def _prepare_on_grid(scan: Volume, seg: Volume | None, user_mask: Volume | None, atlas: Atlas,
                     *, seed: int, seg_format: str) -> PreparedScan:
    """A scan already on the atlas grid: normalised unless it is already, brain-checked, its
    labels mapped from its segmentation or propagated from the atlas."""
    for other in (seg, user_mask):
        if other is not None and not Grid.of(other).same_as(atlas.grid):
            raise InputFileError(f"{other.path}: grid {other.shape} differs from its scan's (the "
                                 f"atlas grid {atlas.grid.shape}); give them on one grid")
    if user_mask is not None:
        mask = user_mask.data > 0
    else:
        mask = on_grid_mask(scan.data, seg.data if seg is not None else None)
    image, scale = _normalized_on_grid(scan.data, mask)
    similarity = check_brain_on_grid(image, atlas, scan.path or "scan")
    common = dict(similarity=similarity, affine=scan.affine, intensity_scale=scale)
    if seg is not None:
        labels, mapping = segmentation_labels(
            seg.data, atlas, seg_format, what=str(seg.path),
            propagate=lambda: propagate_labels(image, atlas, seed=seed))
        return PreparedScan(image, mask, labels, "segmentation",
                            segmentation_format=mapping.fmt, **common)
    labels = propagate_labels(image, atlas, seed=seed)
    return PreparedScan(image, mask, np.where(mask, labels, 0).astype(np.int32), "propagated",
                        **common)


def _prepare_registered(scan: Volume, seg: Volume | None, user_mask: Volume | None,
                        atlas: Atlas, *, seed: int, bias_correction: bool,
                        seg_format: str) -> PreparedScan:
    """A scan off the grid: registered to the template (brain-extracted, normalised), its
    segmentation carried along the same transform, or atlas labels propagated."""
    aligned = align_to_atlas(scan, atlas, seed=seed, bias_correction=bias_correction,
                             brain_mask=user_mask)
    mapping: SegmentationMapping | None = None
    if seg is not None:
        labels, mapping = segmentation_labels(
            aligned.transform.to_atlas(seg, order=0).astype(np.int32), atlas, seg_format,
            what=str(seg.path),
            propagate=lambda: propagate_labels(aligned.image, atlas, seed=seed))
    else:
        labels = propagate_labels(aligned.image, atlas, seed=seed)
    lo, hi = aligned.intensity_range
    return PreparedScan(aligned.image.astype(np.float32), aligned.mask,
                        np.where(aligned.mask, labels, 0).astype(np.int32),
                        "segmentation" if seg is not None else "propagated", aligned.transform,
                        float(aligned.similarity), intensity_scale=hi - lo,
                        bias_field=aligned.bias_field,
                        segmentation_format=mapping.fmt if mapping is not None else None)


PREPARED_KINDS = ("mask", "labels", "t1")
"""A prepared visit's files, ``<uid>_<kind>.nii.gz``, in the order they are written (the image
last: the three present mean a finished visit)."""

PREPARED_MANIFEST = "manifest.csv"
"""The prepared manifest that :func:`prepare_into_folder` writes into its folder."""


def prepare_manifest(manifest: Manifest, atlas: Atlas, folder: str | os.PathLike, *,
                     seed: int = 0, workers: int = 1, shard: Shard | None = None) -> Manifest:
    """A manifest whose every scan is on the atlas grid, with its labels.

    Visits already on the grid with a segmentation are kept as they are. Every other visit is
    prepared once (:func:`prepare_scan`) into ``folder`` as ``<uid>_t1.nii.gz``,
    ``<uid>_labels.nii.gz`` and ``<uid>_mask.nii.gz``; a visit whose three files exist is not
    prepared again. Extra columns (ground truth) are kept; ``mask_path`` points to the mask.

    Args:
        workers: scans prepared side by side, each in its own process on one ITK and torch
            thread (the serial path, ``1``, uses ITK's default threads: registrations may differ
            between the two by ITK's thread effect, about 0.05 mm).
        shard: under ``accelerate launch`` (:meth:`Shard.current`), only the main process
            prepares and the others wait, then every process reads the prepared files.

    Raises:
        InputFileError, RegistrationError: naming the scan that could not be prepared (on every
            process of a launch).
    """
    files = prepared_files(manifest, atlas, folder)
    missing = [v for v in manifest if v.image_uid in files
               and not all(p.is_file() for p in files[v.image_uid].values())]
    (shard or Shard()).run_on_main(lambda: _prepare_visits(missing, atlas, files, seed, workers))
    return with_prepared_files(manifest, files)


def prepared_files(manifest: Manifest, atlas: Atlas,
                   folder: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """Where each visit that needs preparing goes: ``{image_uid: {kind: folder/<name>_<kind>
    .nii.gz}}`` for each kind of :data:`PREPARED_KINDS` (``<name>``: the uid as a safe file
    name). A visit on the atlas grid with a segmentation needs none (it is absent).

    Raises:
        InputFileError: two uids that give one file name.
    """
    out = Path(folder)
    names = unique_names(((f"row {i + 1}", v.image_uid) for i, v in enumerate(manifest)),
                         "image_uid")
    return {v.image_uid: {k: out / f"{names[v.image_uid]}_{k}.nii.gz" for k in PREPARED_KINDS}
            for v in manifest
            if not (v.segm_path is not None and scan_on_grid(v.image_path, atlas.grid))}


def with_prepared_files(manifest: Manifest, files: dict[str, dict[str, Path]]) -> Manifest:
    """``manifest`` with each visit of ``files`` (:func:`prepared_files`) pointing at its prepared
    image, labels and mask (``mask_path``, absolute); the other visits as they are."""
    visits = []
    for v in manifest.visits:
        if v.image_uid not in files:
            visits.append(v)
            continue
        own = files[v.image_uid]
        extra = {**v.extra, "mask_path": str(own["mask"].resolve())}
        visits.append(replace(v, image_path=own["t1"], segm_path=own["labels"], extra=extra))
    return Manifest(visits, manifest.path)


def _prepare_visits(visits: list, atlas: Atlas, paths: dict[str, dict[str, Path]], seed: int,
                    workers: int, on_done: Callable[[str], None] | None = None) -> None:
    """Prepare each visit into its ``paths`` (``t1``, ``labels``, ``mask``), ``workers`` at a
    time in processes of their own (spawned: no torch or ITK thread pool is forked); then
    ``on_done(image_uid)``, in this process, as each visit's files are written."""
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1")
    done = on_done or (lambda uid: None)
    bar = tqdm(total=len(visits), desc="preparing scans", disable=None if visits else True,
               leave=False)
    with bar:
        if workers == 1 or len(visits) < 2:
            for v in visits:
                _prepare_files(v.image_path, v.segm_path, paths[v.image_uid], atlas=atlas,
                               seed=seed)
                done(v.image_uid)
                bar.update()
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(visits)), mp_context=ctx,
                                 initializer=_one_thread) as pool:
            futures = {pool.submit(_prepare_in_worker, v.image_path, v.segm_path,
                                   paths[v.image_uid], atlas.id, atlas.grid_name, seed):
                       v.image_uid for v in visits}
            try:
                for future in as_completed(futures):
                    future.result()
                    done(futures[future])
                    bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise


def _one_thread() -> None:
    """A preparation worker's threads: one for ITK (read when ANTs first runs) and torch."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import torch  # lazy: the worker's own torch

    torch.set_num_threads(1)


def _prepare_in_worker(image: Path, segm: Path | None, paths: dict[str, Path], atlas_id: str,
                       grid: str, seed: int) -> None:
    _prepare_files(image, segm, paths, atlas=load_atlas(atlas_id, grid), seed=seed)


def _prepare_files(image: Path, segm: Path | None, paths: dict[str, Path], *, atlas: Atlas,
                   seed: int) -> None:
    """Prepare one scan and write its mask, labels and image (the image last: the three files
    present mean a finished scan)."""
    scan = prepare_scan(image, atlas, segm, seed=seed)
    save_nifti(paths["mask"], scan.mask.astype(np.uint8), atlas.grid.affine, dtype=np.uint8)
    save_nifti(paths["labels"], scan.labels, atlas.grid.affine, dtype=np.int16)
    save_nifti(paths["t1"], scan.image, atlas.grid.affine)


def scan_on_grid(path: str | os.PathLike, grid: Grid) -> bool:
    """Whether a NIfTI file's header puts it on ``grid`` (reads the header only)."""
    try:
        img = nib.load(str(path))
    except Exception:  # noqa: BLE001 - unreadable files are reported by load_nifti later
        return False
    return Grid(tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine)).same_as(grid)


@dataclass(frozen=True)
class FolderPreparation:
    """What :func:`prepare_into_folder` did.

    Attributes:
        prepared: visits prepared by this run.
        share: visits this run had to see prepared (its part's, with parts): now or before.
        manifest_csv: the prepared manifest it wrote (None for a job-array part).
    """

    prepared: int
    share: int
    manifest_csv: Path | None


def prepare_into_folder(manifest: Manifest, atlas: Atlas, out: str | os.PathLike, *,
                        seed: int = 0, workers: int = 1, shard: Shard | None = None,
                        overwrite: bool = False) -> FolderPreparation:
    """``mambacontrol manifest prepare``: every visit not on the atlas grid prepared into ``out``
    (files named as by :func:`prepare_manifest`), and ``out/manifest.csv``, the prepared manifest
    (paths relative to ``out`` where inside it), whose scans need no preparation.

    ``out`` is an :class:`~mambacontrol.io.OutputFolder` of ``manifest-prepare``: each visit's
    three files are staged, then committed; a visit already committed is skipped (a killed run
    resumes). With parts (``shard.num_parts`` K > 1), the visits to prepare (in manifest order)
    are split, visit ``i`` to part ``i mod K``; a part prepares its own beside the other parts
    (part locks) and writes no manifest.csv; a later run without parts finds theirs done,
    prepares any missing ones and writes it. Under ``accelerate launch`` only the main process
    works (with ``workers``), the others wait.

    Args:
        overwrite: prepare every visit of the share again (replacing this command's own files).

    Raises:
        OutputFolderError: ``out`` cannot be used (see :meth:`OutputFolder.claim`).
        InputFileError, RegistrationError: naming the scan that could not be prepared (the
            visits committed before it stay).
    """
    shard = shard or Shard()
    part = Shard(shard.num_parts, shard.part_id)  # the part's every visit, on the main process
    return shard.run_on_main(
        lambda: _prepare_claimed(manifest, atlas, out, seed, workers, part, overwrite))


def _prepare_claimed(manifest: Manifest, atlas: Atlas, out: str | os.PathLike, seed: int,
                     workers: int, part: Shard, overwrite: bool) -> FolderPreparation:
    """:func:`prepare_into_folder`'s work, on one process."""
    inputs = [manifest.path, *(p for v in manifest
                               for p in (v.image_path, v.segm_path, manifest.mask_path(v)))]
    with OutputFolder.claim(out, "manifest-prepare", inputs=inputs, overwrite=overwrite,
                            resume=True, part=part.part) as folder:
        files = prepared_files(manifest, atlas, folder.path)
        share = part.select([v for v in manifest if v.image_uid in files])
        folder.check_free([*(p.name for v in share for p in files[v.image_uid].values()),
                           *([PREPARED_MANIFEST] if part.part is None else [])])
        missing = [v for v in share if overwrite or not all(
            folder.owns(p.name) for p in files[v.image_uid].values())]
        with folder.staging() as tmp:
            staged = {v.image_uid: {k: tmp / p.name for k, p in files[v.image_uid].items()}
                      for v in missing}

            def commit(uid: str) -> None:
                for kind in PREPARED_KINDS:  # the image last, as they were written
                    folder.commit(staged[uid][kind], files[uid][kind].name)

            _prepare_visits(missing, atlas, staged, seed, workers, on_done=commit)
        csv = None
        if part.part is None:
            csv = _commit_manifest(folder, with_prepared_files(manifest, files), manifest)
    return FolderPreparation(len(missing), len(share), csv)


def _commit_manifest(folder: OutputFolder, prepared: Manifest, original: Manifest) -> Path:
    """Write ``prepared`` as the folder's :data:`PREPARED_MANIFEST`: every path (``mask_path``
    too) relative to the folder where inside it, else absolute."""
    base = folder.path.resolve()
    visits = [replace(v, extra={**v.extra, "mask_path": _relative(mask, base)})
              if (mask := original.mask_path(v)) is not None else v for v in prepared]
    with folder.staging() as tmp:
        Manifest(visits).to_csv(tmp / PREPARED_MANIFEST, relative_to=base)
        return folder.commit(tmp / PREPARED_MANIFEST, PREPARED_MANIFEST)


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` (resolved) when inside it, else absolute."""
    resolved = path.resolve()
    return str(resolved.relative_to(base)) if resolved.is_relative_to(base) else str(resolved)
