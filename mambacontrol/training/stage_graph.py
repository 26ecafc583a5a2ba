"""Stage ``graph``: the anatomy-graph encoder and the regional trajectory head.

Trained together on the regional volume change of the training pairs
(:func:`~mambacontrol.training.trajectory.train_trajectory`, on the engine's ``Trainer``; the
truth comes from the manifest's ``vol_r<label>`` columns when present). With a ``valid`` split
the state with the lowest validation loss is kept. The stage takes seconds to minutes, so it is
not checkpointed: an interrupted run repeats it. Under DDP one process trains it, the others wait.
"""

from __future__ import annotations

import time
from pathlib import Path

from mambacontrol.graph.encoder import GraphEncoder
from mambacontrol.pipeline.shards import process_state
from mambacontrol.training.config import arguments_for
from mambacontrol.training.data import RunData
from mambacontrol.training.engine import StageSummary
from mambacontrol.training.run_config import RunConfig
from mambacontrol.training.trajectory import TrajectoryConfig, train_trajectory

TUNED_MARKER = "trained_with_controlnet.json"
"""Written into ``graph_encoder/`` by a ControlNet stage that trained the encoder further
(``controlnet.train.graph_lr``); the graph stage removes it when it saves a fresh encoder."""


def graph_encoder_arch(cfg: RunConfig) -> dict:
    """The GraphEncoder's architecture arguments: the ``graph.model`` settings that are its
    keyword arguments."""
    return arguments_for(GraphEncoder, cfg.graph.model)


def train_graph(cfg: RunConfig, data: RunData, out: Path, resume: bool,
                config_dict: dict) -> StageSummary:
    """Train and save ``<out>/graph_encoder`` and ``<out>/trajectory_head``."""
    t = cfg.graph.train
    config = TrajectoryConfig.from_stage(cfg.graph, encoder=graph_encoder_arch(cfg))
    state = process_state()
    if not state.is_main_process:  # small: one process trains it, the others wait
        state.wait_for_everyone()
        return StageSummary("graph", t.steps, 0.0, 0.0, float("nan"))
    start = time.perf_counter()
    result = train_trajectory(data.manifest, data.atlas, config, steps=t.steps, seed=cfg.seed,
                              cache_dir=out / "cache" / "features")
    result.model.encoder.save(out / "graph_encoder")
    (out / "graph_encoder" / TUNED_MARKER).unlink(missing_ok=True)
    result.model.head.save(out / "trajectory_head")
    state.wait_for_everyone()
    wall = time.perf_counter() - start
    last = [h for h in result.history if "train_loss" in h]
    final = last[-1]["train_loss"] if last else float("nan")
    samples = t.steps * min(t.batch_size, len(result.train))
    return StageSummary("graph", t.steps, wall, samples / wall, final)
