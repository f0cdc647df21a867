"""Data: constants (:mod:`.catalog`, torch-free), sources (:mod:`.sources`), the training-split resolution
(:mod:`.training_source`, :mod:`.download`), the first test images per class with exact ones substituted
(:mod:`.per_class`), decoded training tensors (:mod:`.trainset`) and target selection (:mod:`.targets`).

Every source returns a :class:`LabelledDataset`: items are ``(normalised image [C,H,W], int label)`` and the
object carries ``.info`` (a :class:`DatasetInfo`) and ``.labels`` so that target selection runs on labels alone.
Names are exported lazily: ``invgrad.data.catalog`` imports without torch.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        [
            "CIFAR100_CLASSES",
            "CIFAR10_CLASSES",
            "DATASETS",
            "NO_TRAINING_DATA",
            "DatasetInfo",
            "dataset_info",
            "image_folder_path",
        ],
        ".catalog",
    ),
    **dict.fromkeys(
        [
            "LabelledDataset",
            "default_root",
            "denormalize",
            "embedded_data_dir",
            "load_dataset",
            "load_image",
            "mean_std",
            "normalize",
            "source_root",
            "valid_dataset_names",
        ],
        ".sources",
    ),
    **dict.fromkeys(
        ["FirstPerClassDataset", "embedded_exact_files", "exact_count", "first_per_class"], ".per_class"
    ),
    **dict.fromkeys(["TrainingSource", "resolve_training_source"], ".training_source"),
    **dict.fromkeys(["DataUnavailableError", "extract_archive"], ".download"),
    **dict.fromkeys(
        ["consecutive_indices", "demo_image", "load_targets", "unique_label_indices"], ".targets"
    ),
    **dict.fromkeys(
        ["catalog", "download", "per_class", "sources", "targets", "training_source", "trainset"], ""
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
