"""Would a decoder that sees the baseline carry more of the change than a difference of decodes?

Issue 13: the representation's ceiling, ``x_base + D(E(x_follow)) − D(E(x_base))``, carries 25–55 %
of the true regional change on the demo cohort. A *change decoder* keeps the autoencoder and
decodes a latent change on top of the baseline image it applies to::

    x̂_follow = x_base + R([x_base, up(E(x_follow) − E(x_base))])

``R`` is MONAI's ``BasicUNet`` (input: the baseline and the trilinearly upsampled latent change;
output: the image change; last layer zero, so it starts as the copy), trained with the
autoencoder frozen on the training split's visit pairs (every earlier → later pair, whole
images padded to a multiple of 16, squared error inside the baseline's brain mask). The probe
then scores the plain ceiling and the change decoder's on the same test pairs, measured as
``bench_ceiling.py`` measures them (SyN from the baseline, against the truth measured the same
way; cells: change recovered % / regional error in % of the copy-baseline's)::

    mambacontrol train autoencoder --config demo --out runs/cd/base \\
        data.manifest=runs/demo/cohort/manifest.csv
    python benchmarks/probe_change_decoder.py --run runs/cd/base \\
        --manifest runs/demo/cohort/manifest.csv --steps 800 --seed 0

Nothing here is part of the package: if the change decoder carries more, it becomes a
component and a decode mode of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ceiling  # noqa: E402

from mambacontrol.atlas import load_atlas  # noqa: E402
from mambacontrol.data import Manifest  # noqa: E402
from mambacontrol.evaluation import summarize  # noqa: E402
from mambacontrol.evaluation.evaluate import GridScans  # noqa: E402
from mambacontrol.models.autoencoder import Autoencoder  # noqa: E402
from mambacontrol.nn.padding import crop_to, pad_to_multiple, padding_for  # noqa: E402
from mambacontrol.pipeline.progression import _clip_to_brain as clip_to_brain  # noqa: E402
from mambacontrol.training.config import load_config  # noqa: E402
from mambacontrol.training.run_config import RunConfig  # noqa: E402

MULTIPLE = 16
"""BasicUNet halves the grid four times."""


class ChangeDecoder(torch.nn.Module):
    """``x_base`` (B, 1, X, Y, Z) and a latent change (B, C, x, y, z) → the follow-up
    (B, 1, X, Y, Z)."""

    def __init__(self, latent_channels: int, features: tuple[int, ...]):
        super().__init__()
        self.net = BasicUNet(spatial_dims=3, in_channels=1 + latent_channels, out_channels=1,
                             features=features, norm=("instance", {"affine": True}))
        torch.nn.init.zeros_(self.net.final_conv.weight)
        torch.nn.init.zeros_(self.net.final_conv.bias)

    def forward(self, x_base: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(dz, size=x_base.shape[2:], mode="trilinear", align_corners=False)
        inputs = pad_to_multiple(torch.cat([x_base, up], 1), MULTIPLE)
        return x_base + crop_to(self.net(inputs), tuple(x_base.shape[2:]))


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """(X, Y, Z) → (1, 1, X, Y, Z) float32."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


@torch.no_grad()
def training_pairs(ae: Autoencoder, scans: GridScans) -> list[tuple[torch.Tensor, ...]]:
    """Every training pair's ``(x_base, dz, x_follow, brain)``, each (1, ·, ...)."""
    out = []
    for pair in scans.manifest.select("train").pairs("all"):
        base, follow = scans.load(pair.earlier), scans.load(pair.later)
        xb, xf = as_tensor(base.image), as_tensor(follow.image)
        out.append((xb, ae.encode(xf) - ae.encode(xb), xf, as_tensor(base.mask)))
    return out


def train(decoder: ChangeDecoder, pairs: list, steps: int, batch: int, lr: float,
          seed: int) -> float:
    """Train ``decoder`` in place; returns the wall seconds."""
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    draw = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        chosen = [pairs[int(i)] for i in torch.randint(len(pairs), (batch,), generator=draw)]
        xb, dz, xf, brain = (torch.cat(parts) for parts in zip(*chosen))
        err = (decoder(xb, dz) - xf) * brain
        loss = err.square().sum() / brain.sum().clamp_min(1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{steps}: loss {loss.item():.6f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    decoder.eval()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a run folder with autoencoder/")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--features", default="16,16,32,64,64,16", help="BasicUNet's six widths")
    p.add_argument("--seed", type=int, default=0, help="the change decoder's training seed")
    p.add_argument("--max-pairs", type=int, help="only the first N test pairs")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    cfg = load_config(RunConfig, args.run / "config.yaml")
    atlas = load_atlas(cfg.data.atlas, cfg.data.grid)
    scans = GridScans(Manifest.from_csv(args.manifest), atlas, 0)
    ae = Autoencoder.load(args.run / "autoencoder").eval().requires_grad_(False)
    pairs = training_pairs(ae, scans)
    print(f"{len(pairs)} training pairs; padded grid "
          f"{[s + e for s, e in zip(atlas.grid.shape, padding_for(atlas.grid.shape, MULTIPLE))]}",
          flush=True)
    decoder = ChangeDecoder(ae.config.latent_channels,
                            tuple(int(f) for f in args.features.split(",")))
    train_s = train(decoder, pairs, args.steps, args.batch, args.lr, args.seed)

    plain = bench_ceiling.reconstruct_follow_up

    def reconstruct(model, image, follow, brain, decode="difference", latent_gain=1.0):
        if model is not with_decoder:
            return plain(model, image, follow, brain, decode, latent_gain)
        with torch.no_grad():
            xb, xf = as_tensor(image), as_tensor(follow)
            out = decoder(xb, ae.encode(xf) - ae.encode(xb))
        return clip_to_brain(out[0, 0].double(), brain)

    with_decoder = Autoencoder.load(args.run / "autoencoder").eval()  # a second handle, same AE
    bench_ceiling.reconstruct_follow_up = reconstruct
    models = {"difference of decodes": ae, "change decoder": with_decoder}
    options = argparse.Namespace(split="test", pairs="all", max_pairs=args.max_pairs,
                                 field_probe=[], latent_gain=[], decode="difference")
    results, mae = bench_ceiling.score_ceilings(options, scans, models)
    table = bench_ceiling.ceiling_table(summarize(results), models, atlas.grid.shape,
                                        {"change decoder": train_s}, mae, [])
    table["change decoder"]["parameters"] += sum(q.numel() for q in decoder.parameters())
    print(f"\nchange decoder: {args.steps} steps, seed {args.seed}, {train_s:.0f} s\n")
    bench_ceiling.print_table(table)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
