"""The optional GPU codec (NVIDIA nvImageCodec) in the JPEG 2000 chains.

No GPU and no nvImageCodec here, so ``nvidia.nvimgcodec`` is a stand-in module (a mock of
what cannot run here): its Decoder decodes with OpenJPEG on the CPU, through the same calls
the real package offers (Decoder().decode(data, params=DecodeParams(...)), Image.cpu()).
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openjpeg
import pytest

from services.decoder import gpu
from services.decoder.core import decode_instance

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
J2K_LOSSLESS = "pydicom-testfiles/MR_small_jp2klossless.dcm"
J2K_LOSSY = "pydicom-testfiles/JPEG2000.dcm"


class _StandIn:
    """nvidia.nvimgcodec's surface used by services/decoder/gpu.py, decoding on the CPU."""

    def __init__(self, broken_device: bool = False, wrong_size: bool = False) -> None:
        self.broken_device, self.wrong_size = broken_device, wrong_size
        self.decoded: list[dict[str, Any]] = []
        self.module = types.ModuleType("nvidia.nvimgcodec")
        self.module.ColorSpec = types.SimpleNamespace(UNCHANGED="unchanged", RGB="rgb")  # type: ignore[attr-defined]
        self.module.DecodeParams = lambda **kw: kw  # type: ignore[attr-defined]
        self.module.Decoder = self._decoder  # type: ignore[attr-defined]

    def _decoder(self) -> Any:
        if self.broken_device:
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        stand_in = self

        class Decoder:
            def decode(self, data: bytes, params: dict[str, Any]) -> Any:
                stand_in.decoded.append(params)
                array = np.asarray(openjpeg.decode(data))
                if stand_in.wrong_size:
                    array = array[:-1]
                return types.SimpleNamespace(cpu=lambda: array)

        return Decoder()


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    gpu._load.cache_clear()
    yield
    gpu._load.cache_clear()


def _reference(relative: str) -> np.ndarray:
    assert gpu.unavailable() is not None  # computed on the CPU chain
    return decode_instance((CORPUS / relative).read_bytes()).pixels


@pytest.mark.parametrize("relative", [J2K_LOSSLESS, J2K_LOSSY])
def test_with_nvimgcodec_and_a_gpu_it_decodes_first(
    relative: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _reference(relative)
    fake = _StandIn()
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", fake.module)
    gpu._load.cache_clear()
    assert gpu.unavailable() is None
    image = decode_instance((CORPUS / relative).read_bytes())
    np.testing.assert_array_equal(image.pixels, expected)
    assert fake.decoded == [{"allow_any_depth": True, "color_spec": "unchanged"}]


def test_without_the_package_it_steps_aside() -> None:
    assert gpu.unavailable() == "nvImageCodec is not installed"
    image = decode_instance((CORPUS / J2K_LOSSLESS).read_bytes())
    assert image.pixels.shape == (1, 64, 64, 1)


def test_without_a_usable_gpu_it_steps_aside_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = _reference(J2K_LOSSLESS)
    fake = _StandIn(broken_device=True)
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", fake.module)
    gpu._load.cache_clear()
    assert gpu.unavailable() == "no usable GPU for nvImageCodec (RuntimeError)"
    np.testing.assert_array_equal(
        decode_instance((CORPUS / J2K_LOSSLESS).read_bytes()).pixels, expected
    )
    assert fake.decoded == []


def test_a_wrong_sized_gpu_result_falls_back_to_the_cpu_codecs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _reference(J2K_LOSSLESS)
    fake = _StandIn(wrong_size=True)
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", fake.module)
    gpu._load.cache_clear()
    with caplog.at_level(logging.WARNING, logger="services.decoder.codecs"):
        image = decode_instance((CORPUS / J2K_LOSSLESS).read_bytes())
    np.testing.assert_array_equal(image.pixels, expected)
    assert len(fake.decoded) == 1
    assert "with gdcm after nvimgcodec (frame 1 decoded to" in caplog.text
