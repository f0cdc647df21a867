"""Analytic input recovery of a biased fully-connected layer (arXiv 2003.14053 §3): no attack, a computation."""

from __future__ import annotations

import yaml

from ..claimdefs import Claim, Select, eq
from .base import Experiment

SCHEMA = yaml.safe_load(
    """
type: object
additionalProperties: false
required: [enabled, models, batch_sizes, dtypes, trials]
properties:
  enabled: {$ref: "#/$defs/enabled"}
  models: {$ref: "#/$defs/models"}
  batch_sizes: {type: array, minItems: 1, uniqueItems: true, items: {type: integer, minimum: 1, maximum: 256}}
  dtypes: {type: array, minItems: 1, uniqueItems: true, items: {type: string, enum: [float32, float64]}}
  trials: {$ref: "#/$defs/count"}
"""
)

CLAIMS = (
    Claim(
        "5",
        "The input of a biased FC layer is analytically recoverable (one image)",
        "exact (proof); no number",
        "within_tolerance",
        (Select("analytic", eq(batch_size=1)),),
        per=("dtype",),
    ),
)

CAPTION = (
    "Analytic FC-layer inversion (arXiv 2003.14053, the fully-connected-layer proposition): relative error of the recovered layer input, per model, "
    "batch size and precision."
)

EXPERIMENT = Experiment(
    name="analytic",
    schema=SCHEMA,
    script="scripts/analytic_table.py",
    columns=("model", "layer", "input_dim", "batch_size", "dtype", "rel_error_max"),
    figures=("analytic_error",),
    claims=CLAIMS,
    caption=CAPTION,
)
