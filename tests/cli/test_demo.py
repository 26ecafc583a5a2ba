"""The demo end to end on a tiny model: cohort, every stage, a prediction, an evaluation report."""

from mambacontrol.cli.main import main

TINY = ["autoencoder.model.channels=[8, 8, 8]", "autoencoder.model.latent_channels=2",
        "autoencoder.model.norm_num_groups=4", "autoencoder.train.steps=2",
        "autoencoder.train.patch_size=[16, 16, 16]", "autoencoder.train.scale_scans=2",
        "graph.model.embed_dim=8", "graph.model.num_layers=1", "graph.model.num_tokens=2",
        "graph.train.steps=2", "unet.model.channels=[8, 16]", "unet.model.norm_num_groups=4",
        "unet.model.num_head_channels=8", "unet.train.steps=2", "controlnet.train.steps=2",
        "controlnet.model.mamba_d_state=4", "controlnet.model.fourier_modes=[2, 2, 2]",
        "sampling.num_inference_steps=2", "sampling.num_samples=2"]


def test_demo_runs_every_step_and_says_where_the_report_is(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["-q", "demo", "--out", str(out), "--subjects", "8", "--workers", "1", "--pairs", "last"]
    assert main([*args, *TINY]) == 0
    text = capsys.readouterr().out
    assert "[4/4] evaluated the test split" in text and "report:" in text
    report = out / "evaluation" / "report.html"
    assert report.is_file() and "copy-baseline" in report.read_text()
    for horizon in ("years_1", "years_3", "years_5"):
        assert (out / "prediction" / horizon / "montage.png").is_file()
    assert (out / "model" / "model_index.json").is_file()
    card = (out / "model" / "README.md").read_text()  # the model card quotes the evaluation
    assert f"From `{out / 'evaluation' / 'metrics.json'}` on split `test`" in card
    table = (out / "evaluation" / "pairs.csv").read_text().splitlines()[1:]
    rows = [r.split(",")[:3] for r in table]  # subject, baseline, follow-up; one row per method
    pairs = {tuple(r) for r in rows}
    assert len(pairs) == len({r[0] for r in rows}) > 0  # --pairs last: one pair per subject
    # a second run reuses every step
    assert main([*args, *TINY]) == 0
