import dataclasses
from html.parser import HTMLParser

from mambacontrol.evaluation import (
    COPY_BASELINE,
    MEASUREMENT_FLOOR,
    PairInfo,
    PairResult,
    VolumeChange,
    collect_provenance,
    render_report,
    summarize,
    write_report,
)
from mambacontrol.evaluation.report import verdict
from tests.evaluation.fabricate import REGION_NAMES, build_tiny_run

HOSTILE = ['<script>alert(1)</script>', '"><img src=x onerror=alert(1)>']


class PageParser(HTMLParser):
    """Collects every tag's attributes, and the cells of the first table."""

    def __init__(self):
        super().__init__()
        self.tags, self.rows = [], []
        self._tables = 0
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._tables += 1
        if self._tables == 1 and tag == "tr":
            self.rows.append([])
        if self._tables == 1 and tag in ("td", "th"):
            self._cell = {"class": attrs.get("class", ""), "text": ""}
            self.rows[-1].append(self._cell)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None
        if tag == "table":
            self._tables += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def parse(html):
    p = PageParser()
    p.feed(html)
    return p


def render(run, **kwargs):
    prov = collect_provenance(command=["mambacontrol", "evaluate", "--out", "report/"],
                              models={"model": "runs/model"}, manifest="test.csv", split="test")
    return render_report(run.summary, run.results, provenance=prov, panels=run.panels,
                         region_names=REGION_NAMES, linear_rates=run.rates,
                         settings={"change threshold τ": 0.05}, **kwargs)


def test_report_is_self_contained_and_marks_the_best(tmp_path, tiny_run):
    path = write_report(tmp_path / "report.html", render(tiny_run))
    html = path.read_text()
    page = parse(html)
    links = [(t, a.get("src") or a.get("href")) for t, a in page.tags
             if a.get("src") or a.get("href")]
    assert links and all(v.startswith(("data:image/png;base64,", "#")) for _, v in links)
    assert sum(t == "img" for t, _ in page.tags) == 3 + 2  # three charts, two slice panels
    assert not any(t in ("script", "link", "iframe") for t, _ in page.tags)
    sections, header, *rows = page.rows
    assert [c["text"] for c in sections[2:]] == [
        "Whole image", "Change", "Regional volume change error (% of baseline volume)"]
    columns = ["method", "pairs"] + [c["text"].strip(" ↑↓") for c in header]
    assert columns[:5] == ["method", "pairs", "MAE", "MSE", "PSNR (dB)"]
    assert columns[-2:] == ["hippocampus", "lateral ventricles"]
    by_method = {r[0]["text"].split(" (")[0].strip(): r for r in rows}
    assert set(by_method) == {"model", COPY_BASELINE, "linear-extrapolation", MEASUREMENT_FLOOR}
    change_dice = columns.index("Change Dice")
    # the model reproduces 80 % of the change; copying predicts none: the model is best
    assert "best" in by_method["model"][change_dice]["class"]
    assert "best" not in by_method[COPY_BASELINE][change_dice]["class"]
    # the floor is never ranked, even where its error is the smallest
    assert not any("best" in c["class"] for c in by_method[MEASUREMENT_FLOOR])
    assert "Measurement floor: truth measured by registration vs exact truth" in html
    assert "beats copying the baseline on every change metric" in html
    assert "Against the linear extrapolation of population rates it is better in" in html
    assert "mambacontrol evaluate --out report/" in html and "monai" in html


def test_report_says_when_the_model_does_not_beat_copying():
    run = build_tiny_run(model_skill=-0.5)  # predicts the change with the wrong sign
    html = render(run)
    assert "does NOT beat copying the baseline" in html
    assert "has not learned progression, whatever its PSNR says" in html


def test_the_report_says_when_the_linear_extrapolation_is_not_read_with_the_models_ruler(
        tiny_run):
    caveat = "not read with the models' ruler"
    assert not tiny_run.rates.measured and caveat in render(tiny_run)
    measured = dataclasses.replace(tiny_run, rates=dataclasses.replace(tiny_run.rates,
                                                                       measured=True))
    assert caveat not in render(measured)


def test_hostile_strings_are_escaped():
    bad_id, bad_uid = HOSTILE
    run = build_tiny_run(subject_ids=(bad_id, bad_uid + "$x$", "s3"), model=bad_uid)
    html = render(run, title=bad_id)
    for s in HOSTILE:
        assert s not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    page = parse(html)
    assert not any(t == "script" for t, _ in page.tags)
    assert all(a["src"].startswith("data:image/png") for t, a in page.tags if t == "img")
    assert not any(k.startswith("on") for _, a in page.tags for k in a)


def test_verdict_flags_differences_below_the_measurement_floor():
    pairs = [PairInfo(f"s{i}", "a", "b", "AD", 2.0) for i in range(3)]
    results = []
    for p in pairs:
        results.append(PairResult(p, "model", {"change_mae": 0.01},
                                  groups={"hippocampus": VolumeChange(-5.0, -1.1)}))
        results.append(PairResult(p, COPY_BASELINE, {"change_mae": 0.05},
                                  groups={"hippocampus": VolumeChange(-5.0, 0.0)}))
        results.append(PairResult(p, MEASUREMENT_FLOOR,
                                  groups={"hippocampus": VolumeChange(-5.0, -3.5)}))
    (only,) = verdict(summarize(results))
    assert only["method"] == "model" and only["level"] == "ok"
    assert "closer to the truth than copy-baseline's in 1 of 1 key structures" in only["text"]
    # 3.9 % vs 5.0 % differ by less than the 1.5 % floor
    assert "smaller than the measurement floor, so not resolved, in hippocampus" in only["text"]


def test_verdict_without_a_model_or_a_copy_baseline():
    pair = PairInfo("s", "a", "b", "CN", 1.0)
    assert "No model was evaluated" in verdict(summarize([PairResult(pair, COPY_BASELINE,
                                                                     {"mae": 0.1})]))[0]["text"]
    assert "copy-baseline was not evaluated" in verdict(
        summarize([PairResult(pair, "m", {"mae": 0.1})]))[0]["text"]
