"""Write model_repository/<model>/golden.json: each version's answer to a seeded input.

Serves the repository with the local tritonserver (services/cli/stack.py, CPU) in explicit
model-control mode, loads every numbered version of every model, asks each the input drawn from
its seed and records a sample of every output (services/fleet/golden.py). The rollout tool
refuses a version without one and counts a pod as done only when it answers the same.

    .venv/bin/python scripts/make_goldens.py [--repository model_repository] [--model NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
from google.protobuf import json_format

from services.cli.stack import Ports, Stack, StackError
from services.fleet.golden import (
    DEFAULT_REPOSITORY,
    GoldenAnswer,
    GoldenFile,
    InputSpec,
    sample,
    write,
)

# FP16 TensorRT engines answer within this of the FP32 ONNX models (the CPU here matches far
# closer); a different model misses by orders of magnitude more.
ATOL, RTOL = 0.05, 0.05


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def answer_of(client: triton_grpc.InferenceServerClient, model: str, version: int) -> GoldenAnswer:
    config = json_format.MessageToDict(
        client.get_model_config(model, str(version)).config, preserving_proto_field_name=True
    )
    batch = [1] if int(config.get("max_batch_size", 0)) > 0 else []
    specs = tuple(
        InputSpec(
            name=i["name"],
            shape=(*batch, *(int(d) for d in i["dims"])),
            datatype=i["data_type"].removeprefix("TYPE_"),
        )
        for i in config["input"]
    )
    seed = zlib.crc32(f"{model}/{version}".encode())  # stable, different per version
    golden = GoldenAnswer(seed=seed, inputs=specs, outputs={}, atol=ATOL, rtol=RTOL)
    requests = []
    for name, array in golden.input_arrays().items():
        request = triton_grpc.InferInput(name, list(array.shape), "FP32")
        request.set_data_from_numpy(array.astype(np.float32))
        requests.append(request)
    result = client.infer(model, requests, model_version=str(version), client_timeout=300)
    outputs = {o["name"]: sample(result.as_numpy(o["name"])) for o in config["output"]}
    return golden.model_copy(update={"outputs": outputs})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--model", action="append", default=None, help="only these models")
    args = parser.parse_args()
    models = sorted(
        p.name
        for p in args.repository.iterdir()
        if (p / "config.pbtxt").is_file() and (args.model is None or p.name in args.model)
    )
    with tempfile.TemporaryDirectory() as run_dir:
        stack = Stack(
            Path(run_dir), Ports.free(), args.repository, services=(), log_level="WARNING"
        )
        try:
            stack.start()
        except StackError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        try:
            client = triton_grpc.InferenceServerClient(stack.triton_grpc_address)
            for model in models:
                found = {}
                for version in versions(args.repository / model):
                    found[version] = answer_of(client, model, version)
                path = write(args.repository, model, GoldenFile(versions=found))
                print(f"{path}: versions {sorted(found)}")
            client.close()
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
