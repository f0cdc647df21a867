"""Label recovery from the last layer's gradient (iDLG for one image, the K smallest row sums for K images)."""

from __future__ import annotations

import yaml

from .base import Experiment

SCHEMA = yaml.safe_load(
    """
type: object
additionalProperties: false
required: [enabled, dataset, models, batch_sizes, trials]
properties:
  enabled: {$ref: "#/$defs/enabled"}
  dataset: {$ref: "#/$defs/dataset"}
  models: {$ref: "#/$defs/models"}
  batch_sizes: {type: array, minItems: 1, uniqueItems: true, items: {type: integer, minimum: 1, maximum: 100}}
  trials: {$ref: "#/$defs/count"}
"""
)

CAPTION = (
    "Label recovery from the last layer's gradient: fraction of the true labels recovered per model and "
    "batch size."
)

EXPERIMENT = Experiment(
    name="labels",
    schema=SCHEMA,
    script="scripts/labels_table.py",
    columns=("model", "batch_size", "rule"),
    figures=("labels_accuracy",),
    caption=CAPTION,
)
