"""The attacker's public API, with the paper's quick-start signature.

The attacker receives the model, the shared update and public metadata (labels only when the threat model grants
them) — never the ground-truth images. All input checks run before any optimisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import make_config
from .defended import defended_simulator, is_defense
from .engine import Engine
from .labels import LABEL_STRATEGIES, idlg_label, last_layer_labels
from .objectives import layer_weights
from .simulator import Simulator, gradient_simulator, split_parameters

Update = Sequence[torch.Tensor]


def check_float_parameters(model: torch.nn.Module) -> None:
    """Refuse a model whose weights are not floating point: integer weights (e.g. an int64 state dict) have no
    gradient to invert, and casting them silently would attack a different model than the user's."""
    for name, parameter in model.named_parameters():
        if not parameter.is_floating_point():
            raise ValueError(
                f"model parameter {name!r} has dtype {parameter.dtype}: the attack needs floating-point weights "
                "(float32 or float64); convert the checkpoint, e.g. model.float()"
            )


def check_update_scale(update: Sequence[torch.Tensor], index: int) -> None:
    """Refuse an update whose squared norm over- or underflows in its dtype: the objective divides by that norm,
    so an update scaled by 1e18 (norm² = inf) leaves every loss at 1.0 and a tiny one (norm² = 0) at nan, while the
    attack would look like it ran."""
    squared = sum(t.double().square().sum().to(t.dtype) for t in update)
    nonzero = any(bool(t.ne(0).any()) for t in update)
    if not torch.isfinite(squared) or (nonzero and squared == 0):
        norm = math.sqrt(sum(float(t.double().square().sum()) for t in update))
        raise ValueError(
            f"update {index}: its norm ({norm:.3g}) over- or underflows "
            f"{update[0].dtype} in the objective (norm² = {float(squared):g}); rescale the update "
            "(e.g. divide it by its norm) before the attack"
        )


def _as_stat_tensor(values: Any) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32)
    return t.reshape(-1, 1, 1) if t.dim() != 3 else t


class GradientReconstructor:
    """Reconstruct images from a shared gradient (FedSGD) — ``GradientReconstructor(model, (dm, ds), config)``.

    ``reconstruct(input_gradient, labels, img_shape)`` returns ``(images, stats)`` with images in normalised
    coordinates; ``reconstruct_many`` attacks several independent updates in one batched call.

    ``config``: a mapping of :data:`invgrad.config.DEFAULT_CONFIG` keys, or a preset name. Without one the
    defaults are the official code's ``DEFAULT_CONFIG`` (unsigned Adam, TV 1e-1, 4,800 iterations), which is not
    the paper's Table-1 attack: for that pass ``config="ours"`` (cosine, signed Adam lr 0.1, 4,800 iterations,
    TV 1e-2 on LeNet (Zhu)), or ``"zhu"`` for the DLG baseline. The CLI's default is ``"ours"``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        mean_std: tuple[Any, Any],
        config: Mapping[str, Any] | str | None = None,
        num_images: int = 1,
        progress: bool = False,
        defense: Any = None,
    ):
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        if defense is not None and not is_defense(defense):
            raise ValueError(f"defense must be an invgrad.user.defenses.Defense (or None), got {defense!r}")
        check_float_parameters(model)
        self.model, self.num_images, self.progress = model, num_images, progress
        # A defense the attacker knows of: its clipping/pruning are applied to the simulated update too.
        self.defense = defense
        self.config = make_config(config)
        self.param_shapes = [p.shape for p in model.parameters() if p.requires_grad]
        reference = next(model.parameters())
        self.device, self.dtype = reference.device, reference.dtype
        dm, ds = mean_std
        self.dm = _as_stat_tensor(dm).to(self.device, self.dtype)
        self.ds = _as_stat_tensor(ds).to(self.device, self.dtype)

    # -- what differs between the FedSGD and FedAvg attacks -------------------------------------------------
    def _simulator(self) -> Simulator:
        return self._defended(gradient_simulator(self.model))

    def _defended(self, simulate: Simulator) -> Simulator:
        """The simulator as an attacker aware of the defense sees it (unchanged when unaware)."""
        return simulate if self.defense is None else defended_simulator(simulate, self.defense)

    def _label_evidence(self, update: Update) -> list[torch.Tensor]:
        """A gradient-like view of the update for the label rules (the gradient itself for FedSGD)."""
        return list(update)

    def _recover_labels(self, update: Update, strategy: str = "idlg") -> torch.Tensor:
        evidence = self._label_evidence(update)
        if strategy == "last-layer":
            return last_layer_labels(evidence, self.num_images)
        if self.num_images != 1:
            raise ValueError(
                f"labels=None / 'idlg' recovers the label of one image only (iDLG); got num_images={self.num_images}: "
                "pass the labels, or labels='joint' or 'last-layer'"
            )
        return idlg_label(evidence).reshape(1)

    def describe(self) -> dict[str, Any]:
        """The threat model this reconstructor assumes (reported in stats)."""
        return {"threat_model": "fedsgd"}

    # -- public API ------------------------------------------------------------------------------------------
    def reconstruct(
        self,
        input_gradient: Update,
        labels: torch.Tensor | Sequence[int] | str | None,
        img_shape: Sequence[int] = (3, 32, 32),
        restart_chunk: int | None = None,
        state_path: str | Path | None = None,
        save_every: int = 500,
        memory_limit: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Reconstruct one user's K = ``num_images`` images from its shared gradient.

        Args:
            input_gradient: one tensor per trainable parameter, in ``model.parameters()`` order (the gradient
                of the user's loss; checked for shape and finiteness before any work).
            labels: the K labels when the threat model grants them, else a strategy: ``None`` / ``"idlg"``
                (iDLG, K = 1), ``"last-layer"`` (K most negative last-layer row sums, unique labels) or
                ``"joint"`` (DLG: label logits optimised with the images).
            img_shape: (C, H, W) of one image.
            restart_chunk: at most this many restarts optimised at once (default: all that fit).
            state_path, save_every, memory_limit: as in :meth:`reconstruct_many`.

        Returns:
            ``(images, stats)``: images [K, C, H, W] in normalised coordinates (de-normalise with
            :func:`invgrad.metrics.to_unit_range`; NaN where every restart failed) and the stats of
            :meth:`reconstruct_many` for this one update (its per-experiment entries unwrapped).

        With labels not granted, image i is the reconstruction for ``stats["labels"][i]``, and the recovered
        labels come back in sorted-label order (``"last-layer"``) or the optimiser's order (``"joint"``), not
        the user's: score with ``invgrad.metrics.image_metrics(rec, truth, match=True)`` (Hungarian pairing).
        """
        many_labels = labels if labels is None or isinstance(labels, str) else [labels]
        images, stats = self.reconstruct_many(
            [input_gradient],
            many_labels,
            img_shape,
            restart_chunk,
            state_path,
            save_every,
            memory_limit=memory_limit,
        )
        single = {key: (value[0] if key in _PER_EXPERIMENT else value) for key, value in stats.items()}
        return images[0], single

    def reconstruct_many(
        self,
        input_gradients: Sequence[Update],
        labels: Sequence[Any] | None,
        img_shape: Sequence[int] = (3, 32, 32),
        restart_chunk: int | None = None,
        state_path: str | Path | None = None,
        save_every: int = 500,
        snapshots: Sequence[int] = (),
        memory_limit: int | None = None,
        keep_state: bool = False,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """E independent experiments (one update each) in one batched optimisation; images [E, K, C, H, W].

        ``input_gradients``: E updates, each one tensor per trainable parameter; ``img_shape``: (C, H, W);
        ``restart_chunk``: at most this many restarts optimised at once.

        Returns ``(images, stats)``: images [E, K, C, H, W] in normalised coordinates (an experiment whose every
        restart failed is NaN), and ``stats`` with, per experiment (lists of length E, tensors with leading E):
        ``restart_losses`` / ``restart_tv`` (each restart's final reconstruction loss without TV, and its TV),
        ``chosen`` (index of the selected restart; None when none was finite or for the pixelmean/pixelmedian
        consensus), ``failures`` (non-finite restarts), ``opt`` (the chosen restart's loss, NaN if none),
        ``labels`` (tensor [E, K]: the labels the images were reconstructed for: given, recovered or the joint
        argmax) and, for ``labels='joint'``, ``label_probs`` ([E, K, classes] soft labels of the chosen
        restart); and for the whole call: ``snapshots``, ``labels_known``, ``label_strategy``, ``threat_model``,
        ``seed`` (the one used, drawn when the config's is None), ``iterations``, ``seconds`` and ``config``.

        ``state_path``: snapshot the optimisation there every ``save_every`` iterations and resume from it if it
        exists (a preempted job continues where it stopped and ends bit-identical on CPU); removed on success
        unless ``keep_state`` (without ``lr_decay``, a run of the same attack at a larger budget continues it). A
        state of another attack (another config, threat model, update, labels, seed, device or dtype) is set
        aside as ``<state>.stale`` with one logged line, and the attack starts fresh.
        ``snapshots``: iteration counts at which the chosen restart's iterate is also returned, in
        ``stats["snapshots"]`` ({iteration: images [E, K, C, H, W]}), e.g. ``engine.snapshot_iterations(n)``.
        ``memory_limit``: bytes the batched candidates may use (default: a CUDA device's free memory; no limit on
        CPU); restarts × updates are cut into groups that fit, and a group that runs out of memory is split.

        ``labels``: one label set per update (known labels), or a strategy for labels not granted — ``None`` /
        ``'idlg'`` (iDLG, one image), ``'last-layer'`` (K most negative last-layer row sums, unique labels) or
        ``'joint'`` (DLG: label logits optimised jointly with the images; the chosen restart's argmax is reported).
        Recovered labels come back sorted by class (``'last-layer'``) or in the optimiser's order (``'joint'``),
        so image k of an experiment need not be the user's image k: score with ``match=True``
        (:func:`invgrad.metrics.image_metrics`, Hungarian pairing), as :mod:`invgrad.replication.cells` does.
        """
        img_shape = tuple(int(s) for s in img_shape)
        if len(input_gradients) == 0:
            raise ValueError("no update to attack: input_gradients is empty")
        strategy = "idlg" if labels is None else labels if isinstance(labels, str) else "known"
        if strategy not in LABEL_STRATEGIES:
            raise ValueError(f"unknown label strategy {strategy!r}; choose one of {list(LABEL_STRATEGIES)}")
        if strategy == "known" and isinstance(labels, str):
            raise ValueError(
                "labels='known' needs the label values themselves: pass one label set per update"
            )
        updates = [self._check_update(u, i) for i, u in enumerate(input_gradients)]
        num_classes = self._probe(img_shape)
        learn_labels = None
        if strategy in ("last-layer", "joint") and self.num_images > num_classes:
            raise ValueError(
                f"labels={strategy!r} assumes unique labels: num_images={self.num_images} exceeds the "
                f"{num_classes} classes of the model"
            )
        if strategy == "joint":
            label_rows = [torch.zeros(self.num_images, dtype=torch.long) for _ in updates]  # placeholders
            labels_known, learn_labels = False, num_classes
        elif strategy != "known":
            label_rows = [self._recover_labels(u, strategy) for u in updates]
            labels_known = False
        else:
            if len(labels) != len(updates):
                raise ValueError(f"got {len(labels)} label sets for {len(updates)} updates")
            label_rows = [self._check_labels(lab, num_classes) for lab in labels]
            labels_known = True
        label_tensor = torch.stack(label_rows).to(self.device)
        targets = [torch.stack(per_param) for per_param in zip(*updates, strict=True)]
        weights = torch.stack(
            [layer_weights(self.config["indices"], self.config["weights"], u) for u in updates]
        )
        seed = self.config["seed"]
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        was_training = self.model.training
        self.model.eval()
        try:
            engine = Engine(self.model, self._simulator(), self.config, self.dm, self.ds)
            result = engine.run(
                targets,
                label_tensor,
                weights.to(self.device, self.dtype),
                img_shape,
                self.num_images,
                seed,
                restart_chunk,
                self.progress,
                learn_labels=learn_labels,
                state_path=state_path,
                save_every=save_every,
                snapshot_at=snapshots,
                memory_limit=memory_limit,
                keep_state=keep_state,
            )
        finally:
            self.model.train(was_training)
        images, stats = self._select(result)
        stats["snapshots"] = {
            iteration: torch.stack(
                [
                    kept[e, c] if c is not None else torch.full_like(kept[e, 0], math.nan)
                    for e, c in enumerate(stats["chosen"])
                ]
            )
            for iteration, kept in (result.snapshots or {}).items()
        }
        if result.label_logits is not None:
            label_tensor, stats["label_probs"] = self._joint_labels(result, stats["chosen"])
        stats.update(
            labels=label_tensor.cpu(),
            labels_known=labels_known,
            label_strategy=strategy,
            threat_model=self.describe(),
            seed=seed,
            iterations=result.iterations,
            seconds=result.seconds,
            config=dict(self.config),
        )
        return images, stats

    @staticmethod
    def _joint_labels(result, chosen: list[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmax labels [E, K] and soft labels of the chosen restart (lowest finite loss when none was chosen)."""
        rows, probs = [], []
        for e, c in enumerate(chosen):
            if c is None:
                losses = torch.nan_to_num(result.reconstruction_loss[e], nan=math.inf)
                c = int(torch.argmin(losses))
            p = torch.softmax(result.label_logits[e, c], dim=-1)
            rows.append(p.argmax(dim=-1))
            probs.append(p.cpu())
        return torch.stack(rows), torch.stack(probs)

    # -- selection -------------------------------------------------------------------------------------------
    def _select(self, result) -> tuple[torch.Tensor, dict[str, Any]]:
        """Lowest reconstruction loss (no TV) among finite restarts; non-finite restarts are never chosen."""
        choice = self.config["scoring_choice"]
        candidates = result.candidates
        finite = torch.isfinite(result.reconstruction_loss) & torch.isfinite(candidates).flatten(2).all(dim=2)
        scores = {"loss": result.reconstruction_loss, "tv": result.total_variation}.get(choice)
        chosen, images = [], []
        for e in range(candidates.shape[0]):
            valid = torch.nonzero(finite[e]).flatten()
            if valid.numel() == 0:  # every restart failed: return a NaN image, counted as a failure
                chosen.append(None)
                images.append(torch.full_like(candidates[e, 0], math.nan))
            elif scores is None:  # pixel-wise consensus of the finite restarts
                chosen.append(None)
                pool = candidates[e, valid]
                images.append(pool.mean(0) if choice == "pixelmean" else pool.median(0).values)
            else:
                best = valid[torch.argmin(scores[e, valid])]
                chosen.append(int(best))
                images.append(candidates[e, best])
        losses = result.reconstruction_loss.cpu()
        stats = {
            "restart_losses": [row.tolist() for row in losses],
            "restart_tv": [row.tolist() for row in result.total_variation.cpu()],
            "chosen": chosen,
            "failures": [int((~row).sum()) for row in finite.cpu()],
            "opt": [float(losses[e, c]) if c is not None else math.nan for e, c in enumerate(chosen)],
        }
        return torch.stack(images), stats

    # -- input checks (before any work) ---------------------------------------------------------------------
    def _check_update(self, update: Update, index: int) -> list[torch.Tensor]:
        update = list(update)
        if len(update) != len(self.param_shapes):
            raise ValueError(
                f"update {index} has {len(update)} tensors but the model has {len(self.param_shapes)} trainable "
                "parameters: it must list one tensor per parameter, in model.parameters() order"
            )
        checked = []
        for i, (tensor, shape) in enumerate(zip(update, self.param_shapes, strict=True)):
            tensor = torch.as_tensor(tensor)
            if tensor.shape != shape:
                raise ValueError(
                    f"update {index}, tensor {i}: shape {tuple(tensor.shape)} != parameter {tuple(shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise ValueError(
                    f"update {index}, tensor {i} contains NaN or inf: nothing to reconstruct from"
                )
            checked.append(tensor.detach().to(self.device, self.dtype))
        check_update_scale(checked, index)
        return checked

    def _probe(self, img_shape: tuple[int, ...]) -> int:
        """Run the model once on blank images: the shape must fit, and the output gives the class count."""
        if len(img_shape) != 3:
            raise ValueError(f"img_shape must be (channels, height, width), got {img_shape}")
        if self.dm.shape[0] not in (1, img_shape[0]):
            raise ValueError(f"mean/std have {self.dm.shape[0]} channels but img_shape has {img_shape[0]}")
        probe = torch.zeros(self.num_images, *img_shape, device=self.device, dtype=self.dtype)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                logits = self.model(probe)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise ValueError(f"the model cannot take images of shape {img_shape}: {first_line}") from None
        finally:
            self.model.train(was_training)
        return int(logits.shape[-1])

    def _check_labels(self, labels: Any, num_classes: int) -> torch.Tensor:
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.numel() != self.num_images:
            raise ValueError(f"got {labels.numel()} labels for num_images={self.num_images}")
        if labels.is_floating_point() or labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must be integers in [0, {num_classes}), got {labels.tolist()}")
        return labels.long()


_PER_EXPERIMENT = {"restart_losses", "restart_tv", "chosen", "failures", "opt", "labels", "label_probs"}


def parameters_of(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's trainable parameters in the order updates list them."""
    return list(split_parameters(model)[0].values())
