"""Real local tritonservers in explicit model-control mode, one per emulated pod.

Each serves a tiny ONNX model (y = x + version, so a reply tells which version answered)
through the CPU python backend, from its own copy of the derived repository so that one pod's
version 2 can be broken without touching the other's. tritonserver cannot bind port 0 and say
which port it got: its port is picked, and it is started again on a new one if that was taken
meanwhile (tests/ports.py).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tritonclient.grpc as triton_grpc
from onnx import TensorProto, helper
from ports import for_attempt, pick_port, start_all
from tritonclient.utils import InferenceServerException
from waiting import eventually

from services.fleet import golden
from services.triton_local import launch

MODEL = "fleet_tiny"
VERSIONS = (1, 2)
CONFIG = f"""name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }} ]
version_policy: {{ specific: {{ versions: [ 1 ] }} }}
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
"""


def _tiny_model(offset: float) -> onnx.ModelProto:
    """y = x + offset."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    constant = helper.make_tensor("offset", TensorProto.FLOAT, [2], [offset] * 2)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])], MODEL, [x], [y], [constant]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # readable by any onnxruntime the python backend may run
    onnx.checker.check_model(model)
    return model


def write_source_repository(root: Path) -> Path:
    """A production-style repository: onnxruntime config serving v1, versions 1 and 2, and
    each version's golden answer (services/fleet/golden.py)."""
    model_dir = root / MODEL
    answers = {}
    for version in VERSIONS:
        (model_dir / str(version)).mkdir(parents=True)
        onnx.save(_tiny_model(float(version)), model_dir / str(version) / "model.onnx")
        question = golden.GoldenAnswer(
            seed=version,
            inputs=(golden.InputSpec(name="x", shape=(1, 2), datatype="FP32"),),
            outputs={},
            atol=1e-3,
            rtol=1e-3,
        )
        y = question.input_arrays()["x"] + np.float32(version)
        answers[version] = question.model_copy(update={"outputs": {"y": golden.sample(y)}})
    (model_dir / "config.pbtxt").write_text(CONFIG)
    golden.write(root, MODEL, golden.GoldenFile(versions=answers))
    return root


@dataclass
class LocalTriton:
    """One tritonserver standing in for one Triton pod."""

    name: str
    repository: Path
    source: Path
    grpc_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def client(self) -> triton_grpc.InferenceServerClient:
        return triton_grpc.InferenceServerClient(self.address)

    def break_version(self, version: int) -> None:
        """Make ``version`` fail to load here: its model.onnx is not ONNX any more."""
        target = self.repository / MODEL / str(version) / "model.onnx"
        target.unlink()
        target.write_bytes(b"not an onnx model")

    def shift_version(self, version: int, by: float) -> None:
        """Make ``version`` a deliberately wrong copy here: it loads, and answers x + v + by."""
        target = self.repository / MODEL / str(version) / "model.onnx"
        target.unlink()
        onnx.save(_tiny_model(version + by), target)

    def heal_version(self, version: int) -> None:
        target = self.repository / MODEL / str(version) / "model.onnx"
        target.unlink()
        target.symlink_to((self.source / MODEL / str(version) / "model.onnx").resolve())

    def ready_versions(self) -> list[int]:
        with self.client() as client:
            return [v for v in VERSIONS if client.is_model_ready(MODEL, str(v))]

    def infer_offset(self, version: str = "") -> float:
        """y - x of one inference (of ``version``, else Triton's choice): who answered."""
        with self.client() as client:
            x = np.array([[10.0, 20.0]], dtype=np.float32)
            request = triton_grpc.InferInput("x", list(x.shape), "FP32")
            request.set_data_from_numpy(x)
            result = client.infer(MODEL, [request], model_version=version).as_numpy("y")
        offsets = set((result - x).ravel().tolist())
        assert len(offsets) == 1, offsets
        return float(offsets.pop())

    def reset(self, loaded: bool = True) -> None:
        """Back to the repository's state: v2 loadable, the model on v1 (or unloaded)."""
        self.heal_version(2)
        with self.client() as client:
            if loaded:
                client.load_model(MODEL)
            else:
                client.unload_model(MODEL)
                eventually(lambda: not client.is_model_ready(MODEL), 30)
        assert self.ready_versions() == ([1] if loaded else [])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(5)


@dataclass
class _TritonLaunch:
    """One pod's tritonserver on a picked port, for ports.start_all."""

    name: str
    run_dir: Path
    source: Path
    triton: LocalTriton | None = None

    def spawn(self, attempt: int) -> list[tuple[subprocess.Popen[bytes], Path]]:
        """A tritonserver with v1 of the model loaded, as a pod starts; a retry in a folder of
        its own (the stopped one's backend stubs may still hold the files of its folder)."""
        port = pick_port()
        run_dir = for_attempt(self.run_dir, attempt)
        log = run_dir / "tritonserver.log"
        flags = [
            "--model-control-mode=explicit",
            f"--load-model={MODEL}",
            f"--grpc-port={port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--exit-on-error=false",
        ]
        process, repository = launch.start_tritonserver(
            run_dir, self.source, flags, log, env={"IMAGING_ORT_THREADS": "1"}
        )
        self.triton = LocalTriton(self.name, repository, self.source, port, process, log)
        return [(process, log)]

    def ready(self) -> bool:
        assert self.triton is not None
        try:
            with self.triton.client() as client:
                return bool(client.is_server_ready() and client.is_model_ready(MODEL, "1"))
        except InferenceServerException:
            return False

    def stop(self) -> None:
        if self.triton is not None:
            self.triton.stop()


def start_tritonservers(
    run_dirs: dict[str, Path], source: Path, timeout: float = 60.0
) -> list[LocalTriton]:
    """One tritonserver per name (in its folder), started in parallel, each ready with v1 of
    the model loaded; all stopped if one cannot start."""
    pods = [_TritonLaunch(name, run_dir, source) for name, run_dir in run_dirs.items()]
    start_all(pods, timeout)
    return [pod.triton for pod in pods if pod.triton is not None]
