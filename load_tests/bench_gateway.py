"""End-to-end latency and throughput of the gateway against direct Triton inference.

Starts the real local stack, then in one run measures (medians over --repeat calls):
  baseline  - tritonclient ModelInfer of the already preprocessed tensor, straight to Triton;
  stages    - each inner service on its own (decode, preprocess, postprocess);
  gateway   - Analyze of the whole DICOM file through the platform;
  parallel  - studies/s with --concurrency clients calling Analyze at once.
Ratios are against the baseline of the same run, so machines can be compared.

    .venv/bin/python load_tests/bench_gateway.py [--file PATH] [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from services.cli.client import GatewayClient
from services.cli.stack import REPO_ROOT, Ports, Stack
from services.gateway.clients import (
    DecoderClient,
    PostprocessorClient,
    PreprocessorClient,
    TritonClient,
)

DEFAULT_FILE = REPO_ROOT.parent / "shared/data/dicom/pydicom-data/RG1_UNCR.dcm"


def median_ms(call: Callable[[], object], repeat: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    dicom = args.file.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(run_dir=Path(tmp), ports=Ports.free(), log_level="WARNING")
        stack.start()
        try:
            cap = 256 << 20
            decoder = DecoderClient(f"127.0.0.1:{stack.ports.decoder}", 60, cap)
            pre = PreprocessorClient(f"127.0.0.1:{stack.ports.preprocessor}", 60, cap)
            post = PostprocessorClient(f"127.0.0.1:{stack.ports.postprocessor}", 60, cap)
            triton = TritonClient(stack.triton_grpc_address, 60)
            gateway = GatewayClient(stack.gateway_address)
            image = decoder.decode(dicom, "bench")
            prepared = pre.preprocess("cxr_pneumonia", [image], "bench")
            batch = prepared.batch
            logits = {"logits": np.zeros((1, 1), np.float32)}
            uid = [image.attributes.sop_instance_uid]
            rows = {
                "baseline: Triton infer": median_ms(
                    lambda: triton.infer("cxr_pneumonia", "1", "image", batch, ["logits"], 0, "b"),
                    args.repeat,
                ),
                "decode (decoder RPC)": median_ms(lambda: decoder.decode(dicom, "b"), args.repeat),
                "preprocess (RPC)": median_ms(
                    lambda: pre.preprocess("cxr_pneumonia", [image], "b"), args.repeat
                ),
                "postprocess (RPC)": median_ms(
                    lambda: post.postprocess("cxr_pneumonia", logits, uid, prepared, "b"),
                    args.repeat,
                ),
                "gateway Analyze end-to-end": median_ms(
                    lambda: gateway.analyze([dicom]), args.repeat
                ),
            }
            base = rows["baseline: Triton infer"]
            print(
                f"file {args.file.name} ({len(dicom) / 1e6:.1f} MB), median of {args.repeat} calls"
            )
            print(f"{'measurement':<30} {'median ms':>10} {'x baseline':>11}")
            for name, value in rows.items():
                print(f"{name:<30} {value:>10.2f} {value / base:>11.1f}")
            calls = args.repeat * args.concurrency
            with ThreadPoolExecutor(args.concurrency) as pool:
                start = time.perf_counter()
                list(pool.map(lambda _: gateway.analyze([dicom]), range(calls)))
                elapsed = time.perf_counter() - start
            print(
                f"{args.concurrency} concurrent clients: {calls / elapsed:.2f} studies/s "
                f"({calls} studies in {elapsed:.1f} s)"
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
