"""``mambacontrol predict``: follow-up scans of a NIfTI scan (or of every scan of a manifest)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mambacontrol.errors import MambaControlError
from mambacontrol.models.sampler_names import SAMPLER_NAMES

if TYPE_CHECKING:
    from mambacontrol.pipeline.scan_prediction import PredictSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="predict follow-up scans of a T1 NIfTI scan, in its own space",
        description="Predict the follow-up scan at one or several horizons. Writes, per "
                    "horizon, the prediction and its uncertainty in the input's exact grid, "
                    "regional volumes (regions.csv) and, with --png, a montage; plus "
                    "summary.json.")
    p.add_argument("image", nargs="?", help="baseline T1 NIfTI (omit with --manifest)")
    p.add_argument("--manifest", help="predict every scan of this manifest (one subfolder per "
                                       "scan; an optional mask_path column gives brain masks)")
    p.add_argument("--age", type=float, help="age in years at the scan")
    p.add_argument("--sex", help="F or M")
    p.add_argument("--diagnosis", help="CN, MCI or AD")
    p.add_argument("--years", type=float, nargs="+", required=True, help="horizon(s) in years")
    p.add_argument("--model", required=True,
                   help="trained model folder, or a Hugging Face Hub id (org/name)")
    p.add_argument("--out", required=True,
                   help="output folder (new or empty; a batch's own earlier output resumes)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace this command's earlier outputs in --out (nothing else there)")
    p.add_argument("--segmentation", help="label map of the scan: atlas label ids, or FreeSurfer "
                                          "aseg/aparc+aseg ids (SynthSeg, FastSurfer); default: "
                                          "atlas labels propagated by registration")
    p.add_argument("--seg-format", choices=("auto", "atlas", "freesurfer"), default="auto",
                   help="the segmentation's ids (default: detected from the ids present)")
    p.add_argument("--mask", help="brain mask of the scan (e.g. from SynthStrip), in its space; "
                                   "default: the atlas brain after registration")
    p.add_argument("--no-bias-correction", action="store_true",
                   help="skip N4 bias-field correction before intensity normalisation")
    p.add_argument("--intensity", choices=("input", "normalized"), default="input",
                   help="input (default): the prediction in the input's intensities and field of "
                        "view, so prediction − input is the predicted change; normalized: the "
                        "model's brain-only 0–1 image")
    add_sampling_flags(p, "samples M averaged per horizon")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--png", action="store_true", help="also write a montage per horizon")
    p.add_argument("--bids", action="store_true",
                   help="with --manifest: write --out as a BIDS derivative dataset "
                        "(sub-X/ses-Y/anat/..._desc-pred<Y>y_T1w.nii.gz with JSON sidecars); the "
                        "session comes from a 'session' column (manifest from-bids) or the file "
                        "name")
    p.add_argument("--no-volumes", action="store_true",
                   help="skip the sub-voxel regional volume measurement (faster)")
    add_part_arguments(p, "scans")
    p.set_defaults(func=run)


def add_part_arguments(p: argparse.ArgumentParser, items: str) -> None:
    """``--num-parts K --part-id I``: one job of a job array takes every K-th of the batch's
    ``items``, from the I-th."""
    p.add_argument("--num-parts", type=int, default=1, metavar="K",
                   help=f"split the {items} into K parts for a job array (item i goes to part "
                        "i mod K); run each part into the same --out, then once without parts "
                        "to merge")
    p.add_argument("--part-id", type=int, metavar="I",
                   help="the part this job runs, 0 to K-1 (e.g. $SLURM_ARRAY_TASK_ID)")


def add_sampling_flags(p: argparse.ArgumentParser, samples_help: str) -> None:
    """``--samples``, ``--steps``, ``--sampler`` and ``--guidance`` (each None: the model's own),
    as ``predict`` and ``evaluate`` take them (checked by ``check_sampling_flags``)."""
    p.add_argument("--samples", type=int, dest="num_samples", metavar="SAMPLES",
                   help=f"{samples_help} (default: the model's)")
    p.add_argument("--steps", type=int, dest="num_inference_steps", metavar="STEPS",
                   help="sampler steps (default: the model's)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES,
                   help="ddim, dpm-solver (DPM-Solver++) or ddpm (default: the model's)")
    p.add_argument("--guidance", type=float, metavar="W",
                   help="guidance weight against the zero horizon, 0 to 20: each step becomes "
                        "out(Δt) + W·(out(Δt) − out(0)), which strengthens the predicted change "
                        "and doubles the sampling cost (default: the model's; 0: none)")


def device_from_flag(name: str) -> str:
    """The torch device a ``--device`` flag names (``auto``: CUDA when available, else CPU)."""
    import torch  # heavy: imported when the command runs (--help stays torch-free)

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MambaControlError(f"--device {name}: no CUDA GPU is available; use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise MambaControlError(f"--device {name} is not cpu or cuda[:N]")
    return name


def run(args: argparse.Namespace) -> int:
    """Check every argument (the one boundary: requests and settings are valid from here on),
    then predict one scan or a manifest's scans."""
    # heavy (torch, nibabel): imported when the command runs (--help stays torch-free)
    from mambacontrol.pipeline.scan_prediction import PredictSettings

    if (args.image is None) == (args.manifest is None):
        raise MambaControlError("give either one IMAGE (with --age --sex --diagnosis) or "
                                "--manifest CSV")
    if args.bids and args.manifest is None:
        raise MambaControlError("--bids writes a batch as a BIDS derivative dataset: give "
                                "--manifest")
    if args.manifest is None and (args.num_parts != 1 or args.part_id is not None):
        raise MambaControlError("--num-parts/--part-id split a batch: give --manifest")
    settings = PredictSettings(num_samples=args.num_samples,
                               num_inference_steps=args.num_inference_steps,
                               sampler=args.sampler, guidance=args.guidance, seed=args.seed,
                               png=args.png, measure_volumes=not args.no_volumes,
                               bias_correction=not args.no_bias_correction,
                               intensity=args.intensity, seg_format=args.seg_format)
    if args.image is not None:
        return _predict_one(args, settings)
    return _predict_batch(args, settings)


def _predict_one(args: argparse.Namespace, settings: PredictSettings) -> int:
    # heavy (torch, nibabel): imported when the command runs (--help stays torch-free)
    from mambacontrol.io import OutputFolder
    from mambacontrol.pipeline.scan_prediction import PredictRequest, predict_scan

    missing = [f"--{n}" for n in ("age", "sex", "diagnosis") if getattr(args, n) is None]
    if missing:
        raise MambaControlError(f"{', '.join(missing)} missing: predicting one scan needs age, "
                                "sex and diagnosis")
    request = PredictRequest(Path(args.image), args.age, args.sex, args.diagnosis, args.years,
                             _path(args.segmentation), _path(args.mask))
    request.check_files()  # bad files and --out fail before the model loads
    with OutputFolder.claim(args.out, "predict", inputs=request.inputs(args.model),
                            overwrite=args.overwrite) as folder:
        summary = predict_scan(_load(args), request, folder, settings, model_dir=args.model)
    t = summary["timings_s"]
    print(f"wrote {args.out}: {len(summary['outputs'])} horizon(s) in {t['total']:.1f} s "
          f"(registration {t.get('registration', 0):.1f} s, sampling {t.get('sampling', 0):.1f} "
          f"s, decoding {t.get('decoding', 0):.1f} s)")
    return 0


def _predict_batch(args: argparse.Namespace, settings: PredictSettings) -> int:
    """Predict a manifest's scans: this process's share of them (this job-array part's, split
    over the processes of ``accelerate launch``) into the one --out."""
    # heavy (torch, nibabel): imported when the command runs (--help stays torch-free)
    from mambacontrol.data import Manifest
    from mambacontrol.io import unique_names
    from mambacontrol.pipeline.bids_output import DESCRIPTION_NAME, BidsTarget, predict_bids
    from mambacontrol.pipeline.scan_prediction import FAILURES_NAME, PredictRequest, predict_many
    from mambacontrol.pipeline.shards import Shard, claim_shared

    shard = Shard.current(args.num_parts, args.part_id)
    manifest = Manifest.from_csv(args.manifest, require_split=False)
    names = unique_names(((f"row {i + 1}", v.image_uid) for i, v in enumerate(manifest)),
                         "image_uid")
    requests = [PredictRequest(v.image_path, v.age, v.sex, v.diagnosis, args.years, v.segm_path,
                               manifest.mask_path(v)) for v in manifest]
    inputs = [args.manifest, *(p for r in requests for p in r.inputs(args.model))]
    common = dict(inputs=inputs, resume=True, overwrite=args.overwrite)
    total = len(shard.part_indices(len(requests)))
    if args.bids:
        targets = [(BidsTarget.of_visit(v), r) for v, r in zip(manifest, requests)]
        with claim_shared(shard, args.out, "predict-bids", **common,
                          free=[DESCRIPTION_NAME, FAILURES_NAME]) as folder:
            done, failed = predict_bids(_load(args, shard), targets, folder, settings,
                                        model_dir=args.model, overwrite=args.overwrite,
                                        shard=shard)
        return _report(done, failed, total, f"the BIDS derivative {args.out}", shard.is_main)
    named = [(names[v.image_uid], r) for v, r in zip(manifest, requests)]
    with claim_shared(shard, args.out, "predict-batch", **common,
                      free=[*(n for n, _ in named), FAILURES_NAME]) as folder:
        done, failed = predict_many(_load(args, shard), named, folder, settings,
                                    model_dir=args.model, overwrite=args.overwrite, shard=shard)
    return _report(done, failed, total, args.out, shard.is_main)


def _report(done: list, failed: dict, total: int, out: str, main: bool = True) -> int:
    """A batch's one-line result (from the main process), each failure on stderr; exit status 1
    when any scan failed."""
    if main:
        print(f"{len(done)} of {total} scans predicted into {out}")
        for name, err in failed.items():
            print(f"failed: {name}: {err}", file=sys.stderr)
    return 1 if failed else 0


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _load(args: argparse.Namespace, shard=None):
    """The model on ``--device``; under a launch of several processes, ``cuda`` (or ``auto``
    with GPUs) is each process's own GPU."""
    # heavy (torch): imported when the command runs (--help stays torch-free)
    from mambacontrol.pipeline.progression import ProgressionPipeline
    from mambacontrol.pipeline.shards import process_device

    device = device_from_flag(args.device)
    if shard is not None and shard.distributed and device == "cuda":
        device = process_device()
    return ProgressionPipeline.from_pretrained(args.model, device=device)
