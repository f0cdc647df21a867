"""The attacker (the server): reconstruction engine, objectives, label recovery, analytic inversion, FedAvg
re-simulation and the defense-aware simulation. It imports from the user's side only the training loss
(:mod:`invgrad.user.loss`), the one definition both sides must share."""

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["GradientReconstructor", "Update", "parameters_of"], ".reconstructor"),
    **dict.fromkeys(["FedAvgReconstructor", "fedavg_simulator"], ".fedavg"),
    **dict.fromkeys(["LABEL_STRATEGIES", "idlg_label", "last_layer_labels"], ".labels"),
    **dict.fromkeys(["invert_linear", "recover_layer_input"], ".analytic"),
    "simulate_defense": ".defended",
    **dict.fromkeys(["Objective", "OBJECTIVES", "register_objective"], ".objectives"),
    **dict.fromkeys(
        [
            "analytic",
            "defended",
            "engine",
            "evaluation",
            "fedavg",
            "labels",
            "lbfgs",
            "memory",
            "objective_names",
            "objectives",
            "reconstructor",
            "resume",
            "simulator",
        ],
        "",
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
