"""Training data: the run's manifest, scans prepared on the atlas grid, cached latents, pairs.

Scans not on the atlas grid are prepared once, by the main process
(:func:`~mambacontrol.pipeline.prepare.prepare_manifest`: registration, labels) and latents
encoded once (the ``latents`` stage) into ``<run>/cache/latents/<image_uid>.safetensors``, tagged
with the autoencoder's weights hash so a retrained autoencoder invalidates them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mambacontrol.atlas import Atlas, load_atlas
from mambacontrol.data import Manifest, Visit, VisitPair
from mambacontrol.data.covariates import CovariateNorm, encode_covariates
from mambacontrol.errors import ConfigError, ModelError
from mambacontrol.graph.pairs import has_volume_columns, node_log_ratios, visit_label_volumes
from mambacontrol.io import atomic_path, unique_names
from mambacontrol.nn.component import WEIGHTS_NAME
from mambacontrol.pipeline.conditioning import graph_scan_inputs
from mambacontrol.pipeline.prepare import PreparedScan, load_on_grid, prepare_manifest
from mambacontrol.pipeline.shards import Shard


def weights_hash(component_dir: Path) -> str:
    """SHA-256 (16 hex) of a saved component's weights file."""
    return hashlib.sha256((Path(component_dir) / WEIGHTS_NAME).read_bytes()).hexdigest()[:16]


class RunData:
    """The scans of a training run, all on the atlas grid.

    Args:
        manifest_path: the manifest CSV (scans anywhere; those not on the grid are prepared once
            into ``<cache_dir>/prepared``).
        atlas_name, grid: the atlas grid the model works on.
        cache_dir: ``<run>/cache``.
        seed: registration seed for scans that need preparing.
        workers: processes preparing scans side by side (``train --workers``; not the data
            loaders' ``engine.num_workers``). Under ``accelerate launch`` only the main process
            prepares; the others wait, then read the prepared files.
    """

    def __init__(self, manifest_path: str | Path, atlas_name: str, grid: str, cache_dir: str | Path,
                 seed: int = 0, workers: int = 1):
        self.atlas: Atlas = load_atlas(atlas_name, grid)
        self.cache_dir = Path(cache_dir)
        self.manifest = prepare_manifest(Manifest.from_csv(manifest_path), self.atlas,
                                         self.cache_dir / "prepared", seed=seed, workers=workers,
                                         shard=Shard.current())
        if not self.manifest.select("train").visits:
            raise ConfigError(f"{manifest_path}: no visit is in the train split; a run needs "
                              f"training data")
        self._names = unique_names(((f"row {i + 1}", v.image_uid)
                                    for i, v in enumerate(self.manifest)), "image_uid")

    def prepared(self, visit: Visit) -> PreparedScan:
        """The visit's image, labels and mask on the atlas grid."""
        return load_on_grid(visit.image_path, visit.segm_path, self.manifest.mask_path(visit),
                            self.atlas)

    @cached_property
    def train_visits(self) -> list[Visit]:
        return self.manifest.select("train").visits

    def pairs(self, split: str = "train") -> list[VisitPair]:
        return self.manifest.select(split).pairs()

    # ---- latents --------------------------------------------------------------------------
    def latent_path(self, visit: Visit) -> Path:
        return self.cache_dir / "latents" / f"{self._names[visit.image_uid]}.safetensors"

    def has_latent(self, visit: Visit, ae_hash: str) -> bool:
        path = self.latent_path(visit)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as fh:
                return (fh.metadata() or {}).get("autoencoder") == ae_hash
        except (SafetensorError, OSError):
            return False

    def save_latent(self, visit: Visit, z: torch.Tensor, ae_hash: str) -> None:
        with atomic_path(self.latent_path(visit)) as tmp:
            save_file({"z": z.detach().cpu().contiguous()}, str(tmp),
                      metadata={"autoencoder": ae_hash, "image_uid": visit.image_uid})

    def load_latent(self, visit: Visit, ae_hash: str) -> torch.Tensor:
        """(C_z, x, y, z) cached latent.

        Raises:
            ModelError: when it is missing or was made by another autoencoder.
        """
        if not self.has_latent(visit, ae_hash):
            raise ModelError(f"no latent of {visit.image_uid} from this autoencoder in "
                             f"{self.cache_dir / 'latents'}; run the `latents` stage first")
        with safe_open(str(self.latent_path(visit)), framework="pt") as fh:
            return fh.get_tensor("z")


@dataclass(eq=False)
class PairItem:
    """One training pair's tensors (what the diffusion stages batch)."""

    z_base: torch.Tensor  # (C_z, x, y, z)
    z_follow: torch.Tensor  # (C_z, x, y, z)
    covariates: torch.Tensor  # (6,)
    years: torch.Tensor  # ()
    features: torch.Tensor | None = None  # (R, F)
    assignment: torch.Tensor | None = None  # GraphScanInputs.assignment
    log_ratio: torch.Tensor | None = None  # (R,) true node log volume ratio, later / earlier
    log_ratio_mask: torch.Tensor | None = None  # (R,) 1 where the node is in both visits

    def as_dict(self) -> dict[str, torch.Tensor]:
        d = {"z_base": self.z_base, "z_follow": self.z_follow, "covariates": self.covariates,
             "years": self.years}
        if self.features is not None:
            d["features"] = self.features
            d["assignment"] = self.assignment
            d["log_ratio"] = self.log_ratio
            d["log_ratio_mask"] = self.log_ratio_mask
        return d


def pair_items(data: RunData, pairs: list[VisitPair], ae_hash: str, norm: CovariateNorm,
               graph=None, factor: int = 1,
               painting: str = "soft") -> list[dict[str, torch.Tensor]]:
    """Tensors of every pair: cached latents, covariates at the earlier visit, and (with a graph)
    the earlier scan's node features and latent-grid node assignment (``painting``: see
    :func:`~mambacontrol.pipeline.conditioning.graph_scan_inputs`) and the pair's true node log
    volume ratio (from the manifest's ``vol_r<label>`` columns, else label-voxel counts, as the
    trajectory head's targets: :func:`~mambacontrol.graph.pairs.build_pairs`; 0 for a node
    absent from either visit, whose ``log_ratio_mask`` is 0)."""
    latents: dict[str, torch.Tensor] = {}
    graph_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    label_ids = data.atlas.label_ids
    from_columns = graph is not None and has_volume_columns(data.manifest, label_ids)

    def log_ratio(p: VisitPair) -> tuple[torch.Tensor, torch.Tensor]:
        earlier, later = (visit_label_volumes(v, label_ids, from_columns)[None]
                          for v in (p.earlier, p.later))
        ratio, mask = node_log_ratios(graph, earlier, later, label_ids)
        return (torch.from_numpy(ratio[0].astype(np.float32)),
                torch.from_numpy(np.asarray(mask[0], dtype=np.float32)))

    def latent(v: Visit) -> torch.Tensor:
        if v.image_uid not in latents:
            latents[v.image_uid] = data.load_latent(v, ae_hash)
        return latents[v.image_uid]

    items = []
    for p in pairs:
        a, b = p.earlier, p.later
        cov = encode_covariates(a.age, p.years, a.sex, a.diagnosis, norm)[0]
        item = PairItem(latent(a), latent(b), cov, torch.tensor(float(p.years)))
        if graph is not None:
            if a.image_uid not in graph_inputs:
                scan = data.prepared(a)
                g = graph_scan_inputs(scan.image, scan.labels, graph, factor, painting)
                graph_inputs[a.image_uid] = (g.features, g.assignment)
            item.features, item.assignment = graph_inputs[a.image_uid]
            item.log_ratio, item.log_ratio_mask = log_ratio(p)
        items.append(item.as_dict())
    return items
