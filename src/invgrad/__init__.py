"""invgrad: gradient inversion attacks (Geiping et al., 2020) as a library.

The packages follow the flow: :mod:`.data` → :mod:`.victim` → :mod:`.user` (the client's update and defenses) →
:mod:`.attack` (the server's reconstruction) → :mod:`.metrics` → :mod:`.replication` (plan, cells, tables, claims).
Names are exported lazily, so ``import invgrad`` imports no torch until an attack name is used.
"""

from ._lazy import lazy_exports

_EXPORTS = {
    "invert_linear": ".attack.analytic",
    "recover_layer_input": ".attack.analytic",
    "GradientReconstructor": ".attack.reconstructor",
    "parameters_of": ".attack.reconstructor",
    "FedAvgReconstructor": ".attack.fedavg",
    "LABEL_STRATEGIES": ".attack.labels",
    "last_layer_labels": ".attack.labels",
    **dict.fromkeys(["DEFAULT_CONFIG", "PRESETS", "ConfigError", "make_config"], ".config"),
    "Defense": ".user.defenses",
    "local_update": ".user.fedavg",
    "shared_gradient": ".user.gradient",
    **dict.fromkeys(
        ["attack", "data", "io", "metrics", "plot", "protocol", "replication", "user", "victim"], ""
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
