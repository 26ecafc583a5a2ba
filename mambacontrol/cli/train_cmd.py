"""``mambacontrol train STAGE --config FILE``: train one stage, or all of them in order."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambacontrol.errors import ConfigError
from mambacontrol.training.configs import bundled_names

STAGE_CHOICES = ("autoencoder", "latents", "graph", "unet", "controlnet", "all")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a stage (autoencoder, latents, graph, unet, controlnet) or all",
        description="Train one stage, or `all` in order (finished stages are skipped). The run "
                    "folder gets the resolved config, checkpoints, TensorBoard logs, the final "
                    "components, which `mambacontrol predict --model DIR` loads, and a model "
                    "card README.md.")
    p.add_argument("stage", choices=STAGE_CHOICES, help="stage to run")
    p.add_argument("--config", required=True,
                   help="YAML config, or a bundled config's name: " + ", ".join(bundled_names()))
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the stage from its last checkpoint")
    p.add_argument("--metrics", metavar="JSON",
                   help="an evaluation's metrics.json to quote in the model card README.md "
                        "(default: <out>/evaluation/metrics.json when it exists)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes registering the scans that are not on the atlas grid, once, "
                        "before the first stage (under accelerate launch: on the main process; "
                        "not the data loaders' engine.num_workers)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. unet.train.lr=1e-4 "
                        "data.manifest=cohort/manifest.csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override '{bad[0]}' is not key=value (e.g. unet.train.steps=100)")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be at least 1")
    # lazy: keeps --help (and the check above) free of torch
    from mambacontrol.pipeline.shards import process_state
    from mambacontrol.training.runner import TrainingRun, resolve_config

    cfg = resolve_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).name.removesuffix(
        ".yaml").removesuffix(".yml")
    run = TrainingRun(cfg, out, metrics=args.metrics, prepare_workers=args.workers)
    summaries = run.run(args.stage, resume=args.resume)
    if process_state().is_main_process:  # under torchrun / accelerate launch, one report
        for s in summaries:
            print(s.line())
        print(f"run folder: {out}")
    return 0
