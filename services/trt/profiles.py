"""Pure build logic: optimisation profiles, builder flags and the ``tensorrt_plan`` config.

Nothing here imports TensorRT, so it runs (and is unit-tested, and backs ``--dry-run``) on any
machine. Configs are Triton's own ModelConfig protobuf, as in ``services.triton_local``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import onnx
from tritonclient.grpc import model_config_pb2

Shape = tuple[int, ...]

# Oldest TensorRT the builder code supports (IBuilderConfig.set_memory_pool_limit is 8.4+).
MIN_TENSORRT = (8, 4)
PLAN_PLATFORM = "tensorrt_plan"
PLAN_FILENAME = "model.plan"
ONNX_FILENAME = "model.onnx"
# Builder flags this tool sets, by their ``tensorrt.BuilderFlag`` names.
FP16 = "FP16"
INT8 = "INT8"

# Triton data types and the ONNX element types they correspond to.
_ONNX_TYPES = {
    "TYPE_BOOL": onnx.TensorProto.BOOL,
    "TYPE_UINT8": onnx.TensorProto.UINT8,
    "TYPE_UINT16": onnx.TensorProto.UINT16,
    "TYPE_UINT32": onnx.TensorProto.UINT32,
    "TYPE_UINT64": onnx.TensorProto.UINT64,
    "TYPE_INT8": onnx.TensorProto.INT8,
    "TYPE_INT16": onnx.TensorProto.INT16,
    "TYPE_INT32": onnx.TensorProto.INT32,
    "TYPE_INT64": onnx.TensorProto.INT64,
    "TYPE_FP16": onnx.TensorProto.FLOAT16,
    "TYPE_FP32": onnx.TensorProto.FLOAT,
    "TYPE_FP64": onnx.TensorProto.DOUBLE,
    "TYPE_BF16": onnx.TensorProto.BFLOAT16,
    "TYPE_STRING": onnx.TensorProto.STRING,
}


class BuildError(Exception):
    """The engine cannot be built as asked; the message says why and what to change."""


class TensorRTUnavailable(BuildError):
    """The ``tensorrt`` package (or the CUDA runtime bindings) cannot be imported here."""


class BatchRange(NamedTuple):
    min: int
    opt: int
    max: int


class Profile(NamedTuple):
    """One input's shapes in an optimisation profile: (batch, *dims) at min, opt and max."""

    min: Shape
    opt: Shape
    max: Shape


def _type_name(data_type: int) -> str:
    return str(model_config_pb2.DataType.Name(data_type))


def model_dims(tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput) -> Shape:
    """The per-item shape the model itself sees: ``reshape`` when the config has one."""
    if tensor.HasField("reshape"):
        return tuple(int(d) for d in tensor.reshape.shape)
    return tuple(int(d) for d in tensor.dims)


def onnx_inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Graph inputs a caller must feed (initializers listed as inputs by old exporters excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    return {i.name: i for i in model.graph.input if i.name not in initializers}


def onnx_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """The tensor's dimensions, ``None`` for a dynamic one (a dim_param or no value)."""
    if not value.type.HasField("tensor_type"):
        raise BuildError(f"ONNX tensor {value.name!r} is not a tensor (sequence/map types)")
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise BuildError(f"ONNX tensor {value.name!r} has no shape; export it with a static rank")
    return [
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor_type.shape.dim
    ]


def _dtype_problem(
    kind: str, tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, elem: int
) -> str | None:
    want = _ONNX_TYPES.get(_type_name(tensor.data_type))
    if want is not None and want == elem:
        return None
    return (
        f"{kind} {tensor.name!r}: config data_type {_type_name(tensor.data_type)} but ONNX "
        f"element type {onnx.TensorProto.DataType.Name(elem)}"
    )


def _rank_problem(
    kind: str, tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, rank: int
) -> str | None:
    """The ONNX rank must be the config's dims plus the batch dimension."""
    dims = model_dims(tensor)
    if rank == len(dims) + 1:
        return None
    return (
        f"{kind} {tensor.name!r}: ONNX rank {rank} but the config's dims "
        f"{list(dims)} plus the batch dimension make rank {len(dims) + 1}"
    )


def default_opt_batch(config: model_config_pb2.ModelConfig, min_batch: int, max_batch: int) -> int:
    """The largest preferred batch size within [min, max], else half of max (at least min)."""
    preferred = [
        int(b) for b in config.dynamic_batching.preferred_batch_size if min_batch <= b <= max_batch
    ]
    return max(preferred) if preferred else max(min_batch, max_batch // 2)


def batch_range(
    config: model_config_pb2.ModelConfig,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
) -> BatchRange:
    """Resolve the profile's batch sizes (defaults: 1, see ``default_opt_batch``, the config's
    max_batch_size) and check 1 <= min <= opt <= max <= max_batch_size."""
    limit = int(config.max_batch_size)
    if limit <= 0:
        raise BuildError(
            f"{config.name}: max_batch_size is {limit}; this tool builds engines with a dynamic "
            "batch dimension, which needs max_batch_size > 0"
        )
    lo = 1 if min_batch is None else min_batch
    hi = limit if max_batch is None else max_batch
    if lo < 1:
        raise BuildError(f"min batch must be at least 1, got {lo}")
    if hi > limit:
        raise BuildError(f"max batch {hi} exceeds {config.name}'s max_batch_size {limit}")
    opt = default_opt_batch(config, lo, hi) if opt_batch is None else opt_batch
    if not lo <= opt <= hi:
        raise BuildError(
            f"batch sizes must satisfy min <= opt <= max: got min {lo}, opt {opt}, max {hi}"
        )
    return BatchRange(lo, opt, hi)


def profile_shapes(
    config: model_config_pb2.ModelConfig,
    onnx_model: onnx.ModelProto,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
) -> dict[str, Profile]:
    """Min/opt/max shapes per input, ``(batch, *dims from the config)``.

    The config and the ONNX graph must agree: the same input names and data types, the ONNX
    batch dimension dynamic, every other ONNX dimension fixed and equal to the config's.
    Every disagreement is reported at once.
    """
    batch = batch_range(config, min_batch, opt_batch, max_batch)
    graph = onnx_inputs(onnx_model)
    problems: list[str] = []
    names = [i.name for i in config.input]
    only_config = [n for n in names if n not in graph]
    only_onnx = [n for n in graph if n not in names]
    if only_config or only_onnx:
        problems.append(
            "inputs differ between config.pbtxt and the ONNX graph: "
            f"only in the config {only_config}, only in the ONNX graph {only_onnx}"
        )
    profiles: dict[str, Profile] = {}
    for tensor in config.input:
        if tensor.name not in graph:
            continue
        if tensor.is_shape_tensor:
            problems.append(f"input {tensor.name!r} is a shape tensor; not supported")
            continue
        dims = model_dims(tensor)
        if any(d < 0 for d in dims):
            problems.append(
                f"input {tensor.name!r}: config dims {list(dims)} have a variable dimension; "
                "only the batch dimension may vary"
            )
            continue
        value = graph[tensor.name]
        found = onnx_dims(value)
        dtype = _dtype_problem("input", tensor, value.type.tensor_type.elem_type)
        if dtype:
            problems.append(dtype)
        rank = _rank_problem("input", tensor, len(found))
        if rank:
            problems.append(rank)
            continue
        if found[0] is not None:
            problems.append(
                f"input {tensor.name!r}: the ONNX batch dimension is fixed at {found[0]}; "
                "re-export the model with a dynamic batch axis"
            )
        for axis, (want, got) in enumerate(zip(dims, found[1:], strict=True), start=1):
            if got is None:
                problems.append(
                    f"input {tensor.name!r}: ONNX dimension {axis} is dynamic; only the batch "
                    "dimension (0) may be"
                )
            elif got != want:
                problems.append(
                    f"input {tensor.name!r}: dimension {axis} is {want} in the config but "
                    f"{got} in the ONNX graph"
                )
        profiles[tensor.name] = Profile((batch.min, *dims), (batch.opt, *dims), (batch.max, *dims))
    if problems:
        raise BuildError("\n".join(problems))
    return profiles


def check_outputs(config: model_config_pb2.ModelConfig, onnx_model: onnx.ModelProto) -> None:
    """Every config output exists in the ONNX graph with the same data type and rank, and
    equal dimensions where both sides fix them."""
    graph = {o.name: o for o in onnx_model.graph.output}
    problems: list[str] = []
    for tensor in config.output:
        value = graph.get(tensor.name)
        if value is None:
            problems.append(
                f"output {tensor.name!r} is not an output of the ONNX graph (it has {list(graph)})"
            )
            continue
        dims = model_dims(tensor)
        found = onnx_dims(value)
        dtype = _dtype_problem("output", tensor, value.type.tensor_type.elem_type)
        if dtype:
            problems.append(dtype)
        rank = _rank_problem("output", tensor, len(found))
        if rank:
            problems.append(rank)
            continue
        for axis, (want, got) in enumerate(zip(dims, found[1:], strict=True), start=1):
            if want >= 0 and got is not None and want != got:
                problems.append(
                    f"output {tensor.name!r}: dimension {axis} is {want} in the config but "
                    f"{got} in the ONNX graph"
                )
    if problems:
        raise BuildError("\n".join(problems))


def builder_flags(fp16: bool, int8: bool, has_calibration: bool) -> frozenset[str]:
    """``tensorrt.BuilderFlag`` names to set. INT8 needs calibration data (there is no
    calibration-free INT8 here), and calibration data without INT8 is a mistake."""
    if int8 and not has_calibration:
        raise BuildError(
            "INT8 needs calibration data: pass --calibration-npz with preprocessed inputs "
            "(or build with --fp16 only)"
        )
    if has_calibration and not int8:
        raise BuildError("calibration data is only used with --int8")
    flags = set()
    if fp16:
        flags.add(FP16)
    if int8:
        flags.add(INT8)
    return frozenset(flags)


def plan_config(
    config: model_config_pb2.ModelConfig,
    name: str,
    max_batch: int | None = None,
    version: int | None = None,
) -> model_config_pb2.ModelConfig:
    """The same model contract served from a TensorRT plan.

    Inputs, outputs, max_batch_size, dynamic batching, warm-up and parameters are kept; the
    version policy names only ``version`` when given (the one version a build writes a plan
    for: Triton would fail to load the others); the platform becomes ``tensorrt_plan``,
    instances run on the GPU, and the
    onnxruntime execution accelerators are dropped (the plan already is a TensorRT engine).
    When the engine's ``max_batch`` is below the config's, max_batch_size and the preferred batch
    sizes follow the engine, since Triton refuses a config that batches beyond its plan.
    """
    plan = model_config_pb2.ModelConfig()
    plan.CopyFrom(config)
    plan.name = name
    plan.platform = PLAN_PLATFORM
    plan.backend = ""
    plan.ClearField("default_model_filename")
    plan.optimization.ClearField("execution_accelerators")
    if version is not None:
        plan.version_policy.Clear()
        plan.version_policy.specific.versions.append(version)
    if plan.optimization.ByteSize() == 0:
        plan.ClearField("optimization")
    gpu_groups = [
        g for g in plan.instance_group if g.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    ]
    kept = [model_config_pb2.ModelInstanceGroup() for _ in gpu_groups]
    for copy, group in zip(kept, gpu_groups, strict=True):
        copy.CopyFrom(group)
    del plan.instance_group[:]
    if kept:
        plan.instance_group.extend(kept)
    else:
        plan.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=1)
    if max_batch is not None and max_batch != plan.max_batch_size:
        if not 1 <= max_batch <= plan.max_batch_size:
            raise BuildError(
                f"engine max batch {max_batch} outside 1..{plan.max_batch_size} (max_batch_size)"
            )
        too_big = [w.name for w in plan.model_warmup if w.batch_size > max_batch]
        if too_big:
            raise BuildError(
                f"model_warmup {too_big} use batches above the engine's max batch {max_batch}"
            )
        plan.max_batch_size = max_batch
        preferred = [b for b in plan.dynamic_batching.preferred_batch_size if b <= max_batch]
        del plan.dynamic_batching.preferred_batch_size[:]
        plan.dynamic_batching.preferred_batch_size.extend(preferred)
    return plan


def choose_version(
    config: model_config_pb2.ModelConfig, model_dir: Path, requested: int | None = None
) -> int:
    """The model version to build: the one asked for, else the highest the version policy
    names, else the highest numbered directory with a model.onnx. It must be servable under
    the config's version policy, since the plan config keeps that policy."""
    specific = [int(v) for v in config.version_policy.specific.versions]
    if requested is not None:
        version = requested
    elif specific:
        version = max(specific)
    else:
        found = [
            int(p.name)
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / ONNX_FILENAME).is_file()
        ]
        if not found:
            raise BuildError(f"no <version>/{ONNX_FILENAME} under {model_dir}")
        version = max(found)
    if specific and version not in specific:
        raise BuildError(
            f"version {version} is not served: the version policy names only {specific}"
        )
    if not (model_dir / str(version) / ONNX_FILENAME).is_file():
        raise BuildError(f"{model_dir / str(version) / ONNX_FILENAME} does not exist")
    return version


def tensorrt_version(text: str) -> tuple[int, int]:
    """(major, minor) of a ``tensorrt.__version__`` string such as ``10.5.0`` or ``8.6.1.post1``."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise BuildError(f"cannot read the TensorRT version {text!r}")
    return int(match.group(1)), int(match.group(2))


def explicit_batch_flag_required(version: tuple[int, int]) -> bool:
    """TensorRT 8 parses ONNX only into networks created with EXPLICIT_BATCH; from TensorRT 10
    every network is explicit-batch and the flag is deprecated."""
    return version < (10, 0)
