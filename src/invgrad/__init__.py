"""invgrad: gradient inversion attacks (Geiping et al., 2020) as a library."""

from . import metrics
from .analytic import invert_linear, recover_layer_input
from .attack import GradientReconstructor, parameters_of
from .config import DEFAULT_CONFIG, PRESETS, ConfigError, make_config
from .defenses import Defense
from .federated import FedAvgReconstructor, local_update
from .labels import LABEL_STRATEGIES, last_layer_labels
from .user import shared_gradient

__all__ = [
    "DEFAULT_CONFIG",
    "LABEL_STRATEGIES",
    "PRESETS",
    "ConfigError",
    "Defense",
    "FedAvgReconstructor",
    "GradientReconstructor",
    "invert_linear",
    "last_layer_labels",
    "local_update",
    "make_config",
    "metrics",
    "parameters_of",
    "recover_layer_input",
    "shared_gradient",
]
