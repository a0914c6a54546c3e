"""Dynamic-batching settings of one model, swept with perf_analyzer; no batching is the baseline.

For each variant the model's config is rewritten (no dynamic batching, or dynamic batching with
a given max_queue_delay and preferred sizes), a local tritonserver serves it, and perf_analyzer
measures throughput and p50/p99 latency at a few concurrencies. Every row is printed as ratios to
the no-batching row at the same concurrency of the same run, so the trade-off the config makes
(throughput under load vs latency added when idle) is visible.

The local server runs the CPU twin (python backend + onnxruntime), so absolute numbers are not a
GPU's; per-request overhead is larger here, which exaggerates batching gains. Rerun on a GPU node
against the production configs before changing them for GPUs.

    .venv/bin/python load_tests/tune_batching.py [--model cxr_pneumonia] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from perf_triton import perf_analyzer_rows

from services.cli.stack import Ports, Stack
from services.triton_local.repository import read_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    name: str
    delay_us: int | None  # None: no dynamic batching at all
    preferred: tuple[int, ...] = ()


VARIANTS = (
    Variant("no batching", None),
    Variant("delay 0", 0),
    Variant("delay 500us", 500),
    Variant("delay 500us, pref 16/32/64", 500, (16, 32, 64)),
    Variant("delay 2000us, pref 16/32/64", 2000, (16, 32, 64)),
    Variant("delay 5000us", 5000),
)


def write_variant(model: str, variant: Variant, target: Path) -> None:
    """A one-model repository whose config differs from the committed one only in batching."""
    source = REPO_ROOT / "model_repository" / model
    shutil.copytree(source, target / model)
    config = read_config(source / "config.pbtxt")
    if variant.delay_us is None:
        config.ClearField("dynamic_batching")
    else:  # priority levels and queue policies stay as committed
        config.dynamic_batching.max_queue_delay_microseconds = variant.delay_us
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(variant.preferred)
    (target / model / "config.pbtxt").write_text(text_format.MessageToString(config))


def measure(model: str, address: str, shape: str, concurrency: int) -> dict[str, float]:
    [row] = perf_analyzer_rows(model, address, shape, str(concurrency), measurement_ms=3000)
    return {
        "rate": float(row["Inferences/Second"]),
        "p50": float(row["p50 latency"]) / 1000,
        "p99": float(row["p99 latency"]) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cxr_pneumonia")
    parser.add_argument("--shape", default="image:1,28,28")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; medians printed")
    args = parser.parse_args()
    results: dict[tuple[str, int], dict[str, float]] = {}
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            repository = Path(tmp) / "repository"
            write_variant(args.model, variant, repository)
            stack = Stack(
                run_dir=Path(tmp), ports=Ports.free(), model_repository=repository, services=()
            )
            stack.start()
            try:
                for c in args.concurrency:
                    runs = [
                        measure(args.model, stack.triton_grpc_address, args.shape, c)
                        for _ in range(args.repeats)
                    ]
                    results[variant.name, c] = {
                        k: statistics.median(r[k] for r in runs) for k in runs[0]
                    }
            finally:
                stack.stop()
        print(f"measured {variant.name}", file=sys.stderr, flush=True)

    print(f"model {args.model}, local CPU tritonserver; medians of {args.repeats} runs per cell")
    header = f"{'variant':<30} {'conc':>4} {'infer/s':>8} {'x base':>6} {'p50 ms':>7} {'x base':>6}"
    print(f"{header} {'p99 ms':>7} {'x base':>6}")
    for c in args.concurrency:
        base = results[VARIANTS[0].name, c]
        for variant in VARIANTS:
            r = results[variant.name, c]
            print(
                f"{variant.name:<30} {c:>4} {r['rate']:>8.1f} {r['rate'] / base['rate']:>6.2f} "
                f"{r['p50']:>7.2f} {r['p50'] / base['p50']:>6.2f} "
                f"{r['p99']:>7.2f} {r['p99'] / base['p99']:>6.2f}"
            )


if __name__ == "__main__":
    main()
