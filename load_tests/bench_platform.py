"""The platform against the thin client a vendor would write, same tritonserver, same file.

Starts the real local stack and, in one run, drives closed loops (each client thread sends its
next study as soon as the last one is answered) for --seconds per cell at each concurrency:

  thin      - load_tests/thin_client.py: pydicom + numpy + PIL + tritonclient, in this process,
              one thread per concurrent client;
  platform  - Gateway/Analyze of the same DICOM file (default options);
  heatmaps  - the same with OutputOptions.heatmaps (what every call cost before heatmaps became
              an option).

It prints studies/s, p50 and p95 of each cell, the platform/thin ratios (throughput and added
p50), the median per-stage timings the platform reports at concurrency 1, and both
probabilities for the file, and writes them as JSON (--json).

    .venv/bin/python load_tests/bench_platform.py [--file PATH] [--seconds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from thin_client import ThinClient

from services.cli.client import GatewayClient
from services.cli.stack import REPO_ROOT, Ports, Stack

DEFAULT_FILE = REPO_ROOT.parent / "shared/data/dicom/pydicom-data/RG1_UNCR.dcm"


def cpu_seconds(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process group (a service and, for the
    decoder, its workers) and by this process (the load generator and the thin client)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = dict.fromkeys(groups, 0.0)
    by_group = {pgid: name for name, pgid in groups.items()}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        name = by_group.get(int(fields[2]))  # field 5 of stat: the process group
        if name is not None:
            used[name] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    own = resource.getrusage(resource.RUSAGE_SELF)
    used["bench process"] = own.ru_utime + own.ru_stime
    return used


def closed_loop(call: Callable[[], object], concurrency: int, seconds: float) -> dict[str, float]:
    """Studies/s and latency percentiles (ms) of ``concurrency`` threads calling for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                call()
            except Exception:
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - start) * 1e3)

    call()  # warm-up, outside the measurement
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    ordered = np.sort(np.asarray(latencies)) if latencies else np.zeros(1)
    return {
        "studies_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ordered, 50)),
        "p95_ms": float(np.percentile(ordered, 95)),
        "completed": float(len(latencies)),
        "errors": float(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dicom = args.file.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(run_dir=Path(tmp), ports=Ports.free(), log_level="WARNING")
        stack.start()
        try:
            thin = ThinClient(stack.triton_grpc_address)
            gateway = GatewayClient(stack.gateway_address)
            reply = gateway.analyze([dicom])
            probabilities = {
                "thin": thin.probability(dicom),
                "platform": reply.findings[0].probability,
            }
            stages: dict[str, list[float]] = {}
            for _ in range(20):
                for timing in gateway.analyze([dicom]).timings:
                    stages.setdefault(timing.stage, []).append(timing.milliseconds)
            cells: dict[tuple[str, int], dict[str, float]] = {}
            cpu: dict[tuple[str, int], dict[str, float]] = {}
            for c in args.concurrency:
                for kind, call in (
                    ("thin", lambda: thin.probability(dicom)),
                    ("platform", lambda: gateway.analyze([dicom])),
                    ("heatmaps", lambda: gateway.analyze([dicom], heatmaps=True)),
                ):
                    before = cpu_seconds(stack.pids)
                    cells[(kind, c)] = cell = closed_loop(call, c, args.seconds)
                    after = cpu_seconds(stack.pids)
                    studies = max(cell["completed"] + 1, 1.0)  # + the warm-up call
                    cpu[(kind, c)] = {
                        name: (after[name] - before[name]) * 1e3 / studies for name in after
                    }
        finally:
            stack.stop()
    print(f"file {args.file.name} ({len(dicom) / 1e6:.1f} MB); closed loops of {args.seconds:g} s")
    print(
        f"probability: thin {probabilities['thin']:.4f}, platform {probabilities['platform']:.4f}"
    )
    print(
        f"{'client':<9} {'c':>3} {'studies/s':>10} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'x thin st/s':>12} {'p50 - thin':>11} {'errors':>7}"
    )
    for c in args.concurrency:
        thin_cell = cells[("thin", c)]
        for kind in ("thin", "platform", "heatmaps"):
            cell = cells[(kind, c)]
            ratio = cell["studies_per_s"] / thin_cell["studies_per_s"]
            print(
                f"{kind:<9} {c:>3} {cell['studies_per_s']:>10.1f} {cell['p50_ms']:>8.1f} "
                f"{cell['p95_ms']:>8.1f} {ratio:>12.2f} "
                f"{cell['p50_ms'] - thin_cell['p50_ms']:>11.1f} {int(cell['errors']):>7}"
            )
    print("CPU ms per study, by process:")
    names = list(next(iter(cpu.values())))
    print(f"{'client':<9} {'c':>3} " + " ".join(f"{n[:13]:>13}" for n in names) + f" {'total':>8}")
    for (kind, c), used in cpu.items():
        print(
            f"{kind:<9} {c:>3} "
            + " ".join(f"{used[n]:>13.1f}" for n in names)
            + f" {sum(used.values()):>8.1f}"
        )
    medians = {stage: statistics.median(values) for stage, values in stages.items()}
    shown = " ".join(f"{k}={v:.1f}" for k, v in medians.items())
    print(f"platform stages, 20 sequential calls (median ms): {shown}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "file": args.file.name,
                    "seconds": args.seconds,
                    "probabilities": probabilities,
                    "stages_ms": medians,
                    "cells": [
                        {
                            "client": kind,
                            "concurrency": c,
                            **values,
                            "cpu_ms_per_study": cpu[(kind, c)],
                        }
                        for (kind, c), values in cells.items()
                    ],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
