"""The victim network: model zoo (:mod:`.models`), its training and verified checkpoints (:mod:`.training`)."""

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["available_models", "build_model", "count_parameters"], ".models"),
    **dict.fromkeys(["efficientnet_lite", "models", "training"], ""),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
