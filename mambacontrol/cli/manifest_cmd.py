"""``mambacontrol manifest check`` (validate a manifest and summarise it), ``manifest from-bids``
(build one from a BIDS dataset) and ``manifest prepare`` (register its scans onto the model's grid
once, e.g. in job-array parts, and write the prepared manifest)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mambacontrol.cli.predict_cmd import add_part_arguments
from mambacontrol.errors import ConfigError, MambaControlError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="validate, build or prepare a manifest CSV")
    msub = p.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    pc = msub.add_parser("check", help="validate a manifest and print subjects, visits and pairs")
    pc.add_argument("csv", help="manifest CSV")
    pc.add_argument("--no-files", action="store_true", help="do not check that image files exist")
    pc.set_defaults(func=run_check)
    pb = msub.add_parser(
        "from-bids", help="build a manifest from a BIDS dataset's T1w images",
        description="One row per T1w image: subject_id sub-X, image_uid sub-X_ses-Y (plus acq/run "
                    "when a session has several). Age from sessions.tsv, or participants.tsv's age "
                    "at the first session plus the time since it (sessions.tsv's acq_time); sex "
                    "and diagnosis from sessions.tsv or participants.tsv; split from "
                    "participants.tsv's split column, else assigned by subject.")
    pb.add_argument("bids_dir", help="the BIDS dataset's root (with dataset_description.json)")
    pb.add_argument("--out", required=True, help="manifest CSV to write")
    pb.add_argument("--age-column", default="age", help="age column (default: age)")
    pb.add_argument("--sex-column", default="sex", help="sex column (default: sex)")
    pb.add_argument("--diagnosis-column", default="diagnosis",
                    help="diagnosis column (default: diagnosis)")
    pb.add_argument("--split-column", default="split",
                    help="participants.tsv's split column, used when present (default: split)")
    pb.add_argument("--split", default="0.7,0.1,0.2", metavar="TRAIN,VALID,TEST",
                    help="fractions of subjects per split when there is no split column "
                         "(default: 0.7,0.1,0.2)")
    pb.add_argument("--seed", type=int, default=0, help="seed of the split assignment (default: 0)")
    pb.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    pb.set_defaults(func=run_from_bids)
    _register_prepare(msub)


def _register_prepare(msub: argparse._SubParsersAction) -> None:
    pp = msub.add_parser(
        "prepare", help="register a manifest's scans onto the model's grid, once",
        description="Prepare every scan not already on the atlas grid (registration, labels, "
                    "brain mask) into --out as <uid>_t1/_labels/_mask.nii.gz, and write "
                    "--out/manifest.csv: the prepared manifest, which train and evaluate use "
                    "without registering anything. Scans prepared before are skipped. For a job "
                    "array, run each part into the same --out, then once without parts (it "
                    "prepares what is missing and writes manifest.csv).")
    pp.add_argument("--manifest", required=True, help="manifest CSV of the scans to prepare")
    pp.add_argument("--out", required=True, help="folder of the prepared scans and manifest.csv")
    pp.add_argument("--config", help="run config (YAML, or a bundled config's name) whose "
                                     "data.atlas and data.grid to prepare for")
    pp.add_argument("--atlas", help="atlas name (default: the package's, icbm152-2009a-nmm)")
    pp.add_argument("--grid", help="atlas grid, e.g. 2mm, 1p5mm, 4mm (default: 2mm)")
    pp.add_argument("--seed", type=int, default=0, help="registration seed (default: 0)")
    pp.add_argument("--workers", type=int, default=1, metavar="N",
                    help="scans prepared side by side, each in a process of its own (default: 1)")
    pp.add_argument("--overwrite", action="store_true",
                    help="prepare this run's scans again, replacing its own earlier files")
    add_part_arguments(pp, "scans to prepare")
    pp.set_defaults(func=run_prepare)


def run_check(args: argparse.Namespace) -> int:
    from mambacontrol.data import DIAGNOSES, SPLITS, Manifest  # lazy: keeps --help fast

    m = Manifest.from_csv(args.csv, check_files=not args.no_files)
    pairs = m.pairs()
    print(f"{args.csv}: valid; {len(m.subjects())} subjects, {len(m)} visits, "
          f"{len(pairs)} visit pairs")
    print(f"  {'split':<8}" + "".join(f"{d:>6}" for d in DIAGNOSES) + f"{'visits':>8}")
    for split in SPLITS:
        sel = m.select(split)
        if len(sel) == 0:
            continue
        baseline = {s: vs[0] for s, vs in sel.by_subject().items()}
        counts = [sum(v.diagnosis == d for v in baseline.values()) for d in DIAGNOSES]
        print(f"  {split:<8}" + "".join(f"{c:>6}" for c in counts) + f"{len(sel):>8}")
    print("  (diagnosis columns count subjects by baseline diagnosis)")
    return 0


def run_from_bids(args: argparse.Namespace) -> int:
    from mambacontrol.data.bids import manifest_from_bids  # lazy: keeps --help fast

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise MambaControlError(f"{out} already exists; choose another --out or add --overwrite")
    if out.exists() and not out.is_file():
        raise MambaControlError(f"{out} is not a file; give a CSV path as --out")
    if out.exists() and out.resolve().is_relative_to(Path(args.bids_dir).resolve()):
        raise MambaControlError(f"{out} is a file of the BIDS dataset {args.bids_dir}; --overwrite "
                                "replaces only a manifest outside it: choose another --out")
    try:
        split = [float(x) for x in args.split.split(",")]
    except ValueError:
        raise MambaControlError(
            f"--split '{args.split}' is not three numbers, e.g. 0.7,0.1,0.2") from None
    manifest = manifest_from_bids(args.bids_dir, age_column=args.age_column,
                                  sex_column=args.sex_column,
                                  diagnosis_column=args.diagnosis_column,
                                  split_column=args.split_column, split=split, seed=args.seed)
    manifest.to_csv(out)
    counts = {s: len(manifest.select(s)) for s in ("train", "valid", "test")}
    print(f"{out}: {len(manifest)} visits of {len(manifest.subjects())} subjects, "
          f"{len(manifest.pairs())} visit pairs; visits per split: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Check the arguments, then prepare this job's share of the manifest's scans into --out."""
    # heavy (torch, nibabel, ANTs): imported when the command runs (--help stays fast)
    from mambacontrol.atlas import load_atlas
    from mambacontrol.data import Manifest
    from mambacontrol.pipeline.prepare import prepare_into_folder
    from mambacontrol.pipeline.shards import Shard

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} must be at least 1")
    shard = Shard.current(args.num_parts, args.part_id)
    atlas = load_atlas(*_atlas_and_grid(args))
    manifest = Manifest.from_csv(args.manifest, require_split=False)
    done = prepare_into_folder(manifest, atlas, args.out, seed=args.seed, workers=args.workers,
                               shard=shard, overwrite=args.overwrite)
    if shard.is_main:
        end = (f"; wrote {done.manifest_csv}" if done.manifest_csv is not None else
               f"; part {args.part_id} of {args.num_parts}: once every part is done, run without "
               "--num-parts to write manifest.csv")
        print(f"{done.prepared} scans prepared into {args.out}, {done.share - done.prepared} "
              f"prepared before{end}")
    return 0


def _atlas_and_grid(args: argparse.Namespace) -> tuple[str, str]:
    """The atlas name and grid: the run config's ``data.atlas``/``data.grid`` with --config,
    else --atlas/--grid, else the package's defaults."""
    from mambacontrol.atlas import DEFAULT_ATLAS, DEFAULT_GRID

    if args.config is None:
        return args.atlas or DEFAULT_ATLAS, args.grid or DEFAULT_GRID
    if args.atlas is not None or args.grid is not None:
        raise MambaControlError("give either --config (its data.atlas and data.grid) or "
                                "--atlas/--grid, not both")
    from mambacontrol.training.config import load_config
    from mambacontrol.training.configs import resolve_config_path
    from mambacontrol.training.run_config import RunConfig

    cfg = load_config(RunConfig, resolve_config_path(args.config))
    return cfg.data.atlas, cfg.data.grid
