"""invgrad: gradient inversion attacks (Geiping et al., 2020) as a library."""

from .attack import GradientReconstructor, parameters_of
from .config import DEFAULT_CONFIG, PRESETS, ConfigError, make_config
from .user import shared_gradient

__all__ = [
    "DEFAULT_CONFIG",
    "PRESETS",
    "ConfigError",
    "GradientReconstructor",
    "make_config",
    "parameters_of",
    "shared_gradient",
]
