"""The platform against what its users would write instead, in one run on one tritonserver.

Starts the real local stack and drives closed loops (each client thread sends its next study
as soon as the last one is answered) for --seconds per cell:

  thin      - load_tests/thin_client.py: pydicom + numpy + PIL + one tritonclient infer, in
              this process, one thread per concurrent client (chest X-ray files only);
  platform  - Gateway/Analyze of the same study, default options;
  heatmaps  - the same with OutputOptions.heatmaps.

Workloads: the 7.2 MB CR (RG1_UNCR.dcm), its JPEG 2000 twin (RG1_J2KI.dcm) and a 64-slice MR
head phantom (platform only: a volume pipeline; at most c=4, each study is 64 instances). Per
cell: studies/s, p50/p95/p99, errors, the gateway's per-stage medians and CPU milliseconds per
study of every process (each service with its workers, tritonserver, and this process, which is
the thin client or the load generator). perf_analyzer on Triton alone gives the floor of the
model call. Writes JSON, a markdown table and a plot to --out.

    .venv/bin/python load_tests/bench_platform.py [--seconds 15] [--out .run/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from perf_triton import perf_analyzer_rows
from thin_client import ThinClient

from services.cli.client import GatewayClient
from services.cli.stack import REPO_ROOT, Ports, Stack

sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
from synthetic import brain_series

CORPUS = REPO_ROOT.parent / "shared/data/dicom/pydicom-data"


@dataclass(frozen=True)
class Workload:
    name: str
    instances: list[bytes]
    clients: tuple[str, ...]
    concurrency: tuple[int, ...]


def cpu_seconds(groups: dict[str, int]) -> dict[tuple[str, int], float]:
    """CPU seconds (user + system) used so far by each process of each group (a service and,
    for the decoder, its workers) and by this process (the load generator and thin client)."""
    tick = os.sysconf("SC_CLK_TCK")
    by_group = {pgid: name for name, pgid in groups.items()}
    used: dict[tuple[str, int], float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        name = by_group.get(int(fields[2]))  # field 5 of stat: the process group
        if name is not None:
            pid = int(stat.parent.name)
            used[(name, pid)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    own = resource.getrusage(resource.RUSAGE_SELF)
    used[("bench process", os.getpid())] = own.ru_utime + own.ru_stime
    return used


def cpu_per_study(
    before: dict[tuple[str, int], float], after: dict[tuple[str, int], float], studies: int
) -> dict[str, float]:
    """Milliseconds per study by process name. A decoder worker replaced during the cell is
    not counted after its last sample (a lower bound, never negative)."""
    spent: dict[str, float] = {}
    for (name, pid), seconds in after.items():
        delta = seconds - before.get((name, pid), 0.0)
        spent[name] = spent.get(name, 0.0) + max(delta, 0.0) * 1e3 / studies
    return spent


def closed_loop(
    call: Callable[[], dict[str, float]], concurrency: int, seconds: float
) -> dict[str, object]:
    """``concurrency`` threads calling for ``seconds``; ``call`` returns stage timings (ms)."""
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                timings = call()
            except Exception:
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append((time.perf_counter() - start) * 1e3)
                for stage, ms in timings.items():
                    stages.setdefault(stage, []).append(ms)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    ordered = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "studies_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ordered, 50)),
        "p95_ms": float(np.percentile(ordered, 95)),
        "p99_ms": float(np.percentile(ordered, 99)),
        "completed": len(latencies),
        "errors": errors,
        "stage_p50_ms": {stage: statistics.median(v) for stage, v in stages.items()},
    }


def _platform(
    gateway: GatewayClient, instances: list[bytes], heatmaps: bool
) -> Callable[[], dict[str, float]]:
    def call() -> dict[str, float]:
        reply = gateway.analyze(instances, heatmaps=heatmaps)
        return {t.stage: t.milliseconds for t in reply.timings}

    return call


def _thin(thin: ThinClient, dicom: bytes) -> Callable[[], dict[str, float]]:
    def call() -> dict[str, float]:
        thin.probability(dicom)
        return {}

    return call


def run(args: argparse.Namespace) -> dict[str, object]:
    cr, j2k = (CORPUS / "RG1_UNCR.dcm").read_bytes(), (CORPUS / "RG1_J2KI.dcm").read_bytes()
    workloads = [
        Workload("CR 7.2 MB", [cr], ("thin", "platform", "heatmaps"), tuple(args.concurrency)),
        Workload("CR JPEG 2000", [j2k], ("thin", "platform"), tuple(args.concurrency)),
        Workload(
            "MR 64 slices",
            brain_series(),
            ("platform",),
            tuple(c for c in args.concurrency if c <= 4),
        ),
    ]
    total = sum(len(w.clients) * len(w.concurrency) for w in workloads)
    results: dict[str, object] = {"seconds": args.seconds, "cells": []}
    cells: list[dict[str, object]] = results["cells"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(run_dir=Path(tmp), ports=Ports.free(), log_level="WARNING")
        stack.start()
        try:
            thin = ThinClient(stack.triton_grpc_address)
            gateway = GatewayClient(stack.gateway_address)
            results["probabilities"] = {
                "thin": thin.probability(cr),
                "platform": gateway.analyze([cr]).findings[0].probability,
            }
            done = 0
            for workload in workloads:
                for c in workload.concurrency:
                    for client in workload.clients:
                        call = (
                            _thin(thin, workload.instances[0])
                            if client == "thin"
                            else _platform(gateway, workload.instances, client == "heatmaps")
                        )
                        call()  # warm-up, outside the measurement
                        done += 1
                        print(f"[{done}/{total}] {workload.name}, {client}, c={c}", file=sys.stderr)
                        before = cpu_seconds(stack.pids)
                        cell = closed_loop(call, c, args.seconds)
                        after = cpu_seconds(stack.pids)
                        studies = max(int(cell["completed"]), 1)  # type: ignore[call-overload]
                        cell["cpu_ms_per_study"] = cpu_per_study(before, after, studies)
                        cells.append(
                            {"workload": workload.name, "client": client, "concurrency": c, **cell}
                        )
            print("[perf_analyzer] cxr_pneumonia on Triton alone", file=sys.stderr)
            results["perf_analyzer"] = [
                {
                    "concurrency": int(row["Concurrency"]),
                    "infer_per_s": float(row["Inferences/Second"]),
                    "p50_ms": float(row["p50 latency"]) / 1e3,
                }
                for row in perf_analyzer_rows(
                    "cxr_pneumonia", stack.triton_grpc_address, "image:1,28,28", "1:16:15"
                )
            ]
        finally:
            stack.stop()
    return results


def markdown(results: dict[str, object]) -> str:
    cells: list[dict] = results["cells"]  # type: ignore[assignment]
    thin = {(c["workload"], c["concurrency"]): c for c in cells if c["client"] == "thin"}
    lines = [
        "| workload | client | c | studies/s | p50 ms | p95 ms | p99 ms | vs thin | errors "
        "| CPU ms/study |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        base = thin.get((c["workload"], c["concurrency"]))
        ratio = f"{c['studies_per_s'] / base['studies_per_s']:.2f}" if base else "-"
        cpu = sum(c["cpu_ms_per_study"].values())
        lines.append(
            f"| {c['workload']} | {c['client']} | {c['concurrency']} | {c['studies_per_s']:.1f} "
            f"| {c['p50_ms']:.0f} | {c['p95_ms']:.0f} | {c['p99_ms']:.0f} | {ratio} "
            f"| {c['errors']} | {cpu:.0f} |"
        )
    lines += [
        "",
        "| workload | client | c | " + " | ".join(_PROCESSES) + " |",
        "| --- | --- | --- |" + " --- |" * len(_PROCESSES),
    ]
    for c in cells:
        lines.append(
            f"| {c['workload']} | {c['client']} | {c['concurrency']} | "
            + " | ".join(f"{c['cpu_ms_per_study'].get(p, 0.0):.0f}" for p in _PROCESSES)
            + " |"
        )
    lines += ["", "| workload | client | c | gateway stage p50 ms |", "| --- | --- | --- | --- |"]
    for c in cells:
        if c["stage_p50_ms"]:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in c["stage_p50_ms"].items())
            lines.append(f"| {c['workload']} | {c['client']} | {c['concurrency']} | {stages} |")
    rows = results.get("perf_analyzer") or []
    lines += [
        "",
        "perf_analyzer, cxr_pneumonia on Triton alone: "
        + "; ".join(
            f"c={r['concurrency']} {r['infer_per_s']:.0f}/s p50 {r['p50_ms']:.2f} ms"
            for r in rows  # type: ignore[index]
        ),
    ]
    return "\n".join(lines) + "\n"


_PROCESSES = (
    "gateway",
    "decoder",
    "preprocessor",
    "postprocessor",
    "tritonserver",
    "bench process",
)


def plot(results: dict[str, object], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: list[dict] = results["cells"]  # type: ignore[assignment]
    workloads = list(dict.fromkeys(c["workload"] for c in cells))
    figure, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 8), squeeze=False)
    for column, workload in enumerate(workloads):
        for client in dict.fromkeys(c["client"] for c in cells if c["workload"] == workload):
            mine = [c for c in cells if c["workload"] == workload and c["client"] == client]
            x = [c["concurrency"] for c in mine]
            axes[0][column].plot(x, [c["studies_per_s"] for c in mine], marker="o", label=client)
            axes[1][column].plot(x, [c["p50_ms"] for c in mine], marker="o", label=client)
        axes[0][column].set_title(workload)
        axes[0][column].set_ylabel("studies/s")
        axes[1][column].set_ylabel("p50 ms")
        for row in axes:
            row[column].set_xscale("log", base=2)
            row[column].set_xlabel("concurrent clients")
            row[column].legend()
            row[column].grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(target, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    # The published results (load_tests/results/, quoted by the README) move only on purpose:
    # `make bench PUBLISH=1` or an explicit --out.
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".run" / "bench")
    args = parser.parse_args()
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_platform.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "bench_platform.md").write_text(table)
    plot(results, args.out / "bench_platform.png")
    p: dict[str, float] = results["probabilities"]  # type: ignore[assignment]
    print(f"probability of the CR: thin {p['thin']:.4f}, platform {p['platform']:.4f}")
    print(table)


if __name__ == "__main__":
    main()
