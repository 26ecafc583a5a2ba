"""The model card README.md that training writes into the run folder."""

import json

import yaml

from mambacontrol.data import Manifest
from mambacontrol.models.unet import DenoisingUNet
from mambacontrol.training.model_card import NOT_EVALUATED, render_model_card
from mambacontrol.training.runner import resolve_config


def split_card(text):
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_training_writes_a_model_card(tiny_model, tiny_cohort):
    front, body = split_card((tiny_model / "README.md").read_text())
    assert front["library_name"] == "mambacontrol"
    assert front["license"] == "other" and "non-commercial" in front["license_name"]
    assert {"mambacontrol", "brain-mri", "synthetic-data"} <= set(front["tags"])
    assert f"- manifest: `{tiny_cohort}` (a synthetic cohort" in body
    manifest = Manifest.from_csv(tiny_cohort, check_files=False)
    for split in ("train", "valid", "test"):
        part = manifest.select(split)
        row = f"| {split} | {len(part.subjects())} | {len(part)} | {len(part.pairs())} |"
        assert row in body
    assert "atlas: `icbm152-2009a-nmm`, grid `4mm`: 48×56×48 voxels at 4 mm" in body
    unet = DenoisingUNet.load(tiny_model / "unet")
    params = sum(p.numel() for p in unet.parameters())
    assert f"| `unet/` | DenoisingUNet | {params:,} |" in body
    assert "| controlnet | 3 | 2 | 0.001 | 3 steps, " in body
    assert f"| latents | – | – | – | {len(manifest)} scans encoded, " in body
    assert "- stages finished: autoencoder, latents, graph, unet, controlnet (all)" in body
    assert NOT_EVALUATED in body
    assert "not for clinical use" in body and "Apache-2.0" in body and "(CC BY-NC)" in body
    assert "**non-commercial research only**" in body


def test_model_card_quotes_the_last_evaluation(tiny_model, tiny_cohort, tiny_run_config, tmp_path):
    metrics = tmp_path / "metrics.json"
    mean = {"mean": 0.0123, "sd": 0.001, "n": 2}
    metrics.write_text(json.dumps({
        "definitions": {"statistics": {"mae": {"label": "MAE", "unit": ""},
                                       "vol_err_hippocampus": {"label": "hippocampus error",
                                                               "unit": "%"}}},
        "summary": {"methods": ["tiny", "copy-baseline"],
                    "method_kinds": {"tiny": "model", "copy-baseline": "baseline"},
                    "keys": ["mae", "vol_err_hippocampus"],
                    "n_pairs": {"tiny": 2, "copy-baseline": 2},
                    "overall": {"tiny": {"mae": mean, "vol_err_hippocampus": {"mean": 1.5}},
                                "copy-baseline": {"mae": {"mean": 0.02},
                                                  "vol_err_hippocampus": {"mean": None}}}},
        "provenance": {"split": "test", "created": "2026-11-29 12:00:00 UTC"}}))
    cfg = resolve_config(tiny_run_config, [], manifest=tiny_cohort)
    _, body = split_card(render_model_card(tiny_model, cfg, metrics))
    assert f"From `{metrics}` on split `test`" in body
    assert "| method | pairs | MAE | hippocampus error (%) |" in body
    assert "| tiny (model) | 2 | 0.0123 | 1.5 |" in body
    assert "| copy-baseline (baseline) | 2 | 0.02 | – |" in body
    assert NOT_EVALUATED not in body
    metrics.write_text("{not json")
    _, body = split_card(render_model_card(tiny_model, cfg, metrics))
    assert "could not be read" in body and NOT_EVALUATED in body
