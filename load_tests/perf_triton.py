"""Triton's own perf_analyzer against the local tritonserver, concurrency 1 as the baseline.

perf_analyzer (from the tritonclient wheel) sends ModelInfer requests with random input at a
range of concurrencies and reports throughput and latency percentiles; this script starts the
local stack, runs it, and prints each concurrency's throughput and p50 as ratios to the
concurrency-1 row of the same run.

    .venv/bin/python load_tests/perf_triton.py [--model cxr_pneumonia] [--max-concurrency 8]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from services.cli.stack import Ports, Stack


def perf_analyzer_env() -> dict[str, str]:
    """perf_analyzer links libcudart even for CPU-only runs; the pip CUDA runtime provides it."""
    import nvidia.cuda_runtime

    lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH")) if p)
    return env


def perf_analyzer_rows(
    model: str,
    address: str,
    shape: str,
    concurrency_range: str,
    stability_percentage: int = 50,
    measurement_ms: int = 2000,
) -> list[dict[str, str]]:
    """Run perf_analyzer over gRPC; one CSV row (dict) per concurrency level."""
    binary = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "perf.csv"
        subprocess.run(
            [
                binary,
                *("-m", model, "-u", address, "-i", "grpc", "--shape", shape),
                *("--concurrency-range", concurrency_range),
                *("--measurement-interval", str(measurement_ms)),
                *("--stability-percentage", str(stability_percentage), "--max-trials", "20"),
                *("-f", str(report)),
            ],
            check=True,
            env=perf_analyzer_env(),
            stdout=subprocess.DEVNULL,
        )
        return list(csv.DictReader(report.open()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cxr_pneumonia")
    parser.add_argument("--shape", default="image:1,28,28")
    parser.add_argument("--max-concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(run_dir=Path(tmp), ports=Ports.free(), log_level="WARNING", services=())
        stack.start()
        try:
            rows = perf_analyzer_rows(
                args.model, stack.triton_grpc_address, args.shape, f"1:{args.max_concurrency}:1"
            )
        finally:
            stack.stop()
    base = rows[0]
    base_rate, base_p50 = float(base["Inferences/Second"]), float(base["p50 latency"])
    print(f"model {args.model} on the local CPU tritonserver (python backend + onnxruntime)")
    print(f"{'concurrency':>11} {'infer/s':>9} {'x base':>7} {'p50 ms':>8} {'x base':>7}")
    for row in rows:
        rate, p50 = float(row["Inferences/Second"]), float(row["p50 latency"])
        print(
            f"{row['Concurrency']:>11} {rate:>9.1f} {rate / base_rate:>7.2f} "
            f"{p50 / 1000:>8.2f} {p50 / base_p50:>7.2f}"
        )


if __name__ == "__main__":
    main()
