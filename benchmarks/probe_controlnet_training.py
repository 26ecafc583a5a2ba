"""Why does a population UNet's ControlNet learn the subject slowly? Two other ways to train it.

With ``unet.model.concat_base=false`` the UNet never sees the baseline and the ControlNet, trained
on the frozen UNet, must carry the subject alone; on the demo it needs about four times the steps
of the concatenated UNet to do so (docs/benchmarks.md, "The population UNet"). This probe swaps the
``controlnet`` stage of ``mambacontrol train all`` for one of two variants and runs the command
otherwise unchanged:

``decoder``
    The ControlNet trains as usual, and the UNet's decoder (its ``up_blocks`` and ``out``) trains
    with it at ``--unet-lr`` (default: the ControlNet's learning rate): is the frozen decoder, which
    never learnt to use a subject's residuals, what holds the ControlNet back? Starts from the
    run's trained UNet and saves the tuned one over ``<out>/unet``.
``joint``
    The UNet (still without the baseline) and the ControlNet train together from scratch, for
    ``controlnet.train``'s steps at its learning rate; the ``unet`` stage's result is ignored and
    overwritten. Each batch runs the UNet alone with probability ``--alone`` (default 0.2), so
    that the UNet by itself stays a population model.

Both save the EMA weights of what they trained, so ``mambacontrol evaluate`` reads the result as
any model. Give the run folder a finished ``unet`` stage (copy one, as ``quality.py``'s rows do)
so that ``train all`` goes straight to the ControlNet::

    python benchmarks/probe_controlnet_training.py decoder -- train all --config demo \\
        --out runs/cn/pop-ut data.manifest=$M unet.model.concat_base=false
    python benchmarks/probe_controlnet_training.py joint --alone 0.5 -- train all --config demo \\
        --out runs/cn/pop-joint50 data.manifest=$M unet.model.concat_base=false \\
        controlnet.train.steps=400 controlnet.train.lr=1e-3

Single process only: the variants do not synchronise processes as the package's stages do.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

import mambacontrol.training.runner as runner
from mambacontrol.cli.main import main as mambacontrol_main
from mambacontrol.training import stage_diffusion as sd
from mambacontrol.training.data import RunData
from mambacontrol.training.engine import StageSummary
from mambacontrol.training.run_config import RunConfig

log = logging.getLogger("probe_controlnet_training")

#: what the ``decoder`` variant trains of the UNet's MONAI network (``DenoisingUNet.net``)
DECODER_PARTS = ("up_blocks.", "out.")


def _train(cfg: RunConfig, out: Path, resume: bool, trained: dict, groups: list[dict],
           items: list[dict], frozen: dict, step_fn, config_dict: dict) -> StageSummary:
    """Run the stage's trainer over ``trained`` and save each model's EMA weights in ``out``."""
    t = cfg.controlnet.train
    optimizer, scheduler = sd.make_optimizer(groups, t)
    trainer = sd.Trainer("controlnet", trained, optimizer, step_fn,
                         sd.ResumableBatches(items, t.batch_size, seed=cfg.seed,
                                             num_workers=cfg.engine.num_workers), out,
                         steps=t.steps, lr_scheduler=scheduler, frozen=frozen,
                         ema=tuple(trained), ema_decay=t.ema_decay, config=config_dict,
                         **sd.engine_settings(cfg))
    summary = trainer.run(resume=resume)
    with trainer.ema_weights() as models:
        for name, model in models.items():
            if name in trained:
                model.save(out / name)
    return summary


def _setup(cfg: RunConfig, data: RunData, out: Path):
    """The stage's autoencoder-derived pairs, frozen graph parts and hint layout."""
    ae = sd.Autoencoder.load(out / "autoencoder")
    change_hint = sd.uses_change_hint(cfg)
    frozen = sd._load_frozen(out, cfg, "cpu", head=change_hint)
    items = sd._items(cfg, data, out, frozen, ae.downsample_factor)
    graph_dim = (frozen["graph_encoder"].config.embed_dim
                 if frozen and cfg.controlnet.model.graph_hint else 0)
    return ae, change_hint, frozen, items, graph_dim


def _step(batch: dict, models: dict, step: int, cfg: RunConfig, objective, graph_dim: int,
          change_hint: bool, alone: float = 0.0):
    """One training batch's loss, as the ``controlnet`` stage computes it; with ``alone`` > 0 the
    batch runs the UNet by itself with that probability."""
    del step
    t = cfg.controlnet.train
    batch, drop = sd.with_null_horizons(batch, t)
    unet = models["unet"]
    unet = getattr(unet, "module", unet)
    noisy, ts, goal = objective.noisy(unet.target_from_latents(batch["z_base"], batch["z_follow"]))
    if alone and float(torch.rand(())) < alone:  # the UNet by itself: the population model
        unet_alone = {k: v for k, v in models.items() if k != "controlnet"}
        pred = sd._denoise(unet_alone, batch, noisy, ts, drop_horizon=drop)
    else:
        pred = sd._denoise(models, batch, noisy, ts, graph_hint=bool(graph_dim),
                           drop_horizon=drop,
                           predicted_change=t.predicted_change if change_hint else None)
    return F.mse_loss(pred.float(), goal.float()), {}


def train_with_decoder(cfg: RunConfig, data: RunData, out: Path, resume: bool,
                       config_dict: dict, unet_lr: float | None = None) -> StageSummary:
    """The ControlNet on the run's UNet, whose decoder trains too (``decoder`` variant)."""
    _, change_hint, frozen, items, graph_dim = _setup(cfg, data, out)
    t = cfg.controlnet.train
    unet = sd.DenoisingUNet.load(out / "unet")
    torch.manual_seed(cfg.seed)
    controlnet = sd.build_controlnet(cfg, unet, graph_dim, change_hint)
    unet.requires_grad_(False)
    decoder = [p for n, p in unet.net.named_parameters() if n.startswith(DECODER_PARTS)]
    for p in decoder:
        p.requires_grad_(True)
    log.warning("training %d of the UNet's parameters (%s) with the ControlNet",
                sum(p.numel() for p in decoder), ", ".join(DECODER_PARTS))
    objective = sd.DiffusionObjective(sd.noise_schedule(cfg))
    groups = [{"params": list(controlnet.parameters())},
              {"params": decoder, "lr": t.lr if unet_lr is None else unet_lr}]

    step_fn = functools.partial(_step, cfg=cfg, objective=objective, graph_dim=graph_dim,
                                change_hint=change_hint)
    return _train(cfg, out, resume, {"controlnet": controlnet, "unet": unet}, groups, items,
                  frozen, step_fn, config_dict)


def train_jointly(cfg: RunConfig, data: RunData, out: Path, resume: bool, config_dict: dict,
                  alone: float = 0.2) -> StageSummary:
    """A fresh UNet and its ControlNet trained together (``joint`` variant)."""
    ae, change_hint, frozen, items, graph_dim = _setup(cfg, data, out)
    torch.manual_seed(cfg.seed)
    context_dim = (frozen["graph_encoder"].config.embed_dim if frozen
                   else cfg.graph.model.embed_dim)
    unet = sd.build_unet(cfg, ae.num_latent_channels, context_dim)
    unet.set_target_scale(sd.target_scale(unet, items))
    controlnet = sd.build_controlnet(cfg, unet, graph_dim, change_hint)
    objective = sd.DiffusionObjective(sd.noise_schedule(cfg))
    groups = [{"params": list(controlnet.parameters())}, {"params": list(unet.parameters())}]

    step_fn = functools.partial(_step, cfg=cfg, objective=objective, graph_dim=graph_dim,
                                change_hint=change_hint, alone=alone)
    return _train(cfg, out, resume, {"controlnet": controlnet, "unet": unet}, groups, items,
                  frozen, step_fn, config_dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s {decoder,joint} [--unet-lr LR] [--alone P] -- MAMBACONTROL_COMMAND ...")
    parser.add_argument("variant", choices=("decoder", "joint"))
    parser.add_argument("--unet-lr", type=float, default=None,
                        help="decoder: the UNet decoder's learning rate (default: the "
                             "ControlNet's)")
    parser.add_argument("--alone", type=float, default=0.2,
                        help="joint: share of batches that run the UNet alone (default 0.2)")
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    if not command:
        parser.error("give the mambacontrol command after --, e.g. -- train all --config demo ...")
    if not 0 <= args.alone < 1:
        parser.error(f"--alone {args.alone} must lie in [0, 1)")
    runner.train_controlnet = (
        functools.partial(train_with_decoder, unet_lr=args.unet_lr) if args.variant == "decoder"
        else functools.partial(train_jointly, alone=args.alone))
    return mambacontrol_main(command)


if __name__ == "__main__":
    sys.exit(main())
