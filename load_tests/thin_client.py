"""The reference thin client: what a vendor would write instead of calling the platform.

pydicom with its default pixel plugins, the first window (else min-max), MONOCHROME1
inversion, a centre square crop, PIL's BOX resize to 28x28 on float32, (x - 0.5) / 0.5, and one
tritonclient gRPC ``infer`` of ``cxr_pneumonia``. No limits, no routing, no checks: the honest
baseline for the platform's cost (load_tests/bench_platform.py).
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import tritonclient.grpc as triton
from PIL import Image

MODEL = "cxr_pneumonia"


def model_input(dicom: bytes) -> np.ndarray:
    """One DICOM file -> the (1, 1, 28, 28) float32 model input."""
    ds = pydicom.dcmread(BytesIO(dicom))
    x = ds.pixel_array.astype(np.float32)
    x = x * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        x = np.clip((x - (c - w / 2)) / w, 0.0, 1.0)
    else:
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = 1.0 - x
    rows, cols = x.shape
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    square = np.ascontiguousarray(x[top : top + side, left : left + side], dtype=np.float32)
    small = np.asarray(
        Image.fromarray(square, mode="F").resize((28, 28), Image.Resampling.BOX), np.float32
    )
    return ((small - 0.5) / 0.5)[None, None]


class ThinClient:
    """One Triton connection; safe to share between threads (tritonclient's gRPC client is)."""

    def __init__(self, triton_address: str) -> None:
        self._client = triton.InferenceServerClient(triton_address)

    def probability(self, dicom: bytes) -> float:
        batch = model_input(dicom)
        request = triton.InferInput("image", list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        result = self._client.infer(
            MODEL, [request], outputs=[triton.InferRequestedOutput("logits")]
        )
        logit = float(result.as_numpy("logits").reshape(-1)[0])
        return 1.0 / (1.0 + np.exp(-logit))

    def close(self) -> None:
        self._client.close()
