"""INT8 calibration: batches of preprocessed inputs from an ``.npz``, and the TensorRT calibrator.

The ``.npz`` holds one array per model input, named like the input, shaped
``(samples, *dims)`` with the model's per-item dims (the same tensors the preprocessor sends to
Triton, stacked). ``CalibrationBatches`` is pure numpy; ``make_calibrator`` wraps it in a
``tensorrt.IInt8EntropyCalibrator2`` that copies each batch to GPU memory through the CUDA runtime
bindings (``cuda-python``), so it needs a GPU node.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.trt.profiles import BuildError, Shape, TensorRTUnavailable

# numpy dtypes of the Triton data types calibration data may have.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "TYPE_FP32": np.dtype(np.float32),
    "TYPE_FP16": np.dtype(np.float16),
    "TYPE_INT8": np.dtype(np.int8),
    "TYPE_UINT8": np.dtype(np.uint8),
    "TYPE_INT32": np.dtype(np.int32),
    "TYPE_BOOL": np.dtype(np.bool_),
}


class CalibrationBatches:
    """Fixed-size batches over the samples of an ``.npz``; a trailing partial batch is dropped
    (a calibration batch must match the calibration profile's shape exactly)."""

    def __init__(
        self, path: Path, inputs: Mapping[str, tuple[Shape, np.dtype[Any]]], batch_size: int
    ) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as err:
            raise BuildError(f"cannot read calibration data {path}: {err}") from err
        if sorted(arrays) != sorted(inputs):
            raise BuildError(
                f"calibration data {path.name} has arrays {sorted(arrays)} but the model's "
                f"inputs are {sorted(inputs)}"
            )
        counts = set()
        self._arrays: dict[str, npt.NDArray[Any]] = {}
        for name, (dims, dtype) in inputs.items():
            array = arrays[name]
            if tuple(array.shape[1:]) != tuple(dims) or array.ndim != len(dims) + 1:
                raise BuildError(
                    f"calibration array {name!r} has shape {array.shape}; expected "
                    f"(samples, {', '.join(map(str, dims))})"
                )
            if array.dtype.kind != dtype.kind:  # float64 -> float32 is fine, int -> float is not
                raise BuildError(f"calibration array {name!r} is {array.dtype}, input is {dtype}")
            self._arrays[name] = np.ascontiguousarray(array, dtype=dtype)
            counts.add(int(array.shape[0]))
        if len(counts) != 1:
            raise BuildError(f"calibration arrays hold different sample counts: {sorted(counts)}")
        self.samples = counts.pop()
        if self.samples < 1:
            raise BuildError(f"calibration data {path.name} holds no samples")
        if batch_size < 1:
            raise BuildError(f"calibration batch size must be at least 1, got {batch_size}")
        self.batch_size = min(batch_size, self.samples)
        self.count = self.samples // self.batch_size

    def shapes(self) -> dict[str, Shape]:
        """Per input, the shape of one calibration batch (the calibration profile's shape)."""
        return {name: (self.batch_size, *a.shape[1:]) for name, a in self._arrays.items()}

    def __iter__(self) -> Iterator[dict[str, npt.NDArray[Any]]]:
        for start in range(0, self.count * self.batch_size, self.batch_size):
            yield {name: a[start : start + self.batch_size] for name, a in self._arrays.items()}


class CudaMemory:
    """Device buffers through the CUDA runtime bindings of ``cuda-python``."""

    def __init__(self, runtime: Any) -> None:
        self._rt = runtime

    @classmethod
    def load(cls) -> CudaMemory:
        for module in ("cuda.bindings.runtime", "cuda.cudart"):
            try:
                return cls(importlib.import_module(module))
            except ImportError:
                continue
        raise TensorRTUnavailable(
            "INT8 calibration copies batches to the GPU with cuda-python, which is not "
            "installed (GPU nodes only): pip install cuda-python"
        )

    def _check(self, result: tuple[Any, ...], what: str) -> tuple[Any, ...]:
        if result[0] != self._rt.cudaError_t.cudaSuccess:
            raise BuildError(f"CUDA {what} failed: {result[0]}")
        return result[1:]

    def alloc(self, nbytes: int) -> int:
        (pointer,) = self._check(self._rt.cudaMalloc(nbytes), "cudaMalloc")
        return int(pointer)

    def upload(self, pointer: int, host: npt.NDArray[Any]) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpy(pointer, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")

    def free(self, pointer: int) -> None:
        self._check(self._rt.cudaFree(pointer), "cudaFree")


def make_calibrator(
    trt: Any, batches: CalibrationBatches, memory: CudaMemory, cache: Path | None
) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` feeding ``batches``; it reuses (and writes) the
    calibration cache at ``cache`` when given. Call its ``close()`` after the build."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device: dict[str, int] = {}
            self.batches_served = 0

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str], *_: object) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            pointers = []
            for name in names:
                host = batch[name]
                if name not in self._device:
                    self._device[name] = memory.alloc(host.nbytes)
                memory.upload(self._device[name], host)
                pointers.append(self._device[name])
            self.batches_served += 1
            return pointers

        def read_calibration_cache(self, *_: object) -> bytes | None:
            if cache is not None and cache.is_file():
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_bytes(bytes(data))

        def close(self) -> None:
            for pointer in self._device.values():
                memory.free(pointer)
            self._device.clear()

    return EntropyCalibrator()
