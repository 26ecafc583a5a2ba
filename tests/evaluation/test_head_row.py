"""The trajectory-head row: a model's graph head scored as a volumes-only method beside the model,
so a report shows how much of the head's regional prediction the image carries."""

import csv
import json

import numpy as np
import pytest
import torch

from mambacontrol.cli.main import main
from mambacontrol.data import Manifest
from mambacontrol.evaluation.evaluate import GridScans, _head_rows
from mambacontrol.evaluation.records import TRAJECTORY_HEAD
from mambacontrol.pipeline.progression import ProgressionPipeline


def test_the_head_row_is_the_heads_regional_prediction(tiny_model, tiny_cohort, tmp_path):
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--manifest", str(tiny_cohort), "--model", str(tiny_model),
                 "--out", str(out), "--max-pairs", "1", "--samples", "1", "--steps", "1",
                 "--baselines", "copy", "--no-ceiling"]) == 0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["methods"] == [tiny_model.name, "copy-baseline", TRAJECTORY_HEAD,
                                  "measurement-floor"]
    assert summary["method_kinds"][TRAJECTORY_HEAD] == "head"
    assert "change_ratio" in summary["key_groups"][TRAJECTORY_HEAD]["hippocampus"]
    assert TRAJECTORY_HEAD in (out / "report.html").read_text()

    pipe = ProgressionPipeline.from_pretrained(tiny_model)
    manifest = Manifest.from_csv(tiny_cohort)
    pair = manifest.select("test").pairs()[0]
    base = GridScans(manifest, pipe.atlas, seed=0).load(pair.earlier)
    e = pair.earlier
    ratio = pipe.predict(base.image, base.labels, e.age, e.sex, e.diagnosis, pair.years,
                         mask=base.mask, num_samples=1, num_inference_steps=1)[0].node_log_ratio
    assert ratio is not None and np.abs(ratio).max() > 0

    with (out / "regions.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh)
                if r["method"] == TRAJECTORY_HEAD and r["kind"] == "region"]
    assert len(rows) == len(pipe.atlas.regions)
    for r in rows:
        node = pipe.graph.label_to_node[int(r["region"])]
        expected = 100.0 * np.expm1(ratio[node])
        assert float(r["pred_change_pct_mean"]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert r["method_kind"] == "head"

    with (out / "pairs.csv").open() as fh:
        head = next(r for r in csv.DictReader(fh) if r["method"] == TRAJECTORY_HEAD)
    assert head["psnr"] == "" and head["pred_change_pct_hippocampus"] != ""  # volumes only



def test_a_compared_model_gets_a_head_row_only_when_its_graph_or_head_differs(tiny_model):
    main_pipe, same, other = (ProgressionPipeline.from_pretrained(tiny_model) for _ in range(3))
    with torch.no_grad():
        next(other.trajectory_head.parameters()).add_(0.01)
    assert _head_rows({"a": main_pipe, "b": same}) == {"a": TRAJECTORY_HEAD}
    assert _head_rows({"a": main_pipe, "b": same, "c": other}) == {
        "a": TRAJECTORY_HEAD, "c": f"{TRAJECTORY_HEAD}-c"}
    other.trajectory_head = None  # a model without a head has no row
    assert _head_rows({"c": other, "a": main_pipe}) == {"a": f"{TRAJECTORY_HEAD}-a"}
