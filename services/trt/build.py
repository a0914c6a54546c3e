"""Build a TensorRT engine for a Triton model and write it as a ``tensorrt_plan`` model.

    python -m services.trt.build model_repository/cxr_pneumonia --out trt_repository --fp16

reads ``MODEL_DIR/config.pbtxt`` and ``MODEL_DIR/<version>/model.onnx``, derives one
optimisation profile over the dynamic batch from the config, builds the engine with the
``tensorrt`` Python API and writes ``REPO_DIR/<name>/<version>/model.plan`` and
``REPO_DIR/<name>/config.pbtxt`` (the same contract, platform ``tensorrt_plan``, GPU instances).

Building needs an NVIDIA GPU and the ``tensorrt`` package; a plan only runs on the GPU
architecture and TensorRT version that built it, so build inside the TensorRT container of the
same release as the Triton image. ``--dry-run`` runs every check and prints the profile and the
config without TensorRT.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.trt.calibration import NUMPY_DTYPES, CalibrationBatches, CudaMemory, make_calibrator
from services.trt.profiles import (
    INT8,
    MIN_TENSORRT,
    ONNX_FILENAME,
    PLAN_FILENAME,
    BatchRange,
    BuildError,
    Profile,
    TensorRTUnavailable,
    batch_range,
    builder_flags,
    check_outputs,
    choose_version,
    explicit_batch_flag_required,
    model_dims,
    plan_config,
    profile_shapes,
    tensorrt_version,
)

DEFAULT_WORKSPACE_MB = 4096
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class BuildOptions:
    model_dir: Path
    out: Path
    name: str | None = None
    version: int | None = None
    fp16: bool = False
    int8: bool = False
    calibration_npz: Path | None = None
    calibration_cache: Path | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: Path | None = None
    verbose: bool = False


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before TensorRT is touched."""

    source: model_config_pb2.ModelConfig
    version: int
    onnx_path: Path
    batch: BatchRange
    profiles: dict[str, Profile]
    flags: frozenset[str]
    config: model_config_pb2.ModelConfig
    plan_path: Path
    config_path: Path
    workspace_bytes: int
    calibration: CalibrationBatches | None


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    if not path.is_file():
        raise BuildError(f"{path} does not exist")
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as err:
        raise BuildError(f"{path}: {err}") from err


def prepare(options: BuildOptions) -> BuildPlan:
    """Read and check the model, derive the profile, flags and plan config; no TensorRT."""
    source = read_config(options.model_dir / "config.pbtxt")
    if source.platform != "onnxruntime_onnx" and source.backend != "onnxruntime":
        raise BuildError(
            f"{source.name} is served by {source.platform or source.backend!r}; this tool "
            "builds engines from onnxruntime models (model.onnx)"
        )
    name = options.name or f"{source.name}_trt"
    if not _NAME.fullmatch(name) or name in {".", ".."}:
        raise BuildError(f"model name {name!r} must be a plain directory name")
    target = options.out / name
    if target.resolve() == options.model_dir.resolve():
        raise BuildError(f"{target} is the source model; choose another --out or --name")
    if options.workspace_mb < 1:
        raise BuildError(f"--workspace-mb must be positive, got {options.workspace_mb}")
    flags = builder_flags(options.fp16, options.int8, options.calibration_npz is not None)

    version = choose_version(source, options.model_dir, options.version)
    onnx_path = options.model_dir / str(version) / ONNX_FILENAME
    try:
        # Only the graph's signature is needed; external weights stay on disk.
        graph = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends
        raise BuildError(f"cannot read {onnx_path}: {err}") from err
    batch = batch_range(source, options.min_batch, options.opt_batch, options.max_batch)
    profiles = profile_shapes(source, graph, batch.min, batch.opt, batch.max)
    check_outputs(source, graph)

    for output in source.output:
        if output.label_filename and not (options.model_dir / output.label_filename).is_file():
            raise BuildError(f"label file {output.label_filename} of {output.name!r} is missing")

    calibration = None
    if INT8 in flags and options.calibration_npz is not None:
        specs = {}
        for tensor in source.input:
            type_name = model_config_pb2.DataType.Name(tensor.data_type)
            if type_name not in NUMPY_DTYPES:
                raise BuildError(f"cannot calibrate input {tensor.name!r} of type {type_name}")
            specs[tensor.name] = (model_dims(tensor), NUMPY_DTYPES[type_name])
        calibration = CalibrationBatches(options.calibration_npz, specs, batch.opt)

    return BuildPlan(
        source=source,
        version=version,
        onnx_path=onnx_path,
        batch=batch,
        profiles=profiles,
        flags=flags,
        config=plan_config(source, name, batch.max, version),
        plan_path=target / str(version) / PLAN_FILENAME,
        config_path=target / "config.pbtxt",
        workspace_bytes=options.workspace_mb * 1024 * 1024,
        calibration=calibration,
    )


def import_tensorrt() -> Any:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as err:
        raise TensorRTUnavailable(
            "TensorRT is not installed (GPU nodes only): run this inside the "
            "nvcr.io/nvidia/tensorrt container of the Triton image's release, or pip install "
            f"tensorrt on a GPU node ({err})"
        ) from err
    version = tensorrt_version(str(trt.__version__))
    if version < MIN_TENSORRT:
        raise TensorRTUnavailable(
            f"TensorRT {trt.__version__} is too old; this tool needs "
            f"{'.'.join(map(str, MIN_TENSORRT))} or newer"
        )
    return trt


def build_engine(trt: Any, plan: BuildPlan, options: BuildOptions) -> bytes:
    """Parse the ONNX model and build the serialized engine with the TensorRT builder."""
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if explicit_batch_flag_required(tensorrt_version(str(trt.__version__))):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external weight files next to the model.
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {plan.onnx_path}:\n{errors}")
    parsed = sorted(network.get_input(i).name for i in range(network.num_inputs))
    if parsed != sorted(plan.profiles):
        raise BuildError(f"parsed network inputs {parsed} differ from {sorted(plan.profiles)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for flag in sorted(plan.flags):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, shapes in plan.profiles.items():
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    if config.add_optimization_profile(profile) < 0:
        raise BuildError(f"TensorRT rejected the optimisation profile {plan.profiles}")

    calibrator = None
    if plan.calibration is not None:
        memory = CudaMemory.load()
        calibration_profile = builder.create_optimization_profile()
        for name, shape in plan.calibration.shapes().items():
            calibration_profile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(calibration_profile)
        calibrator = make_calibrator(trt, plan.calibration, memory, options.calibration_cache)
        config.int8_calibrator = calibrator

    cache = None
    if options.timing_cache is not None:
        data = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, False):
            raise BuildError(
                f"timing cache {options.timing_cache} does not fit this GPU or TensorRT "
                "version; delete it to start a new one"
            )

    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    if serialized is None:
        raise BuildError("TensorRT failed to build the engine; rerun with --verbose for its log")
    if cache is not None and options.timing_cache is not None:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def describe(plan: BuildPlan, tensorrt: str | None = None) -> str:
    built_with = f"TensorRT {tensorrt}" if tensorrt else "TensorRT (not built: dry run)"
    flags = ", ".join(sorted(plan.flags)) or "none (FP32)"
    lines = [
        f"Generated by `python -m services.trt.build` from {plan.source.name} version "
        f"{plan.version} ({ONNX_FILENAME}).",
        f"{built_with}; builder flags {flags}; workspace {plan.workspace_bytes >> 20} MiB.",
        f"Batch profile: min {plan.batch.min}, opt {plan.batch.opt}, max {plan.batch.max}.",
        "The plan runs only on the GPU architecture and TensorRT version that built it.",
    ]
    return "".join(f"# {line}\n" for line in lines)


def config_text(plan: BuildPlan, tensorrt: str | None = None) -> str:
    return describe(plan, tensorrt) + str(text_format.MessageToString(plan.config))


def write_model(plan: BuildPlan, engine: bytes, tensorrt: str, model_dir: Path) -> None:
    """Write the plan, then the config that serves it, then any label files it names."""
    plan.plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan.plan_path.write_bytes(engine)
    plan.config_path.write_text(config_text(plan, tensorrt))
    for output in plan.config.output:
        if output.label_filename:
            shutil.copy(model_dir / output.label_filename, plan.config_path.parent)


def build_prepared(plan: BuildPlan, options: BuildOptions) -> None:
    """Build the engine ``prepare`` planned and write the model; needs TensorRT and a GPU."""
    trt = import_tensorrt()
    engine = build_engine(trt, plan, options)
    write_model(plan, engine, str(trt.__version__), options.model_dir)


def build(options: BuildOptions) -> BuildPlan:
    """Check, build and write one engine; returns what was decided and written."""
    plan = prepare(options)
    build_prepared(plan, options)
    return plan


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.trt.build",
        description="Build a TensorRT engine (.plan) and its tensorrt_plan Triton config from "
        "an onnxruntime model directory. Needs an NVIDIA GPU and the tensorrt package.",
    )
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="holds config.pbtxt")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="REPO_DIR", help="model repository to write"
    )
    parser.add_argument("--name", help="model name and directory (default: <source name>_trt)")
    parser.add_argument("--version", type=int, help="model version to build (default: latest)")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    parser.add_argument("--int8", action="store_true", help="allow INT8 kernels (calibrated)")
    parser.add_argument(
        "--calibration-npz",
        type=Path,
        metavar="F",
        help="preprocessed inputs for INT8 calibration: one (samples, *dims) array per input",
    )
    parser.add_argument(
        "--calibration-cache", type=Path, metavar="PATH", help="read/write INT8 scales here"
    )
    parser.add_argument("--min-batch", type=int, help="profile min batch (default 1)")
    parser.add_argument(
        "--opt-batch",
        type=int,
        help="profile opt batch (default: largest preferred batch size, else max/2)",
    )
    parser.add_argument(
        "--max-batch", type=int, help="profile max batch (default: config max_batch_size)"
    )
    parser.add_argument(
        "--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB, help="builder workspace pool"
    )
    parser.add_argument(
        "--timing-cache", type=Path, metavar="PATH", help="load and save the builder timing cache"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check and print the profile and config only"
    )
    parser.add_argument("--verbose", action="store_true", help="TensorRT verbose log")
    return parser


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        model_dir=args.model_dir,
        out=args.out,
        name=args.name,
        version=args.version,
        fp16=args.fp16,
        int8=args.int8,
        calibration_npz=args.calibration_npz,
        calibration_cache=args.calibration_cache,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_mb=args.workspace_mb,
        timing_cache=args.timing_cache,
        verbose=args.verbose,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    options = options_from_args(args)
    try:
        plan = prepare(options)
        if plan.batch.min > 1:
            print(
                f"warning: the engine accepts no batch below {plan.batch.min}, but Triton's "
                "dynamic batcher may send smaller ones",
                file=sys.stderr,
            )
        for name, shapes in plan.profiles.items():
            print(f"profile {name}: min {shapes.min} opt {shapes.opt} max {shapes.max}")
        if args.dry_run:
            print(f"dry run, would write {plan.plan_path} and {plan.config_path}:\n")
            print(config_text(plan), end="")
            return 0
        build_prepared(plan, options)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {plan.plan_path} and {plan.config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
