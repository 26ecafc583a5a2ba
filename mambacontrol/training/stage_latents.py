"""Stage ``latents``: encode every scan of the manifest once and cache the latents."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.pipeline.shards import process_state
from mambacontrol.training.data import RunData, weights_hash
from mambacontrol.training.engine import StageSummary

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_latents(data: RunData, out: Path, device: str | torch.device = "cpu") -> StageSummary:
    """Encode every visit (all splits) with ``<out>/autoencoder``; visits already cached with this
    autoencoder are skipped, so an interrupted stage resumes where it stopped."""
    state = process_state()
    if not state.is_main_process:  # one process encodes; the others wait for the cache
        state.wait_for_everyone()
        return StageSummary("latents", 0, 0.0, 0.0, 0.0)
    ae = Autoencoder.load(out / "autoencoder", device)
    ae_hash = weights_hash(out / "autoencoder")
    visits = data.manifest.visits
    todo = [v for v in visits if not data.has_latent(v, ae_hash)]
    start = time.perf_counter()
    for v in tqdm(todo, desc="latents", disable=None):
        x = torch.from_numpy(data.prepared(v).image)[None, None].to(device)
        data.save_latent(v, ae.encode(x)[0], ae_hash)
    wall = time.perf_counter() - start
    log.info("encoded %d scans (%d already cached) in %.1f s", len(todo),
             len(visits) - len(todo), wall)
    state.wait_for_everyone()
    return StageSummary("latents", len(todo), wall, len(todo) / wall if wall > 0 else 0.0, 0.0)
