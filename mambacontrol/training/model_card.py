"""The model card: ``README.md`` in a training run's folder, in the Hugging Face model-card style.

Written by :class:`~mambacontrol.training.runner.TrainingRun` after every stage (and at the end
of every ``train`` call), so a run folder that is shared, or pushed to the Hub as it is, says what
it is: the data it was trained on (manifest, subjects/visits/pairs per split, atlas and grid), the
components and their sizes, the training settings and how far each stage got, the metrics of the
last evaluation when one is known, the intended use, the limitations and the licences.

The card is built from what the folder and the config hold; nothing in it is typed by hand, so it
is rewritten whole each time. The metrics come from ``<run>/evaluation/metrics.json`` (the
``metrics.json`` that ``mambacontrol evaluate --out <run>/evaluation`` writes) or a path given.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open

from mambacontrol._version import __version__
from mambacontrol.atlas import load_atlas
from mambacontrol.data import Manifest
from mambacontrol.errors import MambaControlError
from mambacontrol.io import write_text_atomic
from mambacontrol.training.engine import read_stage_summary
from mambacontrol.training.run_config import RunConfig

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
EVALUATION_METRICS = Path("evaluation") / "metrics.json"
COMPONENTS = ("autoencoder", "graph_encoder", "trajectory_head", "unet", "controlnet")
STAGES = ("autoencoder", "latents", "graph", "unet", "controlnet")
PACKAGE_LICENSE = "Apache-2.0"
TAGS = ["mambacontrol", "medical-imaging", "brain-mri", "alzheimers-disease", "3d",
        "latent-diffusion", "controlnet", "mamba", "graph-neural-network"]
NOT_EVALUATED = "not evaluated yet: run mambacontrol evaluate"
ROLE = {"autoencoder": "3D KL autoencoder (image ↔ latent)",
        "graph_encoder": "anatomy-graph encoder (regional features → node embeddings, tokens)",
        "trajectory_head": "regional volume trajectory head",
        "unet": "denoising UNet (latent change, conditioned on covariates and graph tokens)",
        "controlnet": "Mamba ControlNet (baseline latent, graph map and horizon as the hint)"}


def write_model_card(run_dir: str | os.PathLike, cfg: RunConfig,
                     metrics: str | os.PathLike | None = None) -> Path:
    """Write ``<run_dir>/README.md`` (atomically) and return its path.

    Args:
        run_dir: the training run's folder.
        cfg: the run's resolved config.
        metrics: an evaluation's ``metrics.json``; default ``<run_dir>/evaluation/metrics.json``
            when it exists.
    """
    run = Path(run_dir)
    return write_text_atomic(run / CARD_NAME, render_model_card(run, cfg, metrics))


def render_model_card(run: Path, cfg: RunConfig, metrics: str | os.PathLike | None = None) -> str:
    """The card's text (see :func:`write_model_card`)."""
    atlas = load_atlas(cfg.data.atlas, cfg.data.grid)
    licence = atlas.licence
    non_commercial = any("noncommercial" in v.replace("-", "").replace(" ", "").lower()
                         for v in licence.values())
    data = _data_facts(cfg)
    metrics_path = Path(metrics) if metrics is not None else run / EVALUATION_METRICS
    front = {"library_name": "mambacontrol",
             "license": "other" if non_commercial else PACKAGE_LICENSE.lower()}
    if non_commercial:
        front["license_name"] = "apache-2.0-code-non-commercial-atlas-labels"
    front["tags"] = TAGS + (["synthetic-data"] if data.get("synthetic") else [])
    name = run.resolve().name
    loadable = (run / "model_index.json").is_file()
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {name}: a mambacontrol model", "",
             "Predicts how a brain MRI changes over the coming years in ageing and Alzheimer's "
             "disease: from a baseline T1 scan, age, sex, diagnosis and a horizon in years, a "
             "follow-up scan (the mean of several diffusion samples, with their spread as the "
             "uncertainty) and the change of every atlas region. A 3D latent diffusion model "
             "steered by a Mamba ControlNet and an anatomy graph "
             f"([mambacontrol](https://pypi.org/project/mambacontrol/) {__version__}).", "",
             "## Status", ""]
    lines += _status(run, cfg, loadable)
    lines += ["", "## Data", ""] + _data_lines(data, atlas)
    lines += ["", "## Components", ""] + _component_lines(run)
    lines += ["", "## Training", ""] + _training_lines(run, cfg)
    lines += ["", "## Evaluation", ""] + _metrics_lines(metrics_path)
    lines += ["", "## How to use", "", "```bash",
              f"mambacontrol predict scan.nii.gz --age 72 --sex F --diagnosis MCI --years 1 2 "
              f"--model {name} --out prediction/", "```", "", "```python",
              "from mambacontrol.pipeline.progression import ProgressionPipeline",
              f'pipe = ProgressionPipeline.from_pretrained("{name}")  # or a Hub id "org/name"',
              "```", "",
              "`--model` takes this folder or, once it is pushed to the Hugging Face Hub, its "
              "repository id (`org/name`, found offline in the Hub's cache)."]
    lines += ["", "## Intended use", ""] + _intended_use(data, non_commercial)
    lines += ["", "## Limitations", ""] + _limitations(data, atlas)
    lines += ["", "## Licences", ""] + _licence_lines(atlas, licence, non_commercial)
    return "\n".join(lines) + "\n"


# ---- facts ------------------------------------------------------------------------------------

def _data_facts(cfg: RunConfig) -> dict[str, Any]:
    """Counts per split from the manifest (read without checking the image files)."""
    facts: dict[str, Any] = {"manifest": str(cfg.data.manifest)}
    try:
        manifest = Manifest.from_csv(cfg.data.manifest, check_files=False)
    except (MambaControlError, OSError, ValueError) as exc:
        facts["error"] = " ".join(str(exc).split())[:200]
        return facts
    splits = {}
    order = ("train", "valid", "test")
    for split in sorted({v.split for v in manifest}, key=lambda s: (s not in order, order.index(s)
                                                                   if s in order else 0, s)):
        part = manifest.select(split)
        pairs = part.pairs("all")
        years = [p.years for p in pairs]
        dx: dict[str, int] = {}
        for v in part:
            dx[v.diagnosis] = dx.get(v.diagnosis, 0) + 1
        splits[split] = {"subjects": len(part.subjects()), "visits": len(part), "pairs": len(pairs),
                         "diagnoses": dx,
                         "ages": (min(v.age for v in part), max(v.age for v in part)),
                         "years": (min(years), max(years)) if years else None}
    facts["splits"] = splits
    facts["synthetic"] = any(k.startswith("rate_") for v in manifest for k in v.extra)
    return facts


def _status(run: Path, cfg: RunConfig, loadable: bool) -> list[str]:
    enabled = [s for s in STAGES if not (s == "graph" and not cfg.graph.enabled)
               and not (s == "controlnet" and not cfg.controlnet.enabled)]
    done = [s for s in enabled if read_stage_summary(run, s) is not None]
    left = [s for s in enabled if s not in done]
    out = [f"- stages finished: {', '.join(done) or 'none'}"
           + (f"; still to train: {', '.join(left)}" if left else " (all)")]
    out.append("- loadable by `from_pretrained`: " + (
        "yes (`model_index.json`)" if loadable else
        "not yet (needs the autoencoder and UNet stages: `mambacontrol train all`)"))
    return out


def _data_lines(data: Mapping[str, Any], atlas) -> list[str]:
    synthetic = (" (a synthetic cohort made by `mambacontrol synth`)" if data.get("synthetic")
                 else "")
    out = [f"- manifest: `{data['manifest']}`{synthetic}"]
    if "error" in data:
        out.append(f"- the manifest could not be read when this card was written ({data['error']})")
    else:
        out += ["", "| split | subjects | visits | pairs | diagnoses (visits) | age (years) | "
                "horizon Δt (years) |", "| --- | ---: | ---: | ---: | --- | --- | --- |"]
        for split, s in data["splits"].items():
            dx = ", ".join(f"{k} {n}" for k, n in s["diagnoses"].items())
            years = f"{s['years'][0]:.1f}–{s['years'][1]:.1f}" if s["years"] else "–"
            out.append(f"| {split} | {s['subjects']} | {s['visits']} | {s['pairs']} | {dx} | "
                       f"{s['ages'][0]:.1f}–{s['ages'][1]:.1f} | {years} |")
        out.append("")
    shape = "×".join(str(n) for n in atlas.grid.shape)
    out.append(f"- atlas: `{atlas.id}`, grid `{atlas.grid_name}`: {shape} voxels at "
               f"{atlas.spacing:g} mm (RAS), checksum `{atlas.checksum[:16]}`; scans are "
               "registered to it (affine), brain-extracted and intensity-normalised")
    return out


def _parameters(folder: Path) -> int | None:
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), "pt") as fh:
        return sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())


def _component_lines(run: Path) -> list[str]:
    rows = []
    for name in COMPONENTS:
        folder = run / name
        if not (folder / "config.json").is_file():
            continue
        try:
            cls = json.loads((folder / "config.json").read_text()).get("_class_name", "?")
            count = _parameters(folder)
        except (OSError, ValueError) as exc:
            cls, count = f"unreadable ({' '.join(str(exc).split())[:80]})", None
        size = f"{count:,}" if count is not None else "?"
        rows.append(f"| `{name}/` | {cls} | {size} | {ROLE[name]} |")
    if not rows:
        return ["No component has been trained yet."]
    return ["| folder | class | parameters | role |", "| --- | --- | ---: | --- |", *rows]


def _training_lines(run: Path, cfg: RunConfig) -> list[str]:
    out = [f"- seed {cfg.seed}; engine: mixed precision `{cfg.engine.mixed_precision}`, "
           f"gradient accumulation {cfg.engine.gradient_accumulation_steps}; the whole config is "
           "`config.yaml`", "",
           "| stage | steps (config) | batch | learning rate | trained | final loss |",
           "| --- | ---: | ---: | ---: | --- | ---: |"]
    trains = {"autoencoder": cfg.autoencoder.train, "graph": cfg.graph.train,
              "unet": cfg.unet.train, "controlnet": cfg.controlnet.train}
    for stage in STAGES:
        t = trains.get(stage)
        summary = read_stage_summary(run, stage)
        unit = "scans encoded" if stage == "latents" else "steps"
        trained = ("–" if summary is None else
                   f"{summary.steps} {unit}, {_minutes(summary.wall_time_s)}")
        loss = "–" if summary is None or t is None or not math.isfinite(summary.final_loss) \
            else f"{summary.final_loss:.4g}"
        if t is None:
            out.append(f"| {stage} | – | – | – | {trained} | {loss} |")
        else:
            out.append(f"| {stage} | {t.steps} | {t.batch_size} | {t.lr:g} | {trained} | {loss} |")
    s = cfg.sampling
    out += ["", f"- sampling defaults: {s.sampler}, {s.num_inference_steps} steps, "
                f"{s.num_samples} samples per horizon, decode `{s.decode}`, guidance "
                f"{s.guidance:g}"
                + (" (" + ", ".join(f"{g} {w:g}" for g, w in s.guidance_groups.items())
                   + ", elsewhere the former)" if s.guidance_groups else "")]
    return out


def _metrics_lines(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{NOT_EVALUATED} (e.g. `mambacontrol evaluate --model <this folder> "
                "--manifest MANIFEST --out <this folder>/evaluation`; the next `mambacontrol "
                "train` call copies its metrics here)."]
    try:
        doc = json.loads(path.read_text())
        summary = doc["summary"]
        keys = list(summary["keys"])[:10]
        stats = doc.get("definitions", {}).get("statistics", {})
        prov = doc.get("provenance", {})
        rows = []
        for m in summary["methods"]:
            overall = summary["overall"][m]
            cells = [_fmt(overall.get(k, {}).get("mean")) for k in keys]
            rows.append(f"| {m} ({summary['method_kinds'].get(m, '?')}) | "
                        f"{summary['n_pairs'].get(m, '?')} | " + " | ".join(cells) + " |")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"The metrics file `{path}` could not be read "
                f"({' '.join(str(exc).split())[:120]}); {NOT_EVALUATED}."]
    heads = [stats.get(k, {}).get("label", k) + (f" ({stats[k]['unit']})"
                                                 if stats.get(k, {}).get("unit") else "")
             for k in keys]
    where = f" on split `{prov['split']}`" if prov.get("split") else ""
    out = [f"From `{path}`{where}" + (f", {prov['created']}" if prov.get("created") else "")
           + ": mean over the pairs (the baselines copy the scan, or extrapolate volumes "
             "linearly; the floor is the measurement's own error).", "",
           "| method | pairs | " + " | ".join(heads) + " |",
           "| --- | ---: | " + " | ".join("---:" for _ in keys) + " |", *rows]
    return out


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return "–"


def _intended_use(data: Mapping[str, Any], non_commercial: bool) -> list[str]:
    trained_on = ("a synthetic cohort (simulated atrophy on the atlas): it predicts the "
                  "simulator's changes, not those of real brains; use it to test pipelines and "
                  "compare methods, not to draw conclusions about real scans"
                  if data.get("synthetic") else f"the scans listed in `{data['manifest']}`")
    return [
        "- **Research only. Not a medical device; not for clinical use,** diagnosis, prognosis "
        "or any decision about a person.",
        f"- Trained on {trained_on}.",
        "- Input: a T1-weighted brain MRI of an adult (the ages and diagnoses of the training "
        "data above), with age, sex and diagnosis (CN, MCI or AD).",
        "- Use: research on disease progression, e.g. simulated follow-ups for cohort studies "
        "or as a baseline for other models, always beside the baselines of `mambacontrol "
        "evaluate`." + (" Non-commercial research only (the atlas labels' licence)."
                        if non_commercial else ""),
    ]


def _limitations(data: Mapping[str, Any], atlas) -> list[str]:
    out = []
    train = (data.get("splits") or {}).get("train")
    if train:
        years = train["years"]
        out.append(f"- It saw ages {train['ages'][0]:.0f}–{train['ages'][1]:.0f} and "
                   + (f"horizons {years[0]:.1f}–{years[1]:.1f} years" if years else "no pairs")
                   + " in training; outside those it extrapolates.")
    out += [
        "- A prediction is the mean of a few diffusion samples: fine detail is smoothed, and "
        "the uncertainty map is the spread of those samples, not a calibrated interval.",
        f"- Everything happens on the atlas grid ({atlas.spacing:g} mm): a scan is registered "
        "to the atlas, and a failed or poor registration gives a poor prediction (it is "
        "refused below a similarity threshold); change smaller than a voxel is resolved only "
        "through the regional volumes.",
        "- Regions come from the atlas labels (propagated, or mapped from a segmentation); "
        "their volumes are only as good as that labelling.",
        "- The cohort's scanners, protocols, population and diagnostic criteria are the only "
        "ones it knows; other data may need retraining or at least re-evaluation.",
    ]
    return out


def _licence_lines(atlas, licence: Mapping[str, str], non_commercial: bool) -> list[str]:
    out = [f"- mambacontrol (the code that made and loads this model): {PACKAGE_LICENSE}."]
    if licence:
        out += [f"- atlas `{atlas.id}`, {part}: {text}." if not text.endswith(".")
                else f"- atlas `{atlas.id}`, {part}: {text}" for part, text in licence.items()]
    else:
        out.append(f"- atlas `{atlas.id}`: its licence is not stated in its atlas.json; ask its "
                   "provider before sharing this model.")
    if non_commercial:
        out.append("- This model was trained with the atlas's labels (the anatomy graph, the "
                   "regions, the label maps of the training scans), so it may be shared and used "
                   "for **non-commercial research only**.")
    return out
