"""GPU decoding of JPEG 2000 / HTJ2K (and baseline JPEG) frames with NVIDIA nvImageCodec.

An optional candidate of the codec chains (:mod:`.codecs`): it steps aside (NotApplicable) at
once unless the ``nvidia-nvimgcodec-cu12`` package is installed and a CUDA device answers, so
CPU deployments pay one failed import per process. nvJPEG2000 decodes lossless J2K radiographs
many times faster than OpenJPEG on the CPU by NVIDIA's published figures; its output takes the
same checks as every other candidate (size, dtype, then the chain's own rules).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

import numpy as np

PACKAGE = "nvidia.nvimgcodec"


class Unavailable(Exception):
    """No nvImageCodec here: not installed, or no usable CUDA device."""


@cache
def _load() -> tuple[Any, Any] | str:
    """(module, Decoder), or why there is none; tried once per process."""
    try:
        module = importlib.import_module(PACKAGE)
    except ImportError:
        return "nvImageCodec is not installed"
    try:
        return module, module.Decoder()
    except Exception as exc:  # no driver, no device, out of device memory
        return f"no usable GPU for nvImageCodec ({type(exc).__name__})"


def unavailable() -> str | None:
    """None when nvImageCodec can decode here, else why not."""
    state = _load()
    return state if isinstance(state, str) else None


def decode_frame(frame: bytes) -> np.ndarray:
    """One codestream to a (rows, cols[, samples]) host array with its stored bit depth and
    colour space (no conversion: the chain's colour step does that exactly once)."""
    state = _load()
    if isinstance(state, str):
        raise Unavailable(state)
    module, decoder = state
    params = module.DecodeParams(allow_any_depth=True, color_spec=module.ColorSpec.UNCHANGED)
    image = decoder.decode(frame, params=params)
    if image is None:
        raise ValueError("nvImageCodec could not decode the codestream")
    return np.asarray(image.cpu())
