"""Data sets for the out-of-distribution (OOD) score and the perturbation checks (no torch here).

The 28x28 models export an ``ood`` output (see ``medmnist_cnn.py``); this module builds the
inputs it is measured on, every one as the tensor the platform would compute:

- other MedMNIST-style sets (BreastMNIST for the CXR model, PneumoniaMNIST for the ultrasound
  model, OrganAMNIST CT for both), each through the *model's own* pipeline, as serving would
  if such an image were routed to it;
- the real DICOM corpus beside the repository, decoded by the platform's decoder
  (``services/decoder/core.py``, pydicom underneath) and preprocessed by the platform's
  preprocessor with the model's pipeline (``services/preprocessor/core.py``, ``prepare``),
  grouped by modality; chest radiographs are left out of the CXR model's sets;
- synthetic corruptions of a split (heavy noise, blur, inversion, constant images, strong gamma)
  and mild acquisition-like perturbations (for decision-flip rates), applied in the [0, 1]
  intensity domain and mapped back through the pipelines' ``(x - 0.5) / 0.5``.

Every random draw is seeded, so the sets (and the metrics computed on them) are deterministic.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from services.common.errors import InvalidInput
from services.common.images import DecodedImage
from services.common.pipelines import PipelineRegistry
from services.decoder.core import decode_instance
from services.preprocessor.core import prepare, training_batch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data"
MEDMNIST = SHARED / "medmnist"
ORGANAMNIST = SHARED / "ct/organamnist/organamnist.npz"
DICOM_DIR = SHARED / "dicom"
# Body parts that count as a chest radiograph (left out of the CXR model's OOD sets).
CHEST_PARTS = ("CHEST", "THORAX", "LUNG")
RADIOGRAPHS = ("CR", "DX")


def _pipeline(name: str):  # type: ignore[no-untyped-def]
    return PipelineRegistry.load(ROOT / "pipelines").get(name)


def medmnist_split(path: Path, split: str, pipeline: str) -> np.ndarray:
    """A MedMNIST-style split through a model's pipeline: float32 (N, 1, 28, 28)."""
    images = np.load(path)[f"{split}_images"]
    return training_batch(images, _pipeline(pipeline))


def to_unit(x: np.ndarray) -> np.ndarray:
    """Model input in [-1, 1] -> intensities in [0, 1] (undoes ``normalize 0.5 / 0.5``)."""
    u: np.ndarray = (x.astype(np.float64) + 1.0) / 2.0
    return u


def from_unit(u: np.ndarray) -> np.ndarray:
    """Intensities in [0, 1] (clipped) -> model input, float32."""
    x: np.ndarray = ((np.clip(u, 0.0, 1.0) - 0.5) / 0.5).astype(np.float32)
    return x


def _blur(u: np.ndarray, sigma: float) -> np.ndarray:
    out: np.ndarray = ndimage.gaussian_filter(u, sigma=(0, 0, sigma, sigma), mode="nearest")
    return out


def _resample(u: np.ndarray, size: int, order: int) -> np.ndarray:
    """Down to ``size`` px (area mean after an anti-alias blur) and back up with ``order``."""
    small = ndimage.zoom(_blur(u, 0.5 * 28 / size), (1, 1, size / 28, size / 28), order=1)
    up: np.ndarray = ndimage.zoom(small, (1, 1, 28 / size, 28 / size), order=order)
    return up[:, :, :28, :28]


def _rotate(u: np.ndarray, degrees: float) -> np.ndarray:
    out: np.ndarray = ndimage.rotate(
        u, degrees, axes=(2, 3), reshape=False, order=1, mode="nearest"
    )
    return out


def _zoom_crop(u: np.ndarray, fraction: float) -> np.ndarray:
    """Centre crop keeping ``fraction`` of the side, resized back to 28 px (bilinear)."""
    keep = round(28 * fraction)
    lo = (28 - keep) // 2
    crop = u[:, :, lo : lo + keep, lo : lo + keep]
    out: np.ndarray = ndimage.zoom(crop, (1, 1, 28 / keep, 28 / keep), order=1)
    return out[:, :, :28, :28]


def _contrast(u: np.ndarray, factor: float) -> np.ndarray:
    mean = u.mean(axis=(2, 3), keepdims=True)
    out: np.ndarray = mean + factor * (u - mean)
    return out


def corruptions(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Heavy synthetic corruptions of model inputs ``x``: images a 28x28 model should flag."""
    rng = np.random.default_rng(seed)
    u = to_unit(x)
    levels = rng.uniform(0.0, 1.0, size=(len(x), 1, 1, 1))
    return {
        "noise_sigma_0.5": from_unit(u + rng.normal(0.0, 0.5, size=u.shape)),
        "blur_sigma_3": from_unit(_blur(u, 3.0)),
        "inverted": from_unit(1.0 - u),
        "constant": from_unit(np.broadcast_to(levels, u.shape)),
        "gamma_4": from_unit(u**4.0),
        "gamma_0.25": from_unit(u**0.25),
    }


# Mild, acquisition-like perturbations: a robust model's decision should rarely change.
PERTURBATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gamma_0.7": lambda u, _: u**0.7,
    "gamma_1.4": lambda u, _: u**1.4,
    "contrast_0.7": lambda u, _: _contrast(u, 0.7),
    "blur_sigma_0.7": lambda u, _: _blur(u, 0.7),
    "noise_sigma_0.05": lambda u, rng: u + rng.normal(0.0, 0.05, size=u.shape),
    "resample_14px_nearest": lambda u, _: _resample(u, 14, 0),
    "resample_14px_cubic": lambda u, _: _resample(u, 14, 3),
    "rotate_10deg": lambda u, _: _rotate(u, 10.0),
    "zoom_crop_0.85": lambda u, _: _zoom_crop(u, 0.85),
}


def perturbations(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Each mild perturbation applied to every image of ``x`` (model inputs)."""
    rng = np.random.default_rng(seed)
    u = to_unit(x)
    return {name: from_unit(fn(u, rng)) for name, fn in PERTURBATIONS.items()}


def _dicom_group(modality: str, body_part: str) -> str:
    if modality in RADIOGRAPHS:
        chest = any(p in body_part.upper() for p in CHEST_PARTS)
        return "dicom_chest_radiograph" if chest else "dicom_radiograph_nonchest"
    if modality in ("CT", "MR"):
        return f"dicom_{modality.lower()}"
    return "dicom_other"


@cache
def dicom_sets(pipeline: str) -> dict[str, np.ndarray]:
    """The DICOM corpus through ``pipeline``, grouped by modality: {group: (N, 1, 28, 28)}.

    Instances the service would refuse for this pipeline (several samples per pixel, no pixel
    data, undecodable) are skipped; of a multi-frame instance the first frame is used, as a
    single-frame instance of the same content. Identical model inputs (one image stored with
    several transfer syntaxes) count once.
    """
    spec = _pipeline(pipeline)
    rows = list(csv.DictReader((DICOM_DIR / "MANIFEST.csv").open()))
    groups: dict[str, list[np.ndarray]] = {}
    seen: set[str] = set()
    for row in sorted(rows, key=lambda r: r["path"]):
        try:
            image = decode_instance((DICOM_DIR / row["path"]).read_bytes())
            if image.pixels.shape[3] != 1:
                continue
            first = DecodedImage(np.ascontiguousarray(image.pixels[:1]), image.attributes)
            tensor = prepare(first, spec).tensor
        except (InvalidInput, ValueError, OSError):
            continue
        if not np.isfinite(tensor).all():
            continue
        key = hashlib.sha256(np.round(tensor, 3).tobytes()).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        attrs = image.attributes
        group = _dicom_group(attrs.modality, attrs.body_part_examined)
        groups.setdefault(group, []).append(tensor)
    return {g: np.stack(v).astype(np.float32) for g, v in sorted(groups.items())}


def ood_sets(
    pipeline: str, own: np.ndarray, split: str, other: tuple[str, Path]
) -> dict[str, np.ndarray]:
    """The OOD sets a model is measured on, built from ``split`` ("val" or "test").

    ``own``: the model's own ``split`` (for the corruptions); ``other``: (name, file) of the
    other MedMNIST set. The DICOM corpus has no split and is used for test only (never to choose
    anything); on val the sets serve to choose the score.
    """
    name, path = other
    sets = {
        f"{name}_{split}": medmnist_split(path, split, pipeline),
        f"organamnist_ct_{split}": medmnist_split(ORGANAMNIST, split, pipeline),
    }
    if split == "test":
        chest = pipeline == "cxr_pneumonia"
        sets |= {
            k: v
            for k, v in dicom_sets(pipeline).items()
            if not (chest and k.endswith("chest_radiograph"))
        }
    sets |= {f"corrupted_{k}": v for k, v in corruptions(own, seed=1).items()}
    return sets
