from pathlib import Path

from tritonclient.grpc import model_config_pb2

from services.triton_local.repository import cpu_config, derive_cpu_repository, read_config

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def test_production_config_uses_onnxruntime_with_tensorrt_on_gpu() -> None:
    config = read_config(REPOSITORY / "cxr_pneumonia" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerators[0].name == "tensorrt"
    assert accelerators[0].parameters["precision_mode"] == "FP16"
    # Priority levels are off by default (measured scheduler stalls; see the config comment).
    assert config.dynamic_batching.priority_levels == 0


def test_cpu_twin_keeps_the_model_contract() -> None:
    config = read_config(REPOSITORY / "cxr_pneumonia" / "config.pbtxt")
    local = cpu_config(config)
    assert local.backend == "python" and local.platform == ""
    assert [g.kind for g in local.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert not local.HasField("optimization")
    for field in (
        "name",
        "max_batch_size",
        "input",
        "output",
        "dynamic_batching",
        "version_policy",
    ):
        assert getattr(local, field) == getattr(config, field), field


def test_derived_repository_serves_every_onnx_model(tmp_path: Path) -> None:
    names = derive_cpu_repository(REPOSITORY, tmp_path / "models")
    assert "cxr_pneumonia" in names
    version = tmp_path / "models" / "cxr_pneumonia" / "1"
    assert (version / "model.py").read_text().startswith('"""Triton python-backend model')
    assert (version / "model.onnx").resolve() == (
        REPOSITORY / "cxr_pneumonia" / "1" / "model.onnx"
    ).resolve()
    parsed = read_config(tmp_path / "models" / "cxr_pneumonia" / "config.pbtxt")
    assert parsed.backend == "python"


def test_python_models_and_ensembles_are_carried_over_tensorrt_plans_are_not(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    for name, body in {
        "combiner": 'name: "combiner" backend: "python" max_batch_size: 8 '
        "instance_group [{ kind: KIND_GPU count: 2 }]",
        "ens": 'name: "ens" platform: "ensemble" max_batch_size: 8',
        "engine": 'name: "engine" platform: "tensorrt_plan" max_batch_size: 8',
    }.items():
        (source / name / "1").mkdir(parents=True)
        (source / name / "config.pbtxt").write_text(body)
    (source / "combiner" / "1" / "model.py").write_text("# combiner\n")
    names = derive_cpu_repository(source, tmp_path / "models")
    assert sorted(names) == ["combiner", "ens"]
    combiner = read_config(tmp_path / "models" / "combiner" / "config.pbtxt")
    assert [(g.kind, g.count) for g in combiner.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)
    ]
    assert (tmp_path / "models" / "combiner" / "1" / "model.py").read_text() == "# combiner\n"
    assert read_config(tmp_path / "models" / "ens" / "config.pbtxt").platform == "ensemble"
    assert (tmp_path / "models" / "ens" / "1").is_dir()
    assert not (tmp_path / "models" / "engine").exists()
