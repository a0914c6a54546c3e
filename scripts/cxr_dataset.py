"""PneumoniaMNIST model input, computed by the platform's own preprocessing (no torch here).

The training script and the tests import this, so the tensors the CNN is trained on are the
ones the preprocessor service computes for an 8-bit chest radiograph of the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.common.pipelines import PipelineRegistry
from services.preprocessor.core import training_batch

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "cxr_pneumonia"


def training_tensor(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28), exactly as the service computes."""
    pipeline = PipelineRegistry.load(ROOT / "pipelines").get(PIPELINE)
    return training_batch(images, pipeline)
