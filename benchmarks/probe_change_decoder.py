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

``--encoder`` chooses where the latent change comes from:

- ``frozen`` (default): ``E(x_follow) − E(x_base)`` with the autoencoder's own encoder, as above.
- ``tuned``: the same difference through a copy of that encoder trained together with ``R``
  (it starts where ``frozen`` does; a scan paired with itself still gives no change).
- ``joint``: a new encoder of the autoencoder's architecture that reads both scans,
  ``E_c([x_base, x_follow])``, with as many channels on the same latent grid, trained from scratch
  together with ``R``. Its latent has no KL term: this bounds what a change latent of that size
  can carry, not what a diffusion model could generate from it.

Nothing here is part of the package: if the change decoder carries more, it becomes a
component and a decode mode of the pipeline.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, BasicUNet

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


class ChangeEncoder(torch.nn.Module):
    """``(x_base, x_follow)``, each (B, 1, X, Y, Z) → a latent change (B, C, x, y, z) on the
    autoencoder's latent grid, in one of the three ``--encoder`` modes."""

    def __init__(self, ae: Autoencoder, mode: str):
        super().__init__()
        self.mode = mode
        self.scale = ae.scaling_factor
        if mode in ("frozen", "tuned"):
            self.net = copy.deepcopy(ae.net).requires_grad_(mode == "tuned")
        elif mode == "joint":
            c = ae.config
            self.net = AutoencoderKL(
                spatial_dims=3, in_channels=2, out_channels=1, channels=tuple(c.channels),
                latent_channels=c.latent_channels, num_res_blocks=c.num_res_blocks,
                attention_levels=(False,) * len(c.channels), norm_num_groups=c.norm_num_groups,
                with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        else:
            raise ValueError(f"unknown encoder mode {mode!r}; use frozen, tuned or joint")
        del self.net.decoder, self.net.post_quant_conv  # only the encoding half is used

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.quant_conv_mu(self.net.encoder(x)) * self.scale

    def forward(self, x_base: torch.Tensor, x_follow: torch.Tensor) -> torch.Tensor:
        if self.mode == "joint":
            return self._mean(torch.cat([x_base, x_follow], 1))
        return self._mean(x_follow) - self._mean(x_base)


class ChangeModel(torch.nn.Module):
    """The ceiling's encode → decode: ``(x_base, x_follow)`` → x̂_follow, each (B, 1, X, Y, Z)."""

    def __init__(self, encoder: ChangeEncoder, decoder: ChangeDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x_base: torch.Tensor, x_follow: torch.Tensor) -> torch.Tensor:
        return self.decoder(x_base, self.encoder(x_base, x_follow))


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """(X, Y, Z) → (1, 1, X, Y, Z) float32."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


def training_pairs(scans: GridScans) -> list[tuple[torch.Tensor, ...]]:
    """Every training pair's ``(x_base, x_follow, brain)``, each (1, 1, X, Y, Z)."""
    out = []
    for pair in scans.manifest.select("train").pairs("all"):
        base, follow = scans.load(pair.earlier), scans.load(pair.later)
        out.append((as_tensor(base.image), as_tensor(follow.image), as_tensor(base.mask)))
    return out


def train(model: ChangeModel, pairs: list, steps: int, batch: int, lr: float,
          encoder_lr: float, seed: int) -> float:
    """Train ``model``'s decoder (and its encoder unless frozen) in place; returns wall seconds."""
    groups = [{"params": list(model.decoder.parameters()), "lr": lr}]
    trainable = [q for q in model.encoder.parameters() if q.requires_grad]
    if trainable:
        groups.append({"params": trainable, "lr": encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    draw = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        chosen = [pairs[int(i)] for i in torch.randint(len(pairs), (batch,), generator=draw)]
        xb, xf, brain = (torch.cat(parts) for parts in zip(*chosen))
        err = (model(xb, xf) - xf) * brain
        loss = err.square().sum() / brain.sum().clamp_min(1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{steps}: loss {loss.item():.6f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a run folder with autoencoder/")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--encoder", choices=("frozen", "tuned", "joint"), default="frozen",
                   help="where the latent change comes from (see the module docstring)")
    p.add_argument("--encoder-lr", type=float, help="the encoder's learning rate (default --lr)")
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
    pairs = training_pairs(scans)
    print(f"{len(pairs)} training pairs; padded grid "
          f"{[s + e for s, e in zip(atlas.grid.shape, padding_for(atlas.grid.shape, MULTIPLE))]}",
          flush=True)
    decoder = ChangeDecoder(ae.config.latent_channels,
                            tuple(int(f) for f in args.features.split(",")))
    change_model = ChangeModel(ChangeEncoder(ae, args.encoder), decoder)
    train_s = train(change_model, pairs, args.steps, args.batch, args.lr,
                    args.encoder_lr if args.encoder_lr is not None else args.lr, args.seed)

    plain = bench_ceiling.reconstruct_follow_up

    def reconstruct(model, image, follow, brain, decode="difference", latent_gain=1.0):
        if model is not with_decoder:
            return plain(model, image, follow, brain, decode, latent_gain)
        with torch.no_grad():
            xb, xf = as_tensor(image), as_tensor(follow)
            out = change_model(xb, xf)
        return clip_to_brain(out[0, 0].double(), brain)

    with_decoder = Autoencoder.load(args.run / "autoencoder").eval()  # a second handle, same AE
    bench_ceiling.reconstruct_follow_up = reconstruct
    models = {"difference of decodes": ae, "change decoder": with_decoder}
    options = argparse.Namespace(split="test", pairs="all", max_pairs=args.max_pairs,
                                 field_probe=[], latent_gain=[], decode="difference")
    results, mae = bench_ceiling.score_ceilings(options, scans, models)
    table = bench_ceiling.ceiling_table(summarize(results), models, atlas.grid.shape,
                                        {"change decoder": train_s}, mae, [])
    added = decoder if args.encoder != "joint" else change_model  # a new encoder's weights too
    table["change decoder"]["parameters"] += sum(q.numel() for q in added.parameters())
    print(f"\nchange decoder: {args.encoder} encoder, {args.steps} steps, seed {args.seed}, "
          f"{train_s:.0f} s\n")
    bench_ceiling.print_table(table)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
