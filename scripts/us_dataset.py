"""BreastMNIST model input and labels, computed by the platform's own preprocessing (no torch).

The training script and the tests import this, so the tensors the CNN is trained on are the
ones the preprocessor service computes for an 8-bit greyscale ultrasound image of the same
pixels (pipeline ``us_breast``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.common.pipelines import PipelineRegistry
from services.preprocessor.core import training_batch

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "us_breast"


def training_tensor(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28), exactly as the service computes."""
    pipeline = PipelineRegistry.load(ROOT / "pipelines").get(PIPELINE)
    return training_batch(images, pipeline)


def malignancy_labels(labels: np.ndarray) -> np.ndarray:
    """BreastMNIST labels (0 = malignant, 1 = normal or benign) -> 1 = malignant, as int64.

    The model's positive class is malignancy, so its logit and CAM speak for the finding the
    pipeline reports.
    """
    y = labels.reshape(-1).astype(np.int64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("BreastMNIST labels must be 0 or 1")
    return 1 - y
