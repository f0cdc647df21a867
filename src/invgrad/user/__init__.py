"""The user (the federated-learning client): the training loss, the gradient it shares (FedSGD), its local FedAvg
update and the defenses it applies before anything leaves the device."""

from .._lazy import lazy_exports

_EXPORTS = {
    "training_loss": ".loss",
    "shared_gradient": ".gradient",
    "local_update": ".fedavg",
    **dict.fromkeys(["Defense", "clip_update", "prune_update", "quantize_update"], ".defenses"),
    **dict.fromkeys(["defenses", "fedavg", "gradient", "loss"], ""),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
