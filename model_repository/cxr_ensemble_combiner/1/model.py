"""Triton python-backend model: weighted average of the CXR ensemble members' logits.

Used by the ``cxr_pneumonia_ensemble`` ensemble: each member (``cxr_pneumonia_m1`` ...) maps the
``image`` to its pneumonia logit, and this model combines inputs ``logits_0 .. logits_{K-1}``
(each [N, 1] float32) into ``logits`` = sum_i w_i * logits_i with the weights from the config's
``weights`` parameter (a JSON list, normalised here to sum to 1). Averaging logits (not
probabilities) keeps the output a logit, so the platform's sigmoid and threshold apply as for
``cxr_pneumonia``.

``parse_weights`` and ``weighted_average`` are plain numpy so that the training script (for the
offline ensemble metrics) and unit tests use exactly this arithmetic; Triton's
``triton_python_backend_utils`` is imported only inside ``execute``, where the python backend
provides it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def input_names(count: int) -> list[str]:
    """The member inputs, in weight order."""
    return [f"logits_{i}" for i in range(count)]


def parse_weights(config: dict[str, Any]) -> np.ndarray:
    """Member weights from the model config's ``weights`` parameter, normalised to sum 1."""
    try:
        raw = config["parameters"]["weights"]["string_value"]
    except KeyError as err:
        raise ValueError("the combiner needs a 'weights' parameter (JSON list)") from err
    weights = np.asarray(json.loads(raw), dtype=np.float64)
    inputs = sorted(i["name"] for i in config["input"])
    if weights.ndim != 1 or inputs != sorted(input_names(len(weights))):
        raise ValueError(f"{len(weights)} weights do not match the inputs {inputs}")
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero: {raw}")
    normalised: np.ndarray = weights / weights.sum()
    return normalised


def weighted_average(logits: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """sum_i weights[i] * logits[i], accumulated in float64, returned as float32."""
    if len(logits) != len(weights):
        raise ValueError(f"{len(logits)} member outputs for {len(weights)} weights")
    stacked = np.stack([np.asarray(x, dtype=np.float64) for x in logits])
    combined: np.ndarray = np.tensordot(weights, stacked, axes=1).astype(np.float32)
    return combined


class TritonPythonModel:
    """Triton's python-backend entry point."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self._weights = parse_weights(config)
        self._inputs = input_names(len(self._weights))

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            logits = [
                pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self._inputs
            ]
            combined = weighted_average(logits, self._weights)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", combined)])
            )
        return responses
