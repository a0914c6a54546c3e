"""Convert deepbrain 0.1's TensorFlow brain-extraction 3D U-Net to ONNX (``mri_brain_extraction``).

``model_repository/mri_brain_extraction/1/model.onnx`` is made by this script and nothing else.
The source is the frozen graph ``deepbrain/models/graph.pb`` shipped in the PyPI package
``deepbrain`` 0.1 (MIT, Ivan Itzcovich): a skull-stripping U-Net for T1 brain MRI with input
``img:0`` ``[N, 128, 128, 128, 1]`` float32 (the volume divided by its maximum) and output
``prob:0``, the per-voxel sigmoid brain probability.

The graph has a ``training`` ``PlaceholderWithDefault`` that defaults to True, so unless it is fed
the six dropout layers stay on and the output is random. The script maps ``training:0`` to a
constant False, lets TensorFlow's graph optimiser (grappler: constant folding and dead-branch
removal) drop the dropout branches, converts the folded graph with tf2onnx (opset 17, dynamic
batch) with the tensors renamed to ``volume`` / ``prob``, and checks:

* two TensorFlow runs with ``training=False`` give identical outputs, while two runs with the
  default (True) differ: dropout is on by default and off in what we export;
* the folded graph equals the original graph fed ``training=False``;
* the ONNX model holds no random, dropout or control-flow op;
* onnxruntime (CPU) matches TensorFlow within ``1e-5`` on random input in [0, 1] (batch of 1)
  and on a batch of 2: a synthetic T1-like head phantom (whose probabilities span 0 to 1, unlike
  noise, which the network maps to ~0) and more noise.

TensorFlow and tf2onnx are not runtime dependencies of the platform; run the script from a
throwaway virtual environment outside the checkout (deepbrain is installed without its old
TensorFlow 1.x dependencies, only to get ``graph.pb``; its Python code is never imported)::

    VENV=$(mktemp -d)/tfvenv
    python3.11 -m venv $VENV
    $VENV/bin/pip install deepbrain==0.1 --no-deps
    $VENV/bin/pip install -r scripts/convert_deepbrain.requirements.txt
    $VENV/bin/python scripts/convert_deepbrain.py

(``make reproduce`` does the same in a cached venv under ``.run/`` and compares the result with
the committed file.)

It prints the graph's placeholders, the check results, and the sha256 and size of the written
file. Two runs with the same package versions write a byte-identical ``model.onnx``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf  # type: ignore[import, unused-ignore]
import tf2onnx  # type: ignore[import, unused-ignore]
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2  # type: ignore[import, unused-ignore]
from tensorflow.python.grappler import tf_optimizer  # type: ignore[import, unused-ignore]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "model_repository" / "mri_brain_extraction" / "1" / "model.onnx"

# deepbrain-0.1-py3-none-any.whl, deepbrain/models/graph.pb (as listed in the wheel's RECORD).
GRAPH_SHA256 = "6be50752ff151808dc7f8059fef39852759de8502d831949b40e991502225a2a"
GRAPH_IMAGE = "img:0"
GRAPH_TRAINING = "training:0"
GRAPH_PROB = "prob:0"

INPUT_NAME = "volume"
OUTPUT_NAME = "prob"
BATCH_DIM = "batch"
SIZE = 128
OPSET = 17
TOLERANCE = 1e-5
SEED = 0
# Ops that must not survive into the exported model: dropout's random mask and its cond.
FORBIDDEN_TF_OPS = {"RandomUniform", "Switch", "Merge", "Floor"}
FORBIDDEN_ONNX_OPS = {"RandomUniform", "RandomUniformLike", "Dropout", "If", "Loop"}
# T1-like head phantom, outside in: (semi-axes in voxels, intensity) of nested ellipsoids, as in
# tests/unit/test_brain_model.py: scalp, skull, CSF, grey matter, white matter, ventricles.
PHANTOM_LAYERS = (
    ((56, 48, 44), 0.9),
    ((52, 44, 40), 0.15),
    ((49, 41, 37), 0.25),
    ((47, 39, 35), 0.55),
    ((40, 32, 28), 0.75),
    ((8, 12, 6), 0.2),
)


def locate_graph() -> Path:
    """Find ``graph.pb`` in the installed deepbrain package without importing it (TF1 code)."""
    spec = importlib.util.find_spec("deepbrain")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("deepbrain is not installed: pip install deepbrain==0.1 --no-deps")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "graph.pb"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != GRAPH_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {GRAPH_SHA256} (deepbrain 0.1)")
    return path


def load_graph_def(path: Path) -> Any:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    return graph_def


def print_placeholders(graph_def: Any) -> None:
    print("placeholders of graph.pb:")
    for node in graph_def.node:
        if node.op in ("Placeholder", "PlaceholderWithDefault"):
            dtype = tf.dtypes.as_dtype(node.attr["dtype"].type).name
            dims = [d.size for d in node.attr["shape"].shape.dim]
            default = f" (default from {node.input[0]})" if node.input else ""
            print(f"  {node.name}: {node.op} {dtype} {dims}{default}")


def inference_graph_def(graph_def: Any) -> Any:
    """Feed ``img`` from a ``volume`` placeholder, pin ``training`` to False, fold dropout away."""
    with tf.Graph().as_default() as graph:
        volume = tf.compat.v1.placeholder(tf.float32, [None, SIZE, SIZE, SIZE, 1], name=INPUT_NAME)
        training = tf.constant(False, dtype=tf.bool, name="training_false")
        (prob,) = tf.import_graph_def(
            graph_def,
            input_map={GRAPH_IMAGE: volume, GRAPH_TRAINING: training},
            return_elements=[GRAPH_PROB],
            name="deepbrain",
        )
        tf.identity(prob, name=OUTPUT_NAME)
    pruned = tf.compat.v1.graph_util.extract_sub_graph(graph.as_graph_def(), [OUTPUT_NAME])

    # Grappler: constant folding resolves the dropout conds' predicate, the loop optimiser
    # removes the dead (training) branches of the Switch/Merge pairs.
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.optimizers[:] = ["constfold", "loop", "dependency", "pruning"]
    rewrite.min_graph_nodes = -1
    with tf.Graph().as_default():
        meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=pruned)
        fetch = meta_graph_pb2.CollectionDef()
        fetch.node_list.value.extend([f"{INPUT_NAME}:0", f"{OUTPUT_NAME}:0"])
        meta_graph.collection_def["train_op"].CopyFrom(fetch)
        folded = tf_optimizer.OptimizeGraph(config, meta_graph)
    folded = tf.compat.v1.graph_util.extract_sub_graph(folded, [OUTPUT_NAME])
    left = sorted({node.op for node in folded.node} & FORBIDDEN_TF_OPS)
    if left:
        raise SystemExit(f"dropout not folded away, ops left: {left}")
    return folded


def head_phantom() -> np.ndarray:
    """``[SIZE, SIZE, SIZE]`` float32 T1-like head, divided by its maximum."""
    axis = np.arange(SIZE, dtype=np.float32) - (SIZE - 1) / 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    volume = np.zeros((SIZE, SIZE, SIZE), np.float32)
    for (a, b, c), intensity in PHANTOM_LAYERS:
        volume[(z / a) ** 2 + (y / b) ** 2 + (x / c) ** 2 <= 1] = intensity
    volume /= volume.max()
    return volume


def run_tf(graph_def: Any, feeds: dict[str, Any], fetch: str) -> np.ndarray:
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            return np.asarray(session.run(fetch, feed_dict=feeds))


def convert(graph_def: Any) -> onnx.ModelProto:
    with tf.Graph().as_default():
        converted = tf2onnx.convert.from_graph_def(
            graph_def,
            name="mri_brain_extraction",
            input_names=[f"{INPUT_NAME}:0"],
            output_names=[f"{OUTPUT_NAME}:0"],
            opset=OPSET,
            tensors_to_rename={f"{INPUT_NAME}:0": INPUT_NAME, f"{OUTPUT_NAME}:0": OUTPUT_NAME},
        )
    model: onnx.ModelProto = converted[0]
    # tf2onnx names the unknown batch dimension "unk__<n>"; give it a stable, readable name.
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    canonical_names(model)
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(node.op_type for node in model.graph.node)
    bad = sorted(set(ops) & FORBIDDEN_ONNX_OPS)
    if bad:
        raise SystemExit(f"ONNX model holds ops it must not: {bad}")
    print("ONNX ops:", dict(sorted(ops.items())))
    return model


# tf2onnx numbers the nodes and constants it creates ("Conv__130", "new_shape__186") from a
# process-wide counter whose order can differ between runs.
GENERATED = re.compile(r"__\d+")


def canonical_names(model: onnx.ModelProto) -> None:
    """Rename tf2onnx's numbered nodes and tensors from the graph's structure, so that two
    conversions give the same bytes: nodes ``<op>_<index in graph order>``, their outputs
    ``<node>:<k>``, constants ``<first consumer>/input<j>``; initializers sorted by name."""
    graph = model.graph
    keep = {value.name for value in (*graph.input, *graph.output)}
    tensors: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        if GENERATED.search(node.name):
            node.name = f"{node.op_type}_{index}"
        for k, output in enumerate(node.output):
            if GENERATED.search(output) and output not in keep:
                tensors[output] = f"{node.name}:{k}"
    for node in graph.node:
        for j, name in enumerate(node.input):
            if GENERATED.search(name) and name not in keep and name not in tensors:
                tensors[name] = f"{node.name}/input{j}"
    for node in graph.node:
        node.input[:] = [tensors.get(name, name) for name in node.input]
        node.output[:] = [tensors.get(name, name) for name in node.output]
    for initializer in graph.initializer:
        initializer.name = tensors.get(initializer.name, initializer.name)
    for info in graph.value_info:
        info.name = tensors.get(info.name, info.name)
    ordered = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)


def run_onnx(model_bytes: bytes, volume: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    (prob,) = session.run([OUTPUT_NAME], {INPUT_NAME: volume})
    return np.asarray(prob)


def describe(name: str, model: onnx.ModelProto) -> str:
    def shape(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return (
        f"{name}: inputs {[(v.name, shape(v)) for v in model.graph.input]}, "
        f"outputs {[(v.name, shape(v)) for v in model.graph.output]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write model.onnx")
    args = parser.parse_args()

    print(f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__}")
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}")
    graph_def = load_graph_def(locate_graph())
    print_placeholders(graph_def)

    rng = np.random.default_rng(SEED)
    volume = rng.random((1, SIZE, SIZE, SIZE, 1), dtype=np.float32)

    # Dropout: on by default (two runs differ), off with training=False (two runs are equal).
    default_runs = [run_tf(graph_def, {GRAPH_IMAGE: volume}, GRAPH_PROB) for _ in range(2)]
    off = {GRAPH_IMAGE: volume, GRAPH_TRAINING: False}
    reference, repeat = (run_tf(graph_def, off, GRAPH_PROB) for _ in range(2))
    default_diff = float(np.max(np.abs(default_runs[0] - default_runs[1])))
    print(f"TF training default (True): two runs differ by max {default_diff:.3g}")
    if default_diff == 0.0:
        raise SystemExit("expected dropout to make the default (training=True) runs differ")
    if not np.array_equal(reference, repeat):
        raise SystemExit("TF with training=False is not deterministic")
    print("TF training=False: two runs identical (dropout off)")

    folded = inference_graph_def(graph_def)
    folded_out = run_tf(folded, {f"{INPUT_NAME}:0": volume}, f"{OUTPUT_NAME}:0")
    folded_diff = float(np.max(np.abs(folded_out - reference)))
    print(f"folded graph vs original (training=False): max abs diff {folded_diff:.3g}")
    if folded_diff > TOLERANCE:
        raise SystemExit("folding changed the output")

    model = convert(folded)
    print(describe("ONNX", model))
    model_bytes = model.SerializeToString()

    onnx_out = run_onnx(model_bytes, volume)
    onnx_diff = float(np.max(np.abs(onnx_out - reference)))
    print(
        f"ONNX vs TF, batch 1: max abs diff {onnx_diff:.3g} (tolerance {TOLERANCE:g}); "
        f"prob range [{reference.min():.4f}, {reference.max():.4f}]"
    )
    noise = rng.random((1, SIZE, SIZE, SIZE, 1), dtype=np.float32)
    pair = np.concatenate([head_phantom()[None, ..., None], noise])
    pair_ref = run_tf(folded, {f"{INPUT_NAME}:0": pair}, f"{OUTPUT_NAME}:0")
    pair_onnx = run_onnx(model_bytes, pair)
    pair_diff = float(np.max(np.abs(pair_onnx - pair_ref)))
    flipped = int(np.count_nonzero((pair_onnx > 0.5) != (pair_ref > 0.5)))
    print(
        f"ONNX vs TF, batch 2 (phantom, noise): max abs diff {pair_diff:.3g}; phantom mask "
        f"{int(np.count_nonzero(pair_ref[0] > 0.5))} voxels, {flipped} differ at prob > 0.5"
    )
    if max(onnx_diff, pair_diff) > TOLERANCE:
        raise SystemExit("ONNX output differs from TensorFlow beyond the tolerance")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(model_bytes)
    digest = hashlib.sha256(model_bytes).hexdigest()
    print(f"wrote {args.out.name}: {len(model_bytes)} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
