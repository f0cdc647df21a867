"""The paper's command line (``reconstruct_image.py``), with its flags verbatim and nothing silent.

Example (the paper's quick start, offline data):
    python scripts/reconstruct_image.py --model LeNetZhu --dataset embedded-CIFAR10 --cost_fn sim \
        --indices def --restarts 1 --save_image --target_id 0 --tv 1e-2

FedAvg (arXiv 2003.14053, Table 2 and Fig. 5): ``--accumulation n --local_lr τ --batch_size B`` makes the simulated user share the update
Δθ after n local SGD steps and attacks it with :class:`invgrad.FedAvgReconstructor`. Labels not granted:
``--labels idlg|joint|last-layer``. User-side defenses: ``--defense_clip C --defense_noise σ --defense_prune p
--defense_bits b`` (``--defense_aware`` tells the attacker). The paper's FedAvg branch used ``--lr 1``; here the
attack step size stays the preset's unless ``--lr`` is given.

Differences from the original, on purpose: ``--trained_model`` without a usable checkpoint is an error (the
original silently attacked an untrained model); ``--signed``/``--boxed`` were store_false toggles whose help said
the opposite — here ``--unsigned``/``--unboxed`` switch them off; every run writes metrics JSON and a PNG.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from . import data, metrics
from .attack.labels import LABEL_STRATEGIES
from .attack.objective_names import objective_names
from .config import PRESETS, ConfigError, make_config
from .devices import checked_device
from .io import (
    DiskFullError,
    FolderBusyError,
    folder_lock,
    load_tensors,
    save_figure,
    save_json,
)
from .plot import records_grid
from .protocol import check_schedule
from .replication.cells import Threat, run_users
from .user.defenses import Defense
from .victim.models import WeightsUnavailableError, build_model

# The paper's CLI names ImageNet's torchvision ResNets like the CIFAR ones; the data set disambiguates.
IMAGENET_MODEL_ALIASES = {"ResNet18": "torchvision-resnet18", "ResNet152": "torchvision-resnet152"}
# Iteration budgets of the paper's scripts for each preset (rec_mult.py: ours 4,800 Adam steps, zhu 500 L-BFGS).
DEFAULT_ITERATIONS = {"ours": 4800, "zhu": 500}
# The presets' TV (ours: the paper's Table-1 1e-2 for LeNet (Zhu); zhu: none), so help, preset and CLI agree.
DEFAULT_TV = {name: preset["total_variation"] for name, preset in PRESETS.items()}
# How the figure names each preset's method.
METHOD_NAMES = {"ours": "proposed", "zhu": "DLG"}
# What metrics.json reports per experiment (after its indices), from the shared scoring of invgrad.replication.cells.
EXPERIMENT_KEYS = tuple(
    "labels labels_used label_accuracy pairing order psnr mse ssim psnr_mean mse_mean ssim_mean lpips lpips_mean "
    "failed fmse rec_loss restart_losses chosen_restart failed_restarts".split()
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reconstruct_image.py",
        description="Reconstruct a user's image from its shared gradient (Geiping et al. 2020).",
    )
    p.add_argument(
        "--model", default="ConvNet", help="victim architecture, e.g. LeNetZhu, ConvNet, ResNet20-4"
    )
    p.add_argument(
        "--dataset",
        default="embedded-CIFAR10",
        help="CIFAR10, CIFAR100 (torchvision, needs internet once), embedded-CIFAR10/-CIFAR100/-ImageNet "
        "(offline), or image-folder:<path> with --stats",
    )
    p.add_argument(
        "--stats", default=None, help="normalisation constants for image-folder data (CIFAR10, ImageNet)"
    )
    p.add_argument(
        "--data_root",
        default=None,
        help="download/cache folder for torchvision data sets (default: $INVGRAD_DATA, else ./data/raw)",
    )
    p.add_argument(
        "--trained_model",
        action="store_true",
        help="attack trained weights (needs --checkpoint, or pretrained weights for ImageNet models)",
    )
    p.add_argument(
        "--checkpoint", default=None, help="state dict of the victim (loaded with weights_only=True)"
    )
    p.add_argument(
        "--weights_dir",
        default=None,
        help="folder holding torchvision's pretrained weight files, for --trained_model offline "
        "(default: torch's hub cache under $TORCH_HOME)",
    )
    p.add_argument(
        "--optim",
        default="ours",
        choices=sorted(PRESETS),
        help=f"ours = the paper's Table-1 attack (cosine, signed Adam lr 0.1, {DEFAULT_ITERATIONS['ours']} "
        f"iterations, TV {DEFAULT_TV['ours']:g}); zhu = DLG baseline (l2, L-BFGS, "
        f"{DEFAULT_ITERATIONS['zhu']} steps, no TV)",
    )
    p.add_argument("--cost_fn", default=None, help=f"{', '.join(objective_names())} (default from --optim)")
    p.add_argument("--indices", default="def", help="def, topN, firstN, lastN")
    p.add_argument("--weights", default="equal", help="equal, linear, exp")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument(
        "--max_iterations", type=int, default=None, help="default: 4800 (ours) / 500 L-BFGS steps (zhu)"
    )
    p.add_argument(
        "--tv",
        type=float,
        default=None,
        help=f"total-variation weight (default: {DEFAULT_TV['ours']:g} ours, {DEFAULT_TV['zhu']:g} zhu)",
    )
    p.add_argument("--lr", type=float, default=None, help="step size (default 0.1 ours, 1 zhu)")
    p.add_argument("--init", default="randn", help="randn, rand, zeros")
    p.add_argument("--filter", default="none", help="none, median")
    p.add_argument("--scoring_choice", default="loss", help="loss, tv, pixelmean, pixelmedian")
    p.add_argument("--unsigned", action="store_true", help="use raw (not signed) gradients with Adam")
    p.add_argument("--unboxed", action="store_true", help="do not project onto valid images")
    p.add_argument("--no_lr_decay", action="store_true")
    p.add_argument("--target_id", type=int, default=0, help="validation index; -1 = the demo photo")
    p.add_argument("--num_images", type=int, default=1, help="images in the user's batch (unique labels)")
    p.add_argument(
        "--num_exp",
        type=int,
        default=1,
        help="independent experiments (users) from target_id on, "
        "attacked in one batched call; 100 from 0 = the paper's 'first 100 validation images'",
    )
    p.add_argument(
        "--labels",
        default="known",
        choices=list(LABEL_STRATEGIES),
        help="known = granted to the attacker; idlg (1 image), joint (DLG soft labels), last-layer (K most "
        "negative last-layer row sums, unique labels)",
    )
    p.add_argument(
        "--accumulation",
        type=int,
        default=0,
        help="FedAvg local steps n of the user (0 = share the plain gradient, FedSGD)",
    )
    p.add_argument("--local_lr", type=float, default=1e-4, help="FedAvg local learning rate τ")
    p.add_argument(
        "--batch_size",
        type=int,
        default=0,
        help="FedAvg local mini-batch size (0 = full batch; must divide K)",
    )
    p.add_argument("--defense_clip", type=float, default=None, help="clip the shared update to this l2 norm")
    p.add_argument(
        "--defense_noise", type=float, default=0.0, help="std of Gaussian noise added to the update"
    )
    p.add_argument("--defense_prune", type=float, default=None, help="fraction of entries kept by magnitude")
    p.add_argument("--defense_bits", type=int, default=None, help="uniform quantisation to this many bits")
    p.add_argument("--defense_delta", type=float, default=1e-5, help="δ at which ε of the noise is reported")
    p.add_argument(
        "--defense_aware", action="store_true", help="the attacker simulates the defense's clipping/pruning"
    )
    p.add_argument(
        "--save_image", action="store_true", help="kept for the paper's CLI; PNGs are always written"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the untrained model and the attack's initialisation"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--output", default=None, help="output folder (default results/cli/<model>_<dataset>_<target>)"
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument(
        "--save_every",
        type=int,
        default=500,
        help="snapshot the attack every N iterations into <output>/.attack_state.pt (resumed on rerun)",
    )
    return p


def _attack_config(args) -> dict:
    overrides = dict(
        restarts=args.restarts,
        max_iterations=DEFAULT_ITERATIONS[args.optim] if args.max_iterations is None else args.max_iterations,
        total_variation=DEFAULT_TV[args.optim] if args.tv is None else args.tv,
        indices=args.indices,
        weights=args.weights,
        init=args.init,
        filter=args.filter,
        scoring_choice=args.scoring_choice,
        seed=args.seed,
    )
    if args.cost_fn is not None:
        overrides["cost_fn"] = args.cost_fn
    if args.lr is not None:
        overrides["lr"] = args.lr
    if args.unsigned:
        overrides["signed"] = False
    if args.unboxed:
        overrides["boxed"] = False
    if args.no_lr_decay:
        overrides["lr_decay"] = False
    return make_config(args.optim, **overrides)


def _targets(args, info) -> list[tuple[torch.Tensor, torch.Tensor, list]]:
    """Ground truth per experiment for the simulated users (never handed to the attacker)."""
    if args.num_exp < 1:
        raise ValueError(f"--num_exp must be at least 1, got {args.num_exp}")
    if args.target_id == -1:
        if args.num_images != 1 or args.num_exp != 1:
            raise ValueError(
                "--target_id -1 (the demo photo) is a single image: use --num_images 1 --num_exp 1"
            )
        image, label = data.demo_image(info)
        return [(image[None], torch.tensor([label]), ["demo"])]
    dataset = data.load_dataset(args.dataset, split="val", root=args.data_root, stats=args.stats)
    experiments = []
    for e in range(args.num_exp):
        start = args.target_id + e * args.num_images
        if args.num_images == 1:
            indices = data.consecutive_indices(dataset, start, 1)
        else:
            indices = data.unique_label_indices(dataset, start, args.num_images)
        experiments.append((*data.load_targets(dataset, indices), indices))
    return experiments


def _victim(args, info) -> tuple[torch.nn.Module, str]:
    name = args.model
    if info.name == "ImageNet":
        name = IMAGENET_MODEL_ALIASES.get(name, name)
    pretrained = (
        args.trained_model and args.checkpoint is None and name.startswith(("torchvision-", "efficientnet"))
    )
    if args.trained_model and args.checkpoint is None and not pretrained:
        raise ValueError(
            f"--trained_model for {name} needs --checkpoint PATH (a state dict of trained weights), e.g. "
            f"results/victims/{info.name}/{name}_e<epochs>.pt from `snakemake victims`, which takes the training "
            "split from a local archive or folder, else torchvision's download"
        )
    extra = {"weights_dir": args.weights_dir} if pretrained and args.weights_dir is not None else {}
    model = build_model(name, num_classes=info.num_classes, seed=args.seed, pretrained=pretrained, **extra)
    source = "pretrained" if pretrained else f"untrained (seed {args.seed})"
    if args.checkpoint is not None:
        state = load_tensors(args.checkpoint)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        _check_float_weights(state, model, args.checkpoint)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as error:
            first = str(error).splitlines()[0]
            raise ValueError(f"checkpoint {args.checkpoint} does not fit {name}: {first}") from None
        source = f"checkpoint {args.checkpoint}"
    return model, source


def _check_float_weights(state, model: torch.nn.Module, path: str) -> None:
    """Refuse integer-typed tensors for a model's floating-point weights: load_state_dict would cast them
    silently, and the attack would run on rounded weights."""
    if not isinstance(state, dict):
        return
    floating = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    for key, value in state.items():
        if key in floating and isinstance(value, torch.Tensor) and not value.is_floating_point():
            raise ValueError(
                f"checkpoint {path}: {key} has dtype {value.dtype}, but the model's weights are floating point; "
                "save the state dict as float32 (or float64)"
            )


def _check_writable(folder: Path) -> None:
    """Fail before any work if the output folder cannot be created or written; create nothing yet."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PermissionError(f"output folder {folder} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder} is not writable")


def _threat_model(args) -> tuple[Defense, dict]:
    """Check the FedAvg schedule, label strategy and defense before any work; returns the defense and its ε."""
    if args.num_images < 1:
        raise ValueError(f"--num_images must be at least 1, got {args.num_images}")
    check_schedule(args.accumulation, args.local_lr, args.batch_size, args.num_images, allow_zero_steps=True)
    if args.accumulation == 0 and args.batch_size != 0:
        raise ValueError(
            f"--batch_size {args.batch_size} needs --accumulation > 0 (the plain gradient uses the whole batch)"
        )
    if args.labels == "idlg" and args.num_images != 1:
        raise ValueError(
            f"--labels idlg recovers one image's label; got --num_images {args.num_images} (use joint or last-layer)"
        )
    defense = Defense(
        clip=args.defense_clip,
        noise=args.defense_noise,
        prune=args.defense_prune,
        bits=args.defense_bits,
        seed=args.seed,
    )
    privacy = defense.privacy(args.defense_delta) if defense.active else None
    return defense, {
        **defense.as_dict(),
        "active": defense.active,
        "aware": args.defense_aware,
        "privacy": privacy,
    }


def run(args) -> dict:
    """Validate everything, simulate the user, attack, score; write PNG + JSON. Returns the metrics."""
    cfg = _attack_config(args)
    defense, defense_report = _threat_model(args)
    known = {name.lower() for name in data.valid_dataset_names()}
    if args.dataset.lower() not in known and not args.dataset.lower().startswith("image-folder:"):
        raise ValueError(f"unknown dataset {args.dataset!r}; valid: {', '.join(data.valid_dataset_names())}")
    if args.dataset.lower().startswith("image-folder:") and args.stats is None:
        raise ValueError(
            f"--dataset {args.dataset} needs --stats (CIFAR10, CIFAR100 or ImageNet normalisation)"
        )
    info = data.dataset_info(args.stats or args.dataset.removeprefix("embedded-"))
    device = checked_device(args.device)
    output = Path(
        args.output
        or f"results/cli/{args.model}_{args.dataset.replace(':', '_').replace('/', '_')}_{args.target_id}"
    )
    _check_writable(output)
    model, source = _victim(args, info)
    experiments = _targets(args, info)
    with folder_lock(output):  # a second run into the same folder fails with one line instead of mixing files
        return _attack(
            args, cfg, (defense, defense_report), info, device, output, (model, source), experiments
        )


def _attack(args, cfg, defenses, info, device, output: Path, victim, experiments) -> dict:
    """The user's simulation, the attack and the outputs: everything after the checks, inside the folder's lock."""
    (defense, defense_report), (model, source) = defenses, victim
    model.to(device).eval()
    dm, ds = data.mean_std(info, device=device)
    truths = [images.to(device) for images, _, _ in experiments]
    labels = [lab.to(device) for _, lab, _ in experiments]
    threat = Threat(
        local_steps=args.accumulation,
        local_lr=args.local_lr,
        batch_size=args.batch_size,
        defense={k: v for k, v in defense.as_dict().items() if k != "seed"} if defense.active else None,
        defense_aware=args.defense_aware,
        labels=args.labels,
        delta=args.defense_delta,
    )
    results, call = run_users(  # user e: attack init and defense noise from seed + e
        model,
        (dm, ds),
        truths,
        labels,
        threat,
        cfg,
        seed=args.seed,
        state_path=output / ".attack_state.pt",  # rerunning a killed run resumes from its last snapshot
        save_every=args.save_every,
        progress=args.progress,
    )

    per_experiment = [
        {"indices": indices, **{k: result.record[k] for k in EXPERIMENT_KEYS}}
        for result, (_, _, indices) in zip(results, experiments, strict=True)
    ]
    psnr = [value for exp in per_experiment for value in exp["psnr"]]
    lpips = [exp["lpips"] for exp in per_experiment]
    result = {
        "model": args.model,
        "weights": source,
        "dataset": args.dataset,
        "psnr_summary": metrics.summarize(psnr),
        "ssim_summary": metrics.summarize([v for exp in per_experiment for v in exp["ssim"]]),
        "psnr_mean": metrics.summarize(psnr)["mean"],
        "ssim_mean": float(sum(exp["ssim_mean"] for exp in per_experiment) / len(per_experiment)),
        # LPIPS (AlexNet) over all images, or the "n/a: ..." reason of invgrad.metrics.lpips_or_reason
        "lpips_mean": next((v for v in lpips if isinstance(v, str)), None)
        or float(sum(sum(v) for v in lpips) / sum(len(v) for v in lpips)),
        "rec_loss": per_experiment[0]["rec_loss"],
        "label_strategy": args.labels,
        "label_accuracy_mean": float(
            sum(exp["label_accuracy"] for exp in per_experiment) / len(per_experiment)
        ),
        "pairing": per_experiment[0]["pairing"],
        "threat_model": call["threat_model"],
        "defense": defense_report,
        "experiments": per_experiment,
        "seed": call["seed"],
        "seconds": call["seconds"],
        "config": cfg,
        "device": str(device),
        "torch": torch.__version__,
        "command": "reconstruct_image.py " + " ".join(sys.argv[1:]),
    }
    save_figure(_figure(args, cfg, info, results, result), output / "reconstruction.png", dpi=150)
    save_json(result, output / "metrics.json")
    return result


def _figure(args, cfg: dict, info, results: list, result: dict):
    """The paper-style grid of every experiment's images, PSNR (and LPIPS where computed) under each."""
    method, summary = METHOD_NAMES.get(args.optim, args.optim), result["psnr_summary"]
    return records_grid(
        results,
        info.class_names,
        method,
        title=f"{args.model} on {args.dataset}: mean PSNR {summary['mean']:.2f} dB (n={summary['n']})",
        caption=f"{method}: {cfg['max_iterations']} iterations, TV {cfg['total_variation']:g}, "
        f"{cfg['restarts']} restart(s), seed {args.seed}; {result['weights']}",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (
        ValueError,
        ConfigError,
        FileNotFoundError,
        PermissionError,
        data.DataUnavailableError,
        DiskFullError,
        FolderBusyError,
        WeightsUnavailableError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = result["psnr_summary"]
    print(
        f"PSNR {summary['mean']:.2f} ± {summary['std']:.2f} dB (median {summary['median']:.2f}, "
        f"n={summary['n']}, failures {summary['failures']})  SSIM {result['ssim_mean']:.3f}  "
        f"{result['seconds']:.1f} s"
    )
    return 0
