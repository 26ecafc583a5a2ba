"""Stage ``autoencoder``: train the 3D autoencoder on random patches, then fix its latent scale.

Loss: L1 reconstruction + ``kl_weight`` · KL divergence of the posterior, optionally
+ ``change_weight`` · the change term (below) and + ``adversarial_weight`` · a patch-adversarial
term with MONAI's ``PatchDiscriminator`` (no loss needs weights downloaded at run time). The
generator and the discriminator are updated in the same optimizer step: the discriminator sees
detached reconstructions, and the generator's adversarial term is computed through a
parameter-detached copy of the discriminator, so each term's gradient reaches only its own
network.

The change term keeps the size of a subject's change, which L1 on single scans lets the decoder
shrink: with ``change_weight > 0`` each batch of ``batch_size`` scans is ``batch_size / 2``
(earlier, later) pairs of one training subject, cropped at the same place. The term compares the
difference of their reconstructions, ``D(E(x_later)) − D(E(x_earlier))`` (what a prediction's
follow-up adds to its baseline, ``reconstruct_follow_up``), with the scans' difference, both
smoothed by a Gaussian of σ = ``change_sigma_mm`` (converted to voxels of the grid's spacing):
the squared error relative to the smoothed true difference's mean square over the batch.
Squared, because a scan pair's difference is mostly noise and an L1 term's cheapest answer is
no change at all (measured: docs/benchmarks.md); smoothed, because a regional volume change is a
smooth field and the reconstructions' own independent high-frequency errors are not part of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset
from monai.losses import PatchAdversarialLoss
from monai.networks.layers import GaussianFilter
from monai.networks.nets import PatchDiscriminator
from monai.transforms import Compose, MapTransform, RandSpatialCropd
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from mambacontrol.errors import ConfigError
from mambacontrol.models.autoencoder import Autoencoder
from mambacontrol.training.common import engine_settings, make_optimizer
from mambacontrol.training.config import arguments_for
from mambacontrol.training.data import RunData
from mambacontrol.training.data_order import ResumableBatches
from mambacontrol.training.engine import StageSummary, Trainer, TrainingDivergedError
from mambacontrol.training.run_config import RunConfig

log = logging.getLogger(__name__)


def build_autoencoder(cfg: RunConfig) -> Autoencoder:
    """The autoencoder of ``autoencoder.model``."""
    return Autoencoder(**arguments_for(Autoencoder, cfg.autoencoder.model))


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(N(mu, sigma²) || N(0, 1)), summed over latent voxels."""
    var = sigma.pow(2)
    kl = 0.5 * (mu.pow(2) + var - torch.log(var.clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


class PatchGAN(nn.Module):
    """MONAI's PatchDiscriminator and least-squares patch adversarial loss."""

    def __init__(self, channels: int = 32, num_layers: int = 3):
        super().__init__()
        self.net = PatchDiscriminator(spatial_dims=3, num_layers_d=num_layers, channels=channels,
                                      in_channels=1, out_channels=1)
        self.loss = PatchAdversarialLoss(criterion="least_squares")

    def generator_term(self, fake: torch.Tensor) -> torch.Tensor:
        detached = {k: v.detach() for k, v in self.net.named_parameters()}
        logits = torch.func.functional_call(self.net, detached, (fake,))
        return self.loss(logits, target_is_real=True, for_discriminator=False)

    def discriminator_term(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        fake_l = self.loss(self.net(fake.detach()), target_is_real=False, for_discriminator=True)
        real_l = self.loss(self.net(real.detach()), target_is_real=True, for_discriminator=True)
        return 0.5 * (fake_l + real_l)


def patch_dataset(data: RunData, patch: list[int]):
    """MONAI Dataset of the training scans with a seeded random crop (re-seeded per item by
    :class:`ResumableBatches`)."""
    images = []
    for v in tqdm(data.train_visits, desc="loading training scans", disable=None, leave=False):
        images.append({"image": data.prepared(v).image[None].astype(np.float32)})
    return Dataset(images, transform=patch_crop(patch, images[0]["image"].shape[1:]))


def patch_crop(patch: list[int], shape) -> RandSpatialCropd:
    """A random crop of ``image`` to ``patch`` (at most the grid ``shape``), the same place in
    every channel."""
    roi = [min(int(p), int(s)) for p, s in zip(patch, shape)]
    return RandSpatialCropd(keys=["image"], roi_size=roi, random_size=False)


class StackPair(MapTransform):
    """``{"earlier": i, "later": j}`` → ``{"image": (2, X, Y, Z)}``: two in-memory scans stacked
    as channels, so one random crop cuts both at the same place."""

    def __init__(self, images: list[np.ndarray]):
        super().__init__(keys=["earlier", "later"])
        self.images = images

    def __call__(self, item: dict) -> dict:
        return {"image": np.stack([self.images[item["earlier"]], self.images[item["later"]]])}


def pair_patch_dataset(data: RunData, patch: list[int]):
    """MONAI Dataset of the training split's (earlier, later) pairs, each item the same seeded
    random crop of both scans, ``(2, *patch)``; every scan is loaded once."""
    pairs = data.pairs("train")
    if not pairs:
        raise ConfigError("autoencoder.train.change_weight > 0 needs subjects with two or more "
                          "training visits, and the training split has none; set it to 0")
    index: dict[str, int] = {}
    images: list[np.ndarray] = []
    items = []
    for pair in tqdm(pairs, desc="loading training pairs", disable=None, leave=False):
        for visit in (pair.earlier, pair.later):
            if visit.image_uid not in index:
                index[visit.image_uid] = len(images)
                images.append(data.prepared(visit).image.astype(np.float32))
        items.append({"earlier": index[pair.earlier.image_uid],
                      "later": index[pair.later.image_uid]})
    crop = patch_crop(patch, images[0].shape)
    return Dataset(items, transform=Compose([StackPair(images), crop]))


def change_loss(rec: torch.Tensor, x: torch.Tensor, smooth: nn.Module) -> torch.Tensor:
    """Relative squared error of the reconstructions' later − earlier differences, smoothed.

    Args:
        rec, x: ``(2B, 1, X, Y, Z)``, the batch's pairs as ``[earlier_1, later_1, earlier_2, …]``.
        smooth: applied to both ``(B, 1, X, Y, Z)`` differences (e.g. MONAI's ``GaussianFilter``).

    Returns:
        ``mean((S Δrec − S Δx)²) / mean((S Δx)²)``: 0 for the true change, 1 for none.
    """
    rec_pairs, x_pairs = rec.unflatten(0, (-1, 2)), x.unflatten(0, (-1, 2))
    true = smooth(x_pairs[:, 1] - x_pairs[:, 0])
    decoded = smooth(rec_pairs[:, 1] - rec_pairs[:, 0])
    return (decoded - true).pow(2).mean() / true.pow(2).mean().clamp_min(1e-12)


def train_autoencoder(cfg: RunConfig, data: RunData, out: Path, resume: bool,
                      config_dict: dict) -> StageSummary:
    """Train, compute the scale factor, save ``<out>/autoencoder``."""
    t = cfg.autoencoder.train
    torch.manual_seed(cfg.seed)
    ae = build_autoencoder(cfg)
    try:
        ae.check_patch(t.patch_size)
        ae.check_shape(data.atlas.grid.shape)
    except ValueError as exc:
        raise ConfigError(f"autoencoder: {exc}") from None
    models: dict[str, nn.Module] = {"autoencoder": ae}
    gan = None
    if t.adversarial_weight > 0:
        gan = PatchGAN()
        models["discriminator"] = gan
    params = [p for m in models.values() for p in m.parameters()]
    optimizer, scheduler = make_optimizer(params, t)
    with_change = t.change_weight > 0
    if with_change:
        dataset, per_batch = pair_patch_dataset(data, t.patch_size), t.batch_size // 2
        sigma = [t.change_sigma_mm / float(mm) for mm in data.atlas.grid.spacing]
        smooth = GaussianFilter(3, sigma) if t.change_sigma_mm > 0 else nn.Identity()
    else:
        dataset, per_batch = patch_dataset(data, t.patch_size), t.batch_size
    batches = ResumableBatches(dataset, per_batch, seed=cfg.seed,
                               num_workers=cfg.engine.num_workers)

    def step_fn(batch, mods, step):
        x = batch["image"]
        if with_change:  # (B, 2, ...) pairs → (2B, 1, ...) scans, each pair's two side by side
            x = x.flatten(0, 1)[:, None]
        rec, mu, sigma = mods["autoencoder"](x)
        l1 = F.l1_loss(rec, x)
        kl = kl_divergence(mu, sigma)
        loss = l1 + t.kl_weight * kl
        metrics = {"l1": l1.item(), "kl": kl.item()}
        if with_change:
            change = change_loss(rec, x, smooth)
            loss = loss + t.change_weight * change
            metrics["change"] = change.item()
        if gan is not None and step >= t.adversarial_start:
            disc = mods["discriminator"]
            g_adv = disc.generator_term(rec)
            d_loss = disc.discriminator_term(x, rec)
            loss = loss + t.adversarial_weight * g_adv + d_loss
            metrics.update(adv_g=g_adv.item(), adv_d=d_loss.item())
        return loss, metrics

    trainer = Trainer("autoencoder", models, optimizer, step_fn, batches, out, steps=t.steps,
                      lr_scheduler=scheduler, config=config_dict,
                      image_logger=_reconstruction_logger(data), **engine_settings(cfg))
    summary = trainer.run(resume=resume)
    if trainer.accelerator.is_main_process:
        ae = trainer.unwrap("autoencoder")
        ae.set_scaling_factor(latent_scale(ae, data, t.scale_scans))
        ae.save(out / "autoencoder")
    trainer.accelerator.wait_for_everyone()
    return summary


@torch.no_grad()
def latent_scale(ae: Autoencoder, data: RunData, max_scans: int) -> float:
    """1 / std of the unscaled posterior means of up to ``max_scans`` whole training scans."""
    ae.eval()
    device = next(ae.parameters()).device
    visits = data.train_visits
    idx = np.linspace(0, len(visits) - 1, num=min(max_scans, len(visits))).round().astype(int)
    values = []
    for i in tqdm(sorted(set(idx.tolist())), desc="latent scale", disable=None, leave=False):
        x = torch.from_numpy(data.prepared(visits[i]).image)[None, None].to(device)
        mu, _ = ae.encode_moments(x)
        values.append(mu.double().flatten())
    std = float(torch.cat(values).std())
    if not std > 0:
        raise TrainingDivergedError("the autoencoder's latents are constant; train longer or lower "
                                    "kl_weight")
    log.info("latent scale factor 1/%.4g", std)
    return 1.0 / std


def _reconstruction_logger(data: RunData):
    scan = data.prepared(data.train_visits[0]).image

    def log_images(models, step):
        ae = models["autoencoder"]
        device = next(ae.parameters()).device
        x = torch.from_numpy(scan)[None, None].to(device)
        rec = ae(x)[0][0, 0].clamp(0, 1).cpu().numpy()
        mid = scan.shape[1] // 2
        return {"reconstruction": np.concatenate([scan[:, mid].T, rec[:, mid].T], axis=1)[::-1]}

    return log_images

