"""The TensorRT engine builder: profiles, flags and the tensorrt_plan config, on real models.

Profiles, validation and configs are checked against the real ``model_repository`` config and
ONNX graph. Engine builds themselves need an NVIDIA GPU and the ``tensorrt`` package, neither of
which exists on the machines that run these tests, so no engine is built here. To check what
the builder is asked to do, a few tests inject a minimal recording stand-in for ``tensorrt`` (and,
for INT8, for the CUDA runtime bindings) into ``sys.modules``: this is the one mock in these
tests, and it is there only because TensorRT cannot run on this machine.
"""

from __future__ import annotations

import ctypes
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.trt.build import BuildOptions, build, main, make_parser, options_from_args, prepare
from services.trt.calibration import CalibrationBatches
from services.trt.profiles import (
    BatchRange,
    BuildError,
    Profile,
    TensorRTUnavailable,
    batch_range,
    builder_flags,
    check_outputs,
    choose_version,
    explicit_batch_flag_required,
    plan_config,
    profile_shapes,
    tensorrt_version,
)

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CXR = REPOSITORY / "cxr_pneumonia"
ITEM = (1, 28, 28)


def cxr_config(preferred: tuple[int, ...] = ()) -> model_config_pb2.ModelConfig:
    """The committed config (no preferred batch sizes), optionally with some added."""
    config = text_format.Parse((CXR / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    return config


def cxr_onnx() -> onnx.ModelProto:
    return onnx.load(str(CXR / "1" / "model.onnx"))


# --- profiles --------------------------------------------------------------------------------


def test_profile_shapes_for_cxr_pneumonia_defaults() -> None:
    # min 1, opt = half of max_batch_size (no preferred sizes), max = max_batch_size (64).
    assert profile_shapes(cxr_config(), cxr_onnx()) == {
        "image": Profile((1, *ITEM), (32, *ITEM), (64, *ITEM))
    }
    # With preferred sizes, opt = the largest one.
    assert profile_shapes(cxr_config(preferred=(16, 64)), cxr_onnx()) == {
        "image": Profile((1, *ITEM), (64, *ITEM), (64, *ITEM))
    }


def test_profile_shapes_with_explicit_batches() -> None:
    profiles = profile_shapes(cxr_config(), cxr_onnx(), min_batch=2, opt_batch=8, max_batch=32)
    assert profiles == {"image": Profile((2, *ITEM), (8, *ITEM), (32, *ITEM))}


def test_default_opt_is_largest_preferred_batch_within_max_else_half_max() -> None:
    config = cxr_config(preferred=(16, 32, 64))
    assert batch_range(config, max_batch=40) == BatchRange(1, 32, 40)
    assert batch_range(config, max_batch=12) == BatchRange(1, 6, 12)
    config.dynamic_batching.ClearField("preferred_batch_size")
    assert batch_range(config) == BatchRange(1, 32, 64)
    assert batch_range(config, min_batch=1, max_batch=1) == BatchRange(1, 1, 1)


@pytest.mark.parametrize(
    ("min_batch", "opt_batch", "max_batch", "message"),
    [
        (0, None, None, "min batch must be at least 1"),
        (None, None, 65, "max batch 65 exceeds cxr_pneumonia's max_batch_size 64"),
        (None, 48, 32, "min <= opt <= max: got min 1, opt 48, max 32"),
        (16, 8, 32, "min <= opt <= max: got min 16, opt 8, max 32"),
    ],
)
def test_batch_sizes_are_validated(
    min_batch: int | None, opt_batch: int | None, max_batch: int | None, message: str
) -> None:
    with pytest.raises(BuildError, match=message):
        profile_shapes(cxr_config(), cxr_onnx(), min_batch, opt_batch, max_batch)


def test_models_without_batching_are_refused() -> None:
    config = cxr_config()
    config.max_batch_size = 0
    with pytest.raises(BuildError, match=r"max_batch_size is 0; .* dynamic batch dimension"):
        profile_shapes(config, cxr_onnx())


def test_config_dims_must_match_the_onnx_graph() -> None:
    config = cxr_config()
    config.input[0].ClearField("dims")
    config.input[0].dims.extend([1, 32, 28])
    with pytest.raises(BuildError, match="dimension 2 is 32 in the config but 28 in the ONNX"):
        profile_shapes(config, cxr_onnx())


def test_reshape_is_what_the_engine_sees() -> None:
    config = cxr_config()
    config.input[0].ClearField("dims")
    config.input[0].dims.extend([784])
    config.input[0].reshape.shape.extend(ITEM)
    assert profile_shapes(config, cxr_onnx())["image"].max == (64, *ITEM)


def test_input_names_and_types_must_match() -> None:
    config = cxr_config()
    config.input[0].name = "pixels"
    with pytest.raises(
        BuildError, match=r"only in the config \['pixels'\], only in the ONNX graph"
    ):
        profile_shapes(config, cxr_onnx())
    config = cxr_config()
    config.input[0].data_type = model_config_pb2.TYPE_FP16
    with pytest.raises(BuildError, match="config data_type TYPE_FP16 but ONNX element type FLOAT"):
        profile_shapes(config, cxr_onnx())


def test_onnx_batch_must_be_the_only_dynamic_dimension() -> None:
    fixed_batch = cxr_onnx()
    fixed_batch.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    with pytest.raises(BuildError, match="batch dimension is fixed at 8; re-export"):
        profile_shapes(cxr_config(), fixed_batch)
    dynamic_width = cxr_onnx()
    dynamic_width.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    with pytest.raises(BuildError, match="ONNX dimension 3 is dynamic; only the batch"):
        profile_shapes(cxr_config(), dynamic_width)


def test_variable_config_dims_and_rank_mismatches_are_refused() -> None:
    config = cxr_config()
    config.input[0].ClearField("dims")
    config.input[0].dims.extend([28, 28])
    with pytest.raises(BuildError, match="ONNX rank 4 but the config's dims"):
        profile_shapes(config, cxr_onnx())
    config.input[0].dims.append(-1)
    with pytest.raises(BuildError, match="only the batch dimension may vary"):
        profile_shapes(config, cxr_onnx())


def test_every_problem_is_reported_at_once() -> None:
    config = cxr_config()
    config.input[0].data_type = model_config_pb2.TYPE_INT8
    config.input[0].ClearField("dims")
    config.input[0].dims.extend([3, 28, 28])
    with pytest.raises(BuildError) as caught:
        profile_shapes(config, cxr_onnx())
    assert str(caught.value).splitlines() == [
        "input 'image': config data_type TYPE_INT8 but ONNX element type FLOAT",
        "input 'image': dimension 1 is 3 in the config but 1 in the ONNX graph",
    ]


def test_outputs_must_exist_with_matching_type_and_dims() -> None:
    check_outputs(cxr_config(), cxr_onnx())
    config = cxr_config()
    config.output[0].name = "probabilities"
    with pytest.raises(BuildError, match=r"'probabilities' is not an output .* \[.*'logits'.*\]"):
        check_outputs(config, cxr_onnx())
    config = cxr_config()
    config.output[0].dims[0] = 2
    with pytest.raises(BuildError, match="output 'logits': dimension 1 is 2 in the config but 1"):
        check_outputs(config, cxr_onnx())


# --- the plan config ---------------------------------------------------------------------------


def test_plan_config_keeps_the_contract_and_drops_the_onnxruntime_accelerator() -> None:
    config = cxr_config()
    config.model_warmup.add(name="zeros", batch_size=4)
    config.dynamic_batching.priority_levels = 2  # an operator's opt-in: kept in the plan config
    plan = plan_config(config, "cxr_pneumonia_trt")
    assert plan.name == "cxr_pneumonia_trt"
    assert plan.platform == "tensorrt_plan" and plan.backend == ""
    assert not plan.HasField("optimization")
    assert [(g.kind, g.count) for g in plan.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 1)
    ]
    for field in (
        "max_batch_size",
        "input",
        "output",
        "dynamic_batching",
        "version_policy",
        "model_warmup",
    ):
        assert getattr(plan, field) == getattr(config, field), field
    assert plan.dynamic_batching.priority_levels == 2
    # The source config is untouched.
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerators[0].name == "tensorrt"
    # What is written parses back as the same ModelConfig.
    text = text_format.MessageToString(plan)
    assert text_format.Parse(text, model_config_pb2.ModelConfig()) == plan


def test_plan_config_serves_only_the_version_built() -> None:
    config = cxr_config()
    del config.version_policy.specific.versions[:]
    config.version_policy.specific.versions.extend([1, 2])
    plan = plan_config(config, "cxr_pneumonia_trt", version=2)
    assert list(plan.version_policy.specific.versions) == [2]
    assert list(config.version_policy.specific.versions) == [1, 2]  # the source is untouched


def test_plan_config_keeps_other_optimizations_and_makes_instances_gpu() -> None:
    config = cxr_config()
    config.optimization.cuda.graphs = True
    del config.instance_group[:]
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=4)
    config.default_model_filename = "model.onnx"
    plan = plan_config(config, "x")
    assert plan.optimization.cuda.graphs
    assert not plan.optimization.HasField("execution_accelerators")
    assert [(g.kind, g.count) for g in plan.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 1)
    ]
    assert plan.default_model_filename == ""


def test_plan_config_follows_a_smaller_engine_max_batch() -> None:
    plan = plan_config(cxr_config(preferred=(16, 32, 64)), "x", max_batch=32)
    assert plan.max_batch_size == 32
    assert list(plan.dynamic_batching.preferred_batch_size) == [16, 32]
    config = cxr_config()
    config.model_warmup.add(name="full", batch_size=64)
    with pytest.raises(BuildError, match=r"model_warmup \['full'\] use batches above"):
        plan_config(config, "x", max_batch=32)


# --- flags, versions, TensorRT versions --------------------------------------------------------


def test_builder_flags() -> None:
    assert builder_flags(fp16=False, int8=False, has_calibration=False) == frozenset()
    assert builder_flags(fp16=True, int8=False, has_calibration=False) == {"FP16"}
    assert builder_flags(fp16=True, int8=True, has_calibration=True) == {"FP16", "INT8"}


def test_int8_without_calibration_is_refused() -> None:
    with pytest.raises(BuildError, match="INT8 needs calibration data: pass --calibration-npz"):
        builder_flags(fp16=False, int8=True, has_calibration=False)
    with pytest.raises(BuildError, match="calibration data is only used with --int8"):
        builder_flags(fp16=True, int8=False, has_calibration=True)


def test_version_comes_from_the_policy_and_must_be_served() -> None:
    # The committed policy serves [1, 2]: the highest is the default, any served one can be asked.
    assert choose_version(cxr_config(), CXR) == 2
    assert choose_version(cxr_config(), CXR, requested=1) == 1
    with pytest.raises(BuildError, match=r"version 3 is not served: .* names only \[1, 2\]"):
        choose_version(cxr_config(), CXR, requested=3)
    unrestricted = cxr_config()
    unrestricted.ClearField("version_policy")
    assert choose_version(unrestricted, CXR) == 2  # the highest directory with a model.onnx
    assert choose_version(unrestricted, CXR, requested=1) == 1
    with pytest.raises(BuildError, match="does not exist"):
        choose_version(unrestricted, CXR, requested=7)


def test_explicit_batch_flag_only_before_tensorrt_10() -> None:
    assert tensorrt_version("8.6.1.post1") == (8, 6)
    assert tensorrt_version("10.5.0") == (10, 5)
    assert explicit_batch_flag_required((8, 6))
    assert not explicit_batch_flag_required((10, 0))
    with pytest.raises(BuildError, match="cannot read the TensorRT version"):
        tensorrt_version("unknown")


# --- command line ------------------------------------------------------------------------------


def test_argument_parser() -> None:
    args = make_parser().parse_args(
        [
            "model_repository/cxr_pneumonia",
            "--out",
            "plans",
            "--int8",
            "--calibration-npz",
            "calib.npz",
            "--min-batch",
            "1",
            "--opt-batch",
            "16",
            "--max-batch",
            "32",
            "--workspace-mb",
            "2048",
            "--timing-cache",
            "cache/timing.bin",
            "--name",
            "cxr_pneumonia",
        ]
    )
    options = options_from_args(args)
    assert options == BuildOptions(
        model_dir=Path("model_repository/cxr_pneumonia"),
        out=Path("plans"),
        name="cxr_pneumonia",
        int8=True,
        calibration_npz=Path("calib.npz"),
        min_batch=1,
        opt_batch=16,
        max_batch=32,
        workspace_mb=2048,
        timing_cache=Path("cache/timing.bin"),
    )
    defaults = options_from_args(make_parser().parse_args(["m", "--out", "r"]))
    assert defaults.workspace_mb == 4096 and not defaults.fp16 and defaults.max_batch is None
    with pytest.raises(SystemExit):
        make_parser().parse_args(["m"])  # --out is required


def test_build_without_tensorrt_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on this machine: no tensorrt package (made certain, should one ever be installed).
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed \(GPU nodes only\)"):
        build(BuildOptions(model_dir=CXR, out=tmp_path / "plans", fp16=True))
    assert not (tmp_path / "plans").exists()
    assert main([str(CXR), "--out", str(tmp_path / "plans"), "--fp16"]) == 1


def test_dry_run_prints_the_profile_and_config_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(CXR), "--out", str(tmp_path), "--fp16", "--max-batch", "32", "--dry-run"]) == 0
    out = capsys.readouterr().out
    # No preferred sizes in the config: opt is half the max.
    assert "profile image: min (1, 1, 28, 28) opt (16, 1, 28, 28) max (32, 1, 28, 28)" in out
    config_text = out.split(":\n\n", 1)[1]
    parsed = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    assert parsed.name == "cxr_pneumonia_trt" and parsed.max_batch_size == 32
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_bad_requests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(CXR), "--out", str(tmp_path), "--int8", "--dry-run"]) == 1
    assert "error: INT8 needs calibration data" in capsys.readouterr().err
    with pytest.raises(BuildError, match="is the source model"):
        prepare(BuildOptions(model_dir=CXR, out=REPOSITORY, name="cxr_pneumonia"))
    with pytest.raises(BuildError, match="plain directory name"):
        prepare(BuildOptions(model_dir=CXR, out=tmp_path, name="../elsewhere"))


# --- calibration data --------------------------------------------------------------------------


def write_npz(path: Path, **arrays: npt.NDArray[Any]) -> Path:
    np.savez(path, **arrays)
    return path


def calibration_samples(count: int) -> npt.NDArray[Any]:
    # Normalised 28x28 images as the preprocessor emits them (values only need a spread).
    return np.random.default_rng(0).normal(size=(count, *ITEM)).astype(np.float32)


def test_calibration_batches_drop_the_partial_tail(tmp_path: Path) -> None:
    samples = calibration_samples(10)
    npz = write_npz(tmp_path / "calib.npz", image=samples)
    batches = CalibrationBatches(npz, {"image": (ITEM, np.dtype(np.float32))}, batch_size=4)
    assert (batches.batch_size, batches.count) == (4, 2)
    assert batches.shapes() == {"image": (4, *ITEM)}
    got = list(batches)
    assert [b["image"].shape for b in got] == [(4, *ITEM), (4, *ITEM)]
    np.testing.assert_array_equal(got[1]["image"], samples[4:8])
    small = CalibrationBatches(npz, {"image": (ITEM, np.dtype(np.float32))}, batch_size=64)
    assert (small.batch_size, small.count) == (10, 1)


def test_calibration_data_must_match_the_inputs(tmp_path: Path) -> None:
    spec = {"image": (ITEM, np.dtype(np.float32))}
    with pytest.raises(BuildError, match=r"has arrays \['pixels'\] but the model's inputs"):
        CalibrationBatches(write_npz(tmp_path / "a.npz", pixels=calibration_samples(2)), spec, 1)
    wrong = np.zeros((2, 28, 28), np.float32)
    with pytest.raises(BuildError, match=r"expected \(samples, 1, 28, 28\)"):
        CalibrationBatches(write_npz(tmp_path / "b.npz", image=wrong), spec, 1)
    ints = np.zeros((2, *ITEM), np.int64)
    with pytest.raises(BuildError, match="is int64, input is float32"):
        CalibrationBatches(write_npz(tmp_path / "c.npz", image=ints), spec, 1)
    (tmp_path / "d.npz").write_text("not an npz")
    with pytest.raises(BuildError, match="cannot read calibration data"):
        CalibrationBatches(tmp_path / "d.npz", spec, 1)


# --- the builder, against a recording stand-in for tensorrt ------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *call: Any) -> None:
        self.calls.append(call)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]


def fake_tensorrt(version: str, engine: bytes | None, parses: bool = True) -> Any:
    """A minimal ``tensorrt`` module that records what the builder is asked to do."""
    record = Recorder()
    trt: Any = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.record = record

    class Logger:
        WARNING = "WARNING"
        VERBOSE = "VERBOSE"

        def __init__(self, severity: str) -> None:
            record("Logger", severity)

    class Tensor:
        def __init__(self, name: str) -> None:
            self.name = name

    class Network:
        def __init__(self) -> None:
            self.inputs: list[Tensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    class OnnxParser:
        num_errors = 1

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            record("parse_from_file", path)
            graph = onnx.load(path, load_external_data=False).graph
            self.network.inputs = [Tensor(i.name) for i in graph.input]
            return parses

        def get_error(self, index: int) -> str:
            return "In node 3 (Conv): unsupported attribute"

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, ...]] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = (low, opt, high)

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class BuilderConfig:
        int8_calibrator: Any = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            record("set_memory_pool_limit", pool, size)

        def set_flag(self, flag: str) -> None:
            record("set_flag", flag)

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            record("add_optimization_profile", profile.shapes)
            return 0

        def set_calibration_profile(self, profile: OptimizationProfile) -> None:
            record("set_calibration_profile", profile.shapes)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            record("create_timing_cache", bytes(data))
            self.cache = TimingCache(bytes(data))
            return self.cache

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            record("set_timing_cache", cache.data, ignore_mismatch)
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            record("create_network", flags)
            return Network()

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> Any:
            calibrator = config.int8_calibrator
            record("build_serialized_network", calibrator)
            if calibrator is not None:  # calibrate as TensorRT does: cache, else batches
                cached = calibrator.read_calibration_cache()
                record("read_calibration_cache", cached)
                if cached is None:
                    names = [t.name for t in network.inputs]
                    while (pointers := calibrator.get_batch(names)) is not None:
                        record("get_batch", pointers)
                    calibrator.write_calibration_cache(b"scales")
            return engine

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    trt.Logger = Logger
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    return trt


def fake_cuda_runtime() -> Any:
    """CUDA runtime bindings (cuda-python) that keep "device" buffers in host memory."""
    runtime: Any = types.ModuleType("cuda.bindings.runtime")
    runtime.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    runtime.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D")
    runtime.allocated = []
    runtime.uploads = []
    runtime.freed = []

    def malloc(size: int) -> tuple[int, int]:
        runtime.allocated.append((0x1000 * (len(runtime.allocated) + 1), size))
        return 0, runtime.allocated[-1][0]

    def memcpy(dst: int, src: int, count: int, kind: str) -> tuple[int]:
        assert kind == "H2D"
        runtime.uploads.append((dst, ctypes.string_at(src, count)))
        return (0,)

    def free(pointer: int) -> tuple[int]:
        runtime.freed.append(pointer)
        return (0,)

    runtime.cudaMalloc = malloc
    runtime.cudaMemcpy = memcpy
    runtime.cudaFree = free
    return runtime


def test_builder_gets_profile_flags_workspace_and_timing_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt = fake_tensorrt("10.5.0", engine=b"serialized engine")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    timing = tmp_path / "cache" / "timing.bin"
    timing.parent.mkdir()
    timing.write_bytes(b"earlier")
    out = tmp_path / "plans"

    rc = main(
        [
            str(CXR),
            "--out",
            str(out),
            "--fp16",
            "--opt-batch",
            "16",
            "--workspace-mb",
            "2048",
            "--timing-cache",
            str(timing),
        ]
    )

    assert rc == 0
    record = trt.record
    assert record.named("Logger") == [("WARNING",)]
    assert record.named("create_network") == [(0,)]  # TensorRT 10: explicit batch implied
    assert record.named("parse_from_file") == [(str(CXR / "2" / "model.onnx"),)]
    assert record.named("set_memory_pool_limit") == [("WORKSPACE", 2048 * 1024 * 1024)]
    assert record.named("set_flag") == [("FP16",)]
    assert record.named("add_optimization_profile") == [
        ({"image": ((1, *ITEM), (16, *ITEM), (64, *ITEM))},)
    ]
    assert record.named("set_calibration_profile") == []
    assert record.named("create_timing_cache") == [(b"earlier",)]
    assert record.named("set_timing_cache") == [(b"earlier", False)]
    assert timing.read_bytes() == b"earlier+timings"
    # The plan lies where the written config says Triton will look for it.
    model_dir = out / "cxr_pneumonia_trt"
    config = text_format.Parse(
        (model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == model_dir.name and config.platform == "tensorrt_plan"
    (version,) = config.version_policy.specific.versions
    assert (model_dir / str(version) / "model.plan").read_bytes() == b"serialized engine"
    assert "# TensorRT 10.5.0; builder flags FP16; workspace 2048 MiB." in (
        (model_dir / "config.pbtxt").read_text()
    )


def test_tensorrt_8_gets_the_explicit_batch_flag_and_no_timing_cache_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt = fake_tensorrt("8.6.1", engine=b"plan")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    build(BuildOptions(model_dir=CXR, out=tmp_path, name="cxr_pneumonia", verbose=True))
    assert trt.record.named("Logger") == [("VERBOSE",)]
    assert trt.record.named("create_network") == [(1 << 0,)]
    assert trt.record.named("set_flag") == []
    assert trt.record.named("create_timing_cache") == []
    assert (tmp_path / "cxr_pneumonia" / "2" / "model.plan").read_bytes() == b"plan"


def test_old_tensorrt_and_failed_builds_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = BuildOptions(model_dir=CXR, out=tmp_path / "plans", fp16=True)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("8.2.5", engine=b"x"))
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT 8\.2\.5 is too old"):
        build(options)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.5.0", engine=None))
    with pytest.raises(BuildError, match="failed to build the engine; rerun with --verbose"):
        build(options)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.5.0", b"x", parses=False))
    with pytest.raises(BuildError, match=r"could not parse .*\n.*unsupported attribute"):
        build(options)
    assert not (tmp_path / "plans").exists()


def test_int8_build_calibrates_from_the_npz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt = fake_tensorrt("10.5.0", engine=b"int8 plan")
    runtime = fake_cuda_runtime()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    samples = calibration_samples(40)
    npz = write_npz(tmp_path / "calib.npz", image=samples)
    cache = tmp_path / "calib.cache"
    options = BuildOptions(
        model_dir=CXR,
        out=tmp_path / "plans",
        int8=True,
        fp16=True,
        calibration_npz=npz,
        calibration_cache=cache,
        opt_batch=16,
    )

    build(options)

    record = trt.record
    assert sorted(record.named("set_flag")) == [("FP16",), ("INT8",)]
    # Calibration runs at the calibrator's batch, min(opt, samples) = 16, as one fixed shape.
    assert record.named("set_calibration_profile") == [
        ({"image": ((16, *ITEM), (16, *ITEM), (16, *ITEM))},)
    ]
    ((calibrator,),) = record.named("build_serialized_network")
    assert isinstance(calibrator, trt.IInt8EntropyCalibrator2)
    assert calibrator.get_batch_size() == 16
    # 40 samples make two full batches of 16, copied into one device buffer, freed afterwards.
    ((pointer, size),) = runtime.allocated
    assert size == 16 * 28 * 28 * 4
    assert record.named("get_batch") == [([pointer],), ([pointer],)]
    assert runtime.uploads == [
        (pointer, samples[:16].tobytes()),
        (pointer, samples[16:32].tobytes()),
    ]
    assert runtime.freed == [pointer]
    assert cache.read_bytes() == b"scales"
    assert (tmp_path / "plans" / "cxr_pneumonia_trt" / "2" / "model.plan").read_bytes() == (
        b"int8 plan"
    )

    # A second build reuses the calibration cache instead of the batches.
    build(options)
    assert record.named("read_calibration_cache") == [(None,), (b"scales",)]
    assert len(record.named("get_batch")) == 2


def test_int8_needs_the_cuda_runtime_bindings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.5.0", engine=b"x"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    npz = write_npz(tmp_path / "calib.npz", image=calibration_samples(4))
    with pytest.raises(TensorRTUnavailable, match="pip install cuda-python"):
        build(BuildOptions(model_dir=CXR, out=tmp_path / "p", int8=True, calibration_npz=npz))
