"""``evaluate`` records each pair as soon as it is scored: a killed run resumes, a record made
under other settings is scored again, and job-array parts merge into one run's outputs."""

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest

from mambacontrol.cli.main import main
from mambacontrol.data import Manifest
from mambacontrol.errors import MambaControlError
from mambacontrol.evaluation import evaluate as evaluation
from mambacontrol.evaluation.evaluate import EvaluationSettings
from mambacontrol.evaluation.pair_records import RECORDS_NAME, model_digest, record_key
from mambacontrol.pipeline import prepare

TABLES = ("pairs.csv", "regions.csv")


def evaluate_args(model, cohort, out, *extra, max_pairs: int | None = 2) -> list[str]:
    return ["evaluate", "--manifest", str(cohort), "--model", str(model), "--out", str(out),
            *([] if max_pairs is None else ["--max-pairs", str(max_pairs)]),
            "--samples", "1", "--steps", "1", "--no-ceiling", *map(str, extra)]


@pytest.fixture
def scored(monkeypatch):
    """The pairs scored in this test (their uids), in order; the pair after ``fail_at``
    pairs raises KeyboardInterrupt (the user's Ctrl-C) when ``fail_at`` is set."""
    calls: list[tuple[str, str]] = []
    real = evaluation._score_pair
    state = {"fail_at": None}

    def counted(pair, *args, **kwargs):
        if state["fail_at"] is not None and len(calls) == state["fail_at"]:
            raise KeyboardInterrupt
        calls.append((pair.earlier.image_uid, pair.later.image_uid))
        return real(pair, *args, **kwargs)

    monkeypatch.setattr(evaluation, "_score_pair", counted)
    return calls, state


@pytest.fixture(scope="module")
def whole(tiny_model, tiny_cohort, tmp_path_factory):
    """One uninterrupted evaluation of two pairs."""
    out = tmp_path_factory.mktemp("whole") / "eval"
    assert main(["-q", *evaluate_args(tiny_model, tiny_cohort, out)]) == 0
    return out


def metrics_without_provenance(folder) -> dict:
    """metrics.json without its provenance (the command line names --out; timings vary)."""
    doc = json.loads((folder / "metrics.json").read_text())
    doc.pop("provenance")
    return doc


def assert_same_outputs(a, b):
    assert metrics_without_provenance(a) == metrics_without_provenance(b)
    for name in TABLES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "report.html").read_text().count("<img") == \
        (b / "report.html").read_text().count("<img")


def assert_same_records(a, b):
    """The same record files: JSON equal but for the seconds spent, arrays byte-equal."""
    names = sorted(p.name for p in (a / RECORDS_NAME).iterdir())
    assert names == sorted(p.name for p in (b / RECORDS_NAME).iterdir())
    for name in names:
        pa, pb = a / RECORDS_NAME / name, b / RECORDS_NAME / name
        if name.endswith(".json"):
            ja, jb = (json.loads(p.read_text()) for p in (pa, pb))
            ja.pop("timings_s"), jb.pop("timings_s")
            assert ja == jb, name
        else:
            assert pa.read_bytes() == pb.read_bytes(), name


def records(folder) -> list:
    return sorted((folder / RECORDS_NAME).glob("*.json"))


def test_a_killed_evaluation_resumes_and_scores_only_the_missing_pair(
        tiny_model, tiny_cohort, whole, scored, tmp_path, caplog):
    calls, state = scored
    out = tmp_path / "eval"
    state["fail_at"] = 1
    assert main(["-q", *evaluate_args(tiny_model, tiny_cohort, out)]) == 130
    assert len(calls) == 1 and len(records(out)) == 1
    assert not any((out / name).exists() for name in evaluation.OUTPUT_NAMES)
    first = json.loads(records(out)[0].read_text())
    assert {r["method"] for r in first["results"]} >= {tiny_model.name, "copy-baseline"}

    state["fail_at"] = None
    caplog.set_level(logging.INFO, logger="mambacontrol")
    assert main(evaluate_args(tiny_model, tiny_cohort, out)) == 0  # the same command, no flag
    assert len(calls) == 2 and calls[1] != calls[0]  # only the second pair scored again
    assert "1 of 2 pairs scored now, 1 reused" in caplog.text
    assert len(records(out)) == 2
    assert_same_outputs(whole, out)


def test_a_record_made_under_other_settings_is_scored_again(tiny_model, tiny_cohort, whole,
                                                            scored, tmp_path):
    calls, _ = scored
    out = tmp_path / "eval"
    shutil.copytree(whole, out)
    assert main(["-q", *evaluate_args(tiny_model, tiny_cohort, out)]) == 0
    assert calls == []  # everything reused: nothing scored, the same outputs
    assert_same_outputs(whole, out)

    keys = {p.name: json.loads(p.read_text())["key"] for p in records(out)}
    assert main(["-q", *evaluate_args(tiny_model, tiny_cohort, out, "--seed", "1")]) == 0
    assert len(calls) == 2
    assert metrics_without_provenance(out)["settings"]["seed"] == "1"
    new_keys = {p.name: json.loads(p.read_text())["key"] for p in records(out)}
    assert new_keys.keys() == keys.keys() and all(new_keys[k] != keys[k] for k in keys)


def test_every_setting_that_decides_a_score_is_in_the_record_key(tiny_model, tiny_cohort):
    manifest = Manifest.from_csv(tiny_cohort)
    pair, other = manifest.select("test").pairs()[:2]
    names = evaluation.method_names([tiny_model])
    run = evaluation._run_identity(EvaluationSettings(), names, None, True)
    assert run["models"] == [[tiny_model.name, model_digest(tiny_model)]]
    key = record_key(run, pair, False)
    assert record_key(dict(run), pair, False) == key  # the same run: the same key
    changed = [EvaluationSettings(num_samples=2), EvaluationSettings(num_inference_steps=3),
               EvaluationSettings(sampler="ddim"), EvaluationSettings(seed=1),
               EvaluationSettings(baselines=("copy",)), EvaluationSettings(ceiling=False),
               EvaluationSettings(split="val"), EvaluationSettings(pairs="last"),
               EvaluationSettings(guidance=1.0)]
    keys = {record_key(evaluation._run_identity(s, names, None, True), pair, False)
            for s in changed}
    keys |= {record_key(evaluation._run_identity(EvaluationSettings(), names, None, False), pair,
                        False),
             record_key({**run, "models": [[tiny_model.name, "0" * 64]]}, pair, False),
             record_key({**run, "linear": {"rates": 1}}, pair, False),
             record_key(run, other, False), record_key(run, pair, True)}
    assert key not in keys and len(keys) == len(changed) + 5


def test_a_damaged_record_is_scored_again(tiny_model, tiny_cohort, whole, scored, tmp_path):
    calls, _ = scored
    out = tmp_path / "eval"
    shutil.copytree(whole, out)
    panels = sorted((out / RECORDS_NAME).glob("*.npz"))
    assert panels  # the report's slice panels are recorded as arrays
    with np.load(panels[0], allow_pickle=False) as arrays:
        assert {"baseline", "followup", "prediction", "mask"} <= set(arrays.files)
    panels[0].write_bytes(b"not the arrays")
    assert main(["-q", *evaluate_args(tiny_model, tiny_cohort, out)]) == 0
    assert len(calls) == 1
    assert_same_outputs(whole, out)
    assert_same_records(whole, out)  # the arrays written again, byte for byte


def test_two_parts_then_a_merging_run_equal_one_run(tiny_model, tiny_cohort, whole, scored,
                                                    tmp_path, capsys):
    calls, _ = scored
    out = tmp_path / "eval"
    for part in (0, 1):
        args = evaluate_args(tiny_model, tiny_cohort, out, "--num-parts", 2, "--part-id", part)
        assert main(["-q", *args]) == 0
        assert len(calls) == part + 1 and len(records(out)) == part + 1
        assert f"part {part} of 2: 1 pairs recorded" in capsys.readouterr().out
    assert not any((out / name).exists() for name in evaluation.OUTPUT_NAMES)
    assert main(["-q", *evaluate_args(tiny_model, tiny_cohort, out)]) == 0
    assert len(calls) == 2  # the merging run scored nothing
    assert_same_outputs(whole, out)
    assert_same_records(whole, out)
    assert not list(out.glob(".mambacontrol-output.*.json"))  # the parts' side markers folded
    assert RECORDS_NAME in json.loads((out / ".mambacontrol-output.json").read_text())["entries"]


@pytest.mark.parametrize("extra, message", [
    (["--num-parts", "2", "--part-id", "2"], "--part-id 2 is not one of 0 to 1"),
    (["--num-parts", "2"], "--num-parts 2 needs --part-id"),
    (["--num-parts", "0"], "--num-parts 0 must be a whole number ≥ 1"),
])
def test_bad_parts_are_refused_in_one_line(tiny_model, tiny_cohort, tmp_path, capsys, extra,
                                           message):
    out = tmp_path / "eval"
    assert main(["-q", *evaluate_args(tiny_model, tiny_cohort, out, *extra)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


@pytest.mark.parametrize("parts", [(), ("--num-parts", 2, "--part-id", 1)])
def test_a_part_prepares_only_the_scans_it_reads(tiny_model, tiny_cohort, tmp_path, monkeypatch,
                                                 capsys, parts):
    """The two pairs' visits have no segmentation (labels to propagate): a run without parts
    prepares all of them, part 1 of 2 only its pair's (stopped before any registration)."""
    manifest = Manifest.from_csv(tiny_cohort)
    pairs = manifest.select("test").pairs()[:2]
    strip = {v.image_uid for p in pairs for v in (p.earlier, p.later)}
    visits = [replace(v, segm_path=None if v.image_uid in strip else v.segm_path,
                      extra={**v.extra, "mask_path": str(manifest.mask_path(v))})
              for v in manifest]
    csv = Manifest(visits, manifest.path).to_csv(tmp_path / "manifest.csv")
    asked: list[set[str]] = []

    def stop(visits, *args, **kwargs):
        asked.append({v.image_uid for v in visits})
        raise MambaControlError("stopped before preparing")

    monkeypatch.setattr(prepare, "_prepare_visits", stop)
    assert main(["-q", *evaluate_args(tiny_model, csv, tmp_path / "eval", *parts)]) == 2
    assert "stopped before preparing" in capsys.readouterr().err
    expected = strip if not parts else {pairs[1].earlier.image_uid, pairs[1].later.image_uid}
    assert asked == [expected]
    assert len(expected) == (3 if not parts else 2)  # the pairs share their baseline
