"""mri_brain_extraction: the committed ONNX (deepbrain's U-Net) against its config and a phantom.

The model is made by ``scripts/convert_deepbrain.py`` (TensorFlow, not installed here); these
tests need only onnx and onnxruntime. One CPU inference of a 128^3 volume takes ~2 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / "mri_brain_extraction"
SIZE = 128
# T1-like head phantom, outside in: (semi-axes in voxels, intensity) of nested ellipsoids:
# scalp (bright fat), skull (dark), CSF, grey matter, white matter, ventricles. The same as in
# scripts/convert_deepbrain.py. A bare bright ellipsoid in a uniform grey shell is segmented only
# in part (~30% of it, inside it): the network wants T1-like contrast.
PHANTOM_LAYERS = (
    ((56, 48, 44), 0.9),
    ((52, 44, 40), 0.15),
    ((49, 41, 37), 0.25),
    ((47, 39, 35), 0.55),
    ((40, 32, 28), 0.75),
    ((8, 12, 6), 0.2),
)
HEAD, INNER_SKULL, BRAIN = (PHANTOM_LAYERS[i][0] for i in (0, 2, 3))


def read_config() -> model_config_pb2.ModelConfig:
    text = (MODEL_DIR / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def onnx_dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def inside(semi_axes: tuple[int, int, int]) -> np.ndarray:
    axis = np.arange(SIZE, dtype=np.float32) - (SIZE - 1) / 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    a, b, c = semi_axes
    return np.asarray((z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1)


def head_phantom() -> np.ndarray:
    """``[SIZE, SIZE, SIZE]`` float32, divided by its maximum as deepbrain's preprocessing does."""
    volume = np.zeros((SIZE, SIZE, SIZE), np.float32)
    for semi_axes, intensity in PHANTOM_LAYERS:
        volume[inside(semi_axes)] = intensity
    volume /= volume.max()
    return volume


def test_config_matches_the_onnx_model() -> None:
    config = read_config()
    assert config.name == "mri_brain_extraction" == MODEL_DIR.name
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert (accelerator.name, accelerator.parameters["precision_mode"]) == ("tensorrt", "FP16")
    assert list(config.version_policy.specific.versions) == [1]
    assert config.max_batch_size == 2
    assert all(b <= config.max_batch_size for b in config.dynamic_batching.preferred_batch_size)

    model = onnx.load(str(MODEL_DIR / "1" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    pairs = [(config.input, model.graph.input), (config.output, model.graph.output)]
    for declared, found in pairs:
        assert [t.name for t in declared] == [v.name for v in found]
        for tensor, value in zip(declared, found, strict=True):
            assert tensor.data_type == model_config_pb2.TYPE_FP32
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            # max_batch_size > 0: Triton prepends the batch dimension, dynamic in the model.
            assert onnx_dims(value) == ["batch", *tensor.dims], tensor.name
    assert list(config.input[0].dims) == [SIZE, SIZE, SIZE, 1]
    # Dropout was folded away at conversion: nothing random or conditional is left.
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"RandomUniform", "RandomUniformLike", "Dropout", "If", "Loop"}

    (warmup,) = config.model_warmup
    assert warmup.batch_size <= config.max_batch_size
    assert list(warmup.inputs) == [config.input[0].name]
    sample = warmup.inputs[config.input[0].name]
    assert list(sample.dims) == list(config.input[0].dims) and sample.zero_data


@pytest.fixture(scope="module")
def phantom_prob() -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        str(MODEL_DIR / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    (prob,) = session.run(["prob"], {"volume": head_phantom()[None, ..., None]})
    assert prob.shape == (1, SIZE, SIZE, SIZE, 1) and prob.dtype == np.float32
    return np.asarray(prob[0, ..., 0])


def test_phantom_brain_is_segmented_inside_the_head(phantom_prob: np.ndarray) -> None:
    # onnxruntime's vectorised sigmoid can overshoot 1 by an ulp (1.0000001).
    assert phantom_prob.min() >= 0.0 and phantom_prob.max() <= 1.0 + 1e-6
    mask = phantom_prob > 0.5
    voxels = int(mask.sum())
    brain = inside(BRAIN)
    assert voxels > 0.5 * brain.sum()
    # Measured (onnxruntime 1.32, CPU): 279515 mask voxels, none outside the head nor beyond the
    # inner skull surface, 5.8% in the CSF layer; Dice 0.960 against the grey + white matter
    # ellipsoid, which the mask covers to 98.0%.
    assert np.count_nonzero(mask & ~inside(HEAD)) / voxels < 0.001
    assert np.count_nonzero(mask & ~inside(INNER_SKULL)) / voxels < 0.01
    dice = 2 * np.count_nonzero(mask & brain) / (voxels + brain.sum())
    assert dice > 0.9
