"""Volumes through mri_brain_extraction: end-to-end time against ONNX time, and peak memory.

Starts the real local stack (the gateway's instance limit raised to 300) and sends two MR
series through Gateway/AnalyzeStream, --repeat times each:

  phantom-64   - the 64-slice 96x96 head phantom of the tests (tests/integration/synthetic.py);
  synthetic-300 - 300 slices of 512x512 (16-bit), the same nested-ellipsoid phantom scaled up.

Per series it reports the median end-to-end time, the model's own time inside Triton
(compute_infer of mri_brain_extraction from Triton's statistics, the ONNX run), their ratio,
and for every service the peak resident memory during the series (VmHWM after resetting it
through /proc/<pid>/clear_refs; the decoder with its worker processes) next to the series'
decoded bytes, plus the peak size of the shared-memory pixel exchange (tmpfs, not in any RSS).

    .venv/bin/python load_tests/bench_volume.py [--repeat 3] [--out load_tests/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from services.cli.client import GatewayClient
from services.cli.stack import REPO_ROOT, Stack

sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
from synthetic import BRAIN_LAYERS, brain_series, mr_head_series

MODEL = "mri_brain_extraction"
SERVICES = ("gateway", "decoder", "preprocessor", "postprocessor")


def large_series(slices: int = 300, side: int = 512) -> list[bytes]:
    """The phantom's nested ellipsoids on a slices x side x side grid, slice by slice."""
    volume = np.zeros((slices, side, side), np.uint16)
    y, x = np.meshgrid(np.linspace(-0.5, 0.5, side), np.linspace(-0.5, 0.5, side), indexing="ij")
    for k, z in enumerate(np.linspace(-0.5, 0.5, slices)):
        plane = np.zeros((side, side), np.float32)
        for (a, b, c), intensity in BRAIN_LAYERS:
            plane[(z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1] = intensity
        volume[k] = np.rint(plane * 1000).astype(np.uint16)
    spacing = (0.5, 0.5, 0.5)  # mm; short decimal strings, as DS values must be
    return mr_head_series(volume, spacing)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(c) for c in children)
    return found


def _family(pid: int) -> list[int]:
    family = [pid]
    for child in _children(pid):
        family.extend(_family(child))
    return family


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _reset_peaks(pids: dict[str, int]) -> None:
    for pid in pids.values():
        for member in _family(pid):
            Path(f"/proc/{member}/clear_refs").write_text("5")


def _peaks_mb(pids: dict[str, int]) -> dict[str, float]:
    """Peak RSS of each service since the reset; the decoder's largest process (itself or one
    worker: each decodes one file at a time) plus its other processes' peaks summed."""
    return {
        name: sum(_hwm_kib(member) for member in _family(pid)) / 1024 for name, pid in pids.items()
    }


@contextmanager
def _exchange_peak(directory: Path) -> Iterator[list[int]]:
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            try:
                size = sum(p.stat().st_size for p in directory.iterdir())
            except FileNotFoundError:
                continue
            peak[0] = max(peak[0], size)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def _compute_infer_ns(client: triton.InferenceServerClient) -> int:
    stats = client.get_inference_statistics(MODEL, as_json=True)
    return sum(int(m["inference_stats"]["compute_infer"]["ns"]) for m in stats["model_stats"])


def measure(
    stack: Stack, name: str, series: list[bytes], decoded_bytes: int, repeat: int
) -> dict[str, object]:
    gateway = GatewayClient(stack.gateway_address, timeout=600)
    tri = triton.InferenceServerClient(stack.triton_grpc_address)
    pids = {s: stack.pids[s] for s in SERVICES}
    gateway.analyze(series)  # warm-up: the model's first run, the pools' first workers
    walls, onnx, peaks, exchange = [], [], [], []
    stages: dict[str, list[float]] = {}
    for _ in range(repeat):
        _reset_peaks(pids)
        before = _compute_infer_ns(tri)
        with _exchange_peak(stack.pixel_exchange_dir) as peak:
            start = time.perf_counter()
            reply = gateway.analyze(series)
            walls.append(time.perf_counter() - start)
        onnx.append((_compute_infer_ns(tri) - before) / 1e9)
        peaks.append(_peaks_mb(pids))
        exchange.append(peak[0] / 2**20)
        for timing in reply.timings:
            stages.setdefault(timing.stage, []).append(timing.milliseconds)
        assert reply.measurements, "the brain pipeline returned no measurement"
    wall, model = statistics.median(walls), statistics.median(onnx)
    return {
        "series": name,
        "instances": len(series),
        "encoded_mb": sum(map(len, series)) / 2**20,
        "decoded_mb": decoded_bytes / 2**20,
        "end_to_end_s": wall,
        "onnx_s": model,
        "ratio": wall / model,
        "peak_rss_mb": {s: max(p[s] for p in peaks) for s in SERVICES},
        "exchange_peak_mb": max(exchange),
        "stage_p50_ms": {stage: statistics.median(ms) for stage, ms in stages.items()},
        "brain_ml": reply.measurements[0].value,
    }


def markdown(rows: list[dict[str, object]]) -> str:
    head = (
        "| series | instances | decoded MB | end to end s | ONNX s | ratio | "
        + " | ".join(f"{s} peak MB (x decoded)" for s in SERVICES)
        + " | exchange peak MB | gateway stages p50 ms |"
    )
    lines = [head, "|" + " --- |" * (8 + len(SERVICES))]
    for r in rows:
        decoded = float(r["decoded_mb"])  # type: ignore[arg-type]
        peaks: dict[str, float] = r["peak_rss_mb"]  # type: ignore[assignment]
        cells = " | ".join(f"{peaks[s]:.0f} ({peaks[s] / decoded:.1f}x)" for s in SERVICES)
        timings: dict[str, float] = r["stage_p50_ms"]  # type: ignore[assignment]
        staged = ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        lines.append(
            f"| {r['series']} | {r['instances']} | {decoded:.0f} | {r['end_to_end_s']:.2f} | "
            f"{r['onnx_s']:.2f} | {r['ratio']:.2f} | {cells} | "
            f"{r['exchange_peak_mb']:.0f} | {staged} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    phantom = brain_series()
    large = large_series()
    with tempfile.TemporaryDirectory() as run_dir:
        stack = Stack(Path(run_dir), extra_env={"IMAGING_MAX_INSTANCES": "300"})
        stack.start()
        try:
            rows = [
                measure(stack, "phantom-64", phantom, 64 * 96 * 96 * 2, args.repeat),
                measure(stack, "synthetic-300", large, 300 * 512 * 512 * 2, args.repeat),
            ]
        finally:
            stack.stop()
    table = markdown(rows)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_volume.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "bench_volume.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
