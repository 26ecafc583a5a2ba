"""A training run: its directory, its resolved config, and the stages in order.

Run directory::

    <out>/config.yaml                 the resolved config (a later call must match it)
    <out>/model_index.json            written once the autoencoder and UNet exist, so
                                      ProgressionPipeline.from_pretrained(<out>) loads the model
    <out>/autoencoder/ graph_encoder/ trajectory_head/ unet/ controlnet/    components
    <out>/cache/prepared/ cache/latents/ cache/features/                    caches
    <out>/checkpoints/<stage>/ logs/<stage>/                               engine (see engine.py)
    <out>/stages/<stage>.json         the stage's summary, written once its models are saved:
                                      what marks it finished for ``train all``
    <out>/README.md                   the model card (model_card.py), rewritten after every stage

The folder is claimed for ``train`` (:class:`mambacontrol.io.OutputFolder`): a new or empty
folder, or an earlier run's, which continues; a folder of anything else is refused, so a user's
folder that happens to be named like a stage is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from mambacontrol.atlas import load_atlas
from mambacontrol.errors import ConfigError, ModelError
from mambacontrol.graph import GraphEncoder, TrajectoryHead
from mambacontrol.io import OutputFolder, write_json, write_text_atomic
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.models.controlnet import MambaControlNet
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.pipeline.progression import INDEX_NAME, ProgressionPipeline
from mambacontrol.pipeline.shards import process_state
from mambacontrol.training.config import (
    config_differences,
    config_to_dict,
    dump_config,
    load_config,
)
from mambacontrol.training.configs import resolve_config_path
from mambacontrol.training.data import RunData
from mambacontrol.training.engine import StageSummary, read_stage_summary, write_stage_summary
from mambacontrol.training.model_card import write_model_card
from mambacontrol.training.run_config import RunConfig
from mambacontrol.training.stage_autoencoder import train_autoencoder
from mambacontrol.training.stage_diffusion import noise_schedule, train_controlnet, train_unet
from mambacontrol.training.stage_graph import train_graph
from mambacontrol.training.stage_latents import encode_latents
from mambacontrol.training.validate import validate_run_config

log = logging.getLogger(__name__)

STAGES = ("autoencoder", "latents", "graph", "unet", "controlnet")
LOGGING_ONLY = ("engine.trackers",)
"""Settings that change where a run logs, not what it computes: they may change when a run
continues, and are left out of the config recorded in checkpoints."""
REQUIRES = {"latents": ("autoencoder",), "graph": (), "unet": ("latents",),
            "controlnet": ("unet",), "autoencoder": ()}
COMMON_SECTIONS = ("seed", "data", "engine")
STAGE_SECTIONS = {"autoencoder": ("autoencoder",), "graph": ("graph",),
                  "unet": ("autoencoder", "graph", "diffusion", "unet"),
                  "controlnet": ("autoencoder", "graph", "diffusion", "unet", "controlnet")}
"""The config sections besides ``COMMON_SECTIONS`` that decide a stage's result: its own and
those of the stages it builds on. A stage's checkpoints record these only, so a setting of a
later stage (or a default added to one by a newer version) does not stop an earlier stage from
resuming; ``sampling`` decides no training stage."""


def stage_config(cfg: RunConfig, stage: str) -> dict:
    """The part of ``cfg`` recorded in ``stage``'s checkpoints (and its trackers' hyperparameters):
    ``COMMON_SECTIONS`` and ``STAGE_SECTIONS[stage]`` as plain values, without the
    ``LOGGING_ONLY`` settings."""
    whole = config_to_dict(cfg)
    out = {k: whole[k] for k in COMMON_SECTIONS + STAGE_SECTIONS[stage]}
    for key in LOGGING_ONLY:  # checkpoints record what decides the results
        section, name = key.split(".")
        out[section].pop(name, None)
    return out


def resolve_config(config_path: str | Path, overrides: list[str] | None = None,
                   manifest: str | None = None) -> RunConfig:
    """Load a run config (a YAML path or a bundled config's name, see
    :func:`~mambacontrol.training.configs.resolve_config_path`); ``manifest`` (e.g. from the
    demo) replaces ``data.manifest``."""
    config_path = resolve_config_path(config_path)
    extra = list(overrides or [])
    if manifest is not None:
        extra.append(f"data.manifest={json.dumps(str(manifest))}")
    cfg = load_config(RunConfig, config_path, overrides=extra)
    if cfg.data.manifest is None:
        raise ConfigError(f"{config_path}: data.manifest is not set; add `data.manifest=PATH` to "
                          "the command or the config")
    return cfg


def _is_run_folder(path: Path) -> bool:
    """A run folder written before output markers existed (or copied): it has the run's config,
    stage records or model index."""
    return any((path / name).exists() for name in ("config.yaml", "stages", INDEX_NAME))


class TrainingRun:
    """Runs stages into one output folder.

    Args:
        cfg: the resolved config.
        out: the run directory.
        metrics: an evaluation's ``metrics.json`` for the model card (default:
            ``<out>/evaluation/metrics.json`` when it exists).
        prepare_workers: processes preparing the scans that are not on the atlas grid
            (:class:`~mambacontrol.training.data.RunData`).
    """

    def __init__(self, cfg: RunConfig, out: str | Path, metrics: str | Path | None = None,
                 prepare_workers: int = 1):
        self.cfg = cfg
        self.out = Path(out)
        self.metrics = metrics
        self.prepare_workers = prepare_workers
        self._data = None

    @property
    def data(self):
        if self._data is None:
            self._data = RunData(self.cfg.data.manifest, self.cfg.data.atlas, self.cfg.data.grid,
                                 self.out / "cache", self.cfg.seed, self.prepare_workers)
        return self._data

    def enabled(self, stage: str) -> bool:
        if stage == "graph":
            return self.cfg.graph.enabled
        if stage == "controlnet":
            return self.cfg.controlnet.enabled
        return True

    def finished(self, stage: str) -> StageSummary | None:
        return read_stage_summary(self.out, stage)

    def record_config(self) -> None:
        """Write ``config.yaml``, or check that the one already there is the same."""
        state = process_state()
        if not state.is_main_process:
            state.wait_for_everyone()
            return
        path = self.out / "config.yaml"
        if path.is_file():
            saved = load_config(RunConfig, path)
            every = config_differences(saved, self.cfg)
            diff = [d for d in every if d.split(":", 1)[0] not in LOGGING_ONLY]
            if diff:
                raise ConfigError(f"{self.out} holds a run with another config "
                                  f"({'; '.join(diff[:4])}); use another --out, or the same "
                                  "config to resume")
            if every:  # only where it logs changed: record the config this call runs with
                write_text_atomic(path, dump_config(self.cfg))
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, dump_config(self.cfg))
        state.wait_for_everyone()

    def run(self, stage: str, resume: bool = False) -> list[StageSummary]:
        """Run one stage, or ``all`` (in order, skipping finished and disabled ones).

        Raises:
            ConfigError: unknown stage, a disabled stage asked for, or a stage whose inputs
                (earlier stages) are missing.
        """
        if stage != "all" and stage not in STAGES:
            raise ConfigError(f"stage '{stage}' is not one of {', '.join(STAGES)}, all")
        if stage != "all" and not self.enabled(stage):
            raise ConfigError(f"stage '{stage}' is switched off in this config "
                              f"({stage}.enabled: false)")
        validate_run_config(self.cfg)  # every stage's settings, before the first one runs
        main = process_state().is_main_process
        folder = (OutputFolder.claim(self.out, "train", inputs=[self.cfg.data.manifest],
                                     resume=True, earlier_run=_is_run_folder)
                  if main else contextlib.nullcontext())
        with folder:
            try:
                return self._run_stages(stage, resume)
            finally:
                if main:
                    folder.record_present()

    def _run_stages(self, stage: str, resume: bool) -> list[StageSummary]:
        self.record_config()
        todo = [s for s in STAGES if self.enabled(s)] if stage == "all" else [stage]
        done = []
        for s in todo:
            if stage == "all" and self.finished(s) is not None:
                log.info("%s: already finished, skipped", s)
                continue
            for need in self.requirements(s):
                if self.finished(need) is None:
                    raise ConfigError(f"stage '{s}' needs stage '{need}' first: "
                                      f"mambacontrol train {need} --config ... --out {self.out}")
            summary = self._run_stage(s, resume)
            state = process_state()
            if state.is_main_process:  # one process writes; the others wait for it
                # Written only now that the stage's models are saved: this file is what marks
                # the stage finished for `train all`.
                write_stage_summary(self.out, summary)
                self.write_index()
                self.write_card()
            state.wait_for_everyone()
            done.append(summary)
        if not done and process_state().is_main_process:
            self.write_card()  # nothing trained (all finished): the card still gets new metrics
        return done

    def requirements(self, stage: str) -> tuple[str, ...]:
        """The stages whose outputs ``stage`` reads."""
        graph = ("graph",) if stage in ("unet", "controlnet") and self.cfg.graph.enabled else ()
        return REQUIRES[stage] + graph

    def write_card(self) -> Path:
        """Write the model card ``README.md`` (see :mod:`~mambacontrol.training.model_card`)."""
        return write_model_card(self.out, self.cfg, self.metrics)

    def _run_stage(self, stage: str, resume: bool) -> StageSummary:
        if stage == "latents":
            return encode_latents(self.data, self.out)
        cfg_dict = stage_config(self.cfg, stage)
        if stage == "autoencoder":
            return train_autoencoder(self.cfg, self.data, self.out, resume, cfg_dict)
        if stage == "graph":
            return train_graph(self.cfg, self.data, self.out, resume, cfg_dict)
        fn = train_unet if stage == "unet" else train_controlnet
        return fn(self.cfg, self.data, self.out, resume, cfg_dict)

    def write_index(self) -> Path | None:
        """Write ``model_index.json`` from the components present (needs autoencoder and UNet)."""
        if not (self.out / "autoencoder").is_dir() or not (self.out / "unet").is_dir():
            return None
        parts = {}
        if self.cfg.graph.enabled and (self.out / "graph_encoder").is_dir():
            parts["graph_encoder"] = GraphEncoder.load(self.out / "graph_encoder")
            if (self.out / "trajectory_head").is_dir():
                parts["trajectory_head"] = TrajectoryHead.load(self.out / "trajectory_head")
        if self.cfg.controlnet.enabled and self.finished("controlnet") is not None:
            parts["controlnet"] = MambaControlNet.load(self.out / "controlnet")
        try:
            pipe = ProgressionPipeline(
                Autoencoder.load(self.out / "autoencoder"), DenoisingUNet.load(self.out / "unet"),
                noise_schedule(self.cfg), load_atlas(self.cfg.data.atlas, self.cfg.data.grid),
                sampling=self.cfg.sampling, **parts)
        except ModelError as exc:
            raise ModelError(f"{self.out}: the trained components do not fit together "
                             f"({exc})") from None
        return write_json(self.out / INDEX_NAME, pipe.index())
