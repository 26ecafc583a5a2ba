"""``mambacontrol calibrate``: choose a model's guidance weight on a split and save a copy of the
model with it as the default."""

from __future__ import annotations

import argparse
import sys

from mambacontrol.cli.predict_cmd import device_from_flag


def weight_list(text: str) -> list[float]:
    """``"0,1,2.5"`` -> [0.0, 1.0, 2.5]."""
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers "
                                         "(e.g. 0,1,2)") from None
    if not weights:
        raise argparse.ArgumentTypeError("give at least one weight (e.g. 0,1,2)")
    return weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="choose the guidance weight that sizes predicted change right",
        description="Evaluate a trained model at each guidance weight on a split it was not "
                    "trained on (default: valid), keep the weight whose predicted/true change "
                    "ratio is closest to 1 over the key groups (hippocampus, amygdala, "
                    "entorhinal cortex, lateral ventricles, whole brain), and save a copy of the "
                    "model with that weight as its default in --out/model. Each weight's "
                    "evaluation is kept in --out/evaluations/ and resumes like evaluate's.")
    p.add_argument("--manifest", required=True, help="manifest CSV with a split column")
    p.add_argument("--model", required=True, help="trained model folder (not modified)")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier "
                                                "calibrate's, which resumes)")
    p.add_argument("--weights", type=weight_list, default=None, metavar="W,W,...",
                   help="candidate guidance weights, 0 to 20 (default: 0,0.5,1,1.5,2,3)")
    p.add_argument("--split", default="valid", help="split to calibrate on (default: valid)")
    p.add_argument("--pairs", choices=("all", "last"), default="all",
                   help="every earlier/later pair, or first and last visit per subject")
    p.add_argument("--samples", type=int, dest="num_samples", metavar="SAMPLES",
                   help="samples per prediction (default: the model's)")
    p.add_argument("--steps", type=int, dest="num_inference_steps", metavar="STEPS",
                   help="sampler steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--per-group", action="store_true",
                   help="also give the hippocampus, amygdala, entorhinal cortex and lateral "
                        "ventricles each its own weight (the one closest to its true change), "
                        "and every other region the whole brain's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: torch
    from mambacontrol.evaluation.calibration import DEFAULT_WEIGHTS, calibrate_guidance
    from mambacontrol.evaluation.evaluate import EvaluationSettings

    settings = EvaluationSettings(split=args.split, pairs=args.pairs, baselines=("copy",),
                                  num_samples=args.num_samples,
                                  num_inference_steps=args.num_inference_steps, seed=args.seed,
                                  ceiling=False)
    settings.check()
    weights = args.weights if args.weights is not None else DEFAULT_WEIGHTS
    result = calibrate_guidance(args.manifest, args.model, args.out, weights, settings,
                                device=device_from_flag(args.device),
                                command=["mambacontrol", *sys.argv[1:]],
                                per_group=args.per_group)
    chosen = f"{result['chosen']:g}"
    ratios = ", ".join(f"{g} {v['change_ratio']:.2f}" for g, v in result["weights"][chosen].items()
                       if v["change_ratio"] is not None)
    print(f"guidance {chosen} chosen on the {args.split} split (predicted/true change: {ratios});"
          f" calibrated model: {result['calibrated_model']}")
    if args.per_group:
        groups = ", ".join(f"{g} {w:g}" for g, w in result["chosen_groups"].items())
        print(f"per group: {groups}, elsewhere {result['chosen_elsewhere']:g} (the calibrated "
              "model's defaults)")
    return 0
