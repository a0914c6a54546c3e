"""Derive a CPU model repository for the bundled tritonserver from the production one.

Configs are parsed with Triton's own ModelConfig protobuf (shipped in tritonclient), so any
field Triton knows survives unchanged; only the execution parts are swapped: the python
backend running onnxruntime instead of the onnxruntime/TensorRT backends, CPU instances, and
no GPU accelerators.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

RUNNER = Path(__file__).with_name("onnx_model.py")


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def cpu_config(
    config: model_config_pb2.ModelConfig, cpu_instances: int = 1
) -> model_config_pb2.ModelConfig:
    """The same model contract, executed by the python backend on the CPU."""
    local = model_config_pb2.ModelConfig()
    local.CopyFrom(config)
    local.platform = ""
    local.backend = "python"
    local.ClearField("optimization")
    _on_cpu(local, cpu_instances)
    return local


def _on_cpu(config: model_config_pb2.ModelConfig, cpu_instances: int) -> None:
    del config.instance_group[:]
    config.instance_group.add(
        kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=cpu_instances
    )


def derive_cpu_repository(source: Path, target: Path, cpu_instances: int = 1) -> list[str]:
    """Write the CPU twin of every model in ``source`` that can run here; returns names.

    ONNX models get the python-backend runner; python-backend models (e.g. an ensemble's
    combiner) are copied with CPU instances; ensembles are copied as they are (they only
    schedule). TensorRT plans need a GPU and are left out.
    """
    if target.exists():
        shutil.rmtree(target)
    names = []
    for config_path in sorted(source.glob("*/config.pbtxt")):
        config = read_config(config_path)
        model_dir = target / config.name
        versions = [p for p in config_path.parent.iterdir() if p.is_dir() and p.name.isdigit()]
        if config.platform == "onnxruntime_onnx" or config.backend == "onnxruntime":
            for version in versions:
                (model_dir / version.name).mkdir(parents=True)
                (model_dir / version.name / "model.onnx").symlink_to(
                    (version / "model.onnx").resolve()
                )
                shutil.copy(RUNNER, model_dir / version.name / "model.py")
            local = cpu_config(config, cpu_instances)
        elif config.backend == "python":
            shutil.copytree(config_path.parent, model_dir, ignore=_PYCACHE)
            local = model_config_pb2.ModelConfig()
            local.CopyFrom(config)
            _on_cpu(local, cpu_instances)
        elif config.platform == "ensemble":
            shutil.copytree(config_path.parent, model_dir, ignore=_PYCACHE)
            for version in config.version_policy.specific.versions or [1]:
                (model_dir / str(version)).mkdir(exist_ok=True)
            local = config
        else:
            continue
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(local))
        names.append(config.name)
    return names


_PYCACHE = shutil.ignore_patterns("__pycache__", "*.pyc")
