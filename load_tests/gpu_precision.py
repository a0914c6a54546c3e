"""FP16 vs FP32 on a GPU for every served ONNX model: accuracy drift and latency.

The production configs ask Triton's onnxruntime backend for TensorRT in FP16. Whether half
precision changes any answer is a property of the models, so it is measured here rather than
assumed: each ONNX file is converted to PyTorch with onnx2torch and run on the GPU in FP32 (TF32
off), TF32 (torch's and TensorRT's default for FP32 convolutions) and FP16, and compared with
onnxruntime FP32 on the CPU (the reference: what the CPU twin serves).
Reported per model: max |probability difference|, test AUC, decisions flipped at the card's
operating threshold; for the brain U-Net, Dice of the FP16/FP32 GPU masks against the reference
mask on the head phantom. Latency: medians of CUDA-event-timed runs, as ratios to onnxruntime on
the same machine's CPU in the same run. This is torch's FP16, not TensorRT's engine: a proxy for
the numeric risk, not the production kernel.

Two steps, because the inputs must be exactly what the platform feeds the models and the GPU node
has neither the platform's dependencies nor the shared data:

    .venv/bin/python load_tests/gpu_precision.py prepare --out gpu/inputs.npz   # here
    python3 load_tests/gpu_precision.py run --inputs gpu/inputs.npz             # GPU node

The run step needs CUDA PyTorch, onnx, onnxruntime, scikit-learn and onnx2torch (1.5.15 used),
not the platform.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = REPO_ROOT / "model_repository"
DATA = REPO_ROOT.parent / "shared" / "data" / "medmnist"
# model -> (MedMNIST file, pipeline it is served through, labels inverted?)
IMAGE_MODELS = {
    "cxr_pneumonia": ("pneumoniamnist_28_reconstructed.npz", "cxr_pneumonia", False),
    "us_breast": ("breastmnist_28.npz", "us_breast", True),
    "cxr_pneumonia_m1": ("pneumoniamnist_28_reconstructed.npz", "cxr_pneumonia", False),
    "cxr_pneumonia_m2": ("pneumoniamnist_28_reconstructed.npz", "cxr_pneumonia", False),
    "cxr_pneumonia_m3": ("pneumoniamnist_28_reconstructed.npz", "cxr_pneumonia", False),
}
BRAIN = "mri_brain_extraction"


def prepare(out: Path) -> None:
    """Test splits through the platform's own preprocessing, and the brain phantom."""
    import importlib.util

    from services.common.pipelines import PipelineRegistry
    from services.preprocessor.core import training_batch

    # The phantom the brain-model tests use (tests/ is not a package).
    spec = importlib.util.spec_from_file_location(
        "brain_phantom", REPO_ROOT / "tests" / "unit" / "test_brain_model.py"
    )
    assert spec is not None and spec.loader is not None
    phantom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(phantom)

    registry = PipelineRegistry.load(REPO_ROOT / "pipelines")
    arrays: dict[str, np.ndarray] = {}
    for model, (filename, pipeline, inverted) in IMAGE_MODELS.items():
        data = np.load(DATA / filename)
        y = data["test_labels"].reshape(-1).astype(np.int64)
        arrays[f"{model}_x"] = training_batch(data["test_images"], registry.get(pipeline))
        arrays[f"{model}_y"] = 1 - y if inverted else y
    arrays[f"{BRAIN}_x"] = phantom.head_phantom()[None, ..., None]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def _median_ms(call: Callable[[], object], repeats: int, cuda: bool = False) -> float:
    import torch

    call()  # warm-up (cuDNN algorithm choice, allocations)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1000)
    return float(statistics.median(times))


def _symmetric_conv_transpose(model: Any) -> Any:
    """ConvTranspose with end-only pads (TF 'SAME') as unpadded ConvTranspose + Slice.

    onnx2torch converts only symmetric padding; cropping the full output is the same arithmetic.
    Only the converted copy is changed, never the served file.
    """
    import onnx
    from onnx import helper, numpy_helper

    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        pads = next((a for a in node.attribute if a.name == "pads"), None)
        if node.op_type != "ConvTranspose" or pads is None:
            continue
        spatial = len(pads.ints) // 2
        begin, end = list(pads.ints[:spatial]), list(pads.ints[spatial:])
        if begin == end:
            continue
        del pads.ints[:]
        pads.ints.extend([0] * 2 * spatial)
        full, cropped = f"{node.output[0]}__full", node.output[0]
        node.output[0] = full
        axes = list(range(2, 2 + spatial))
        ends = [-e if e else np.iinfo(np.int64).max for e in end]
        names = [f"{cropped}__{k}" for k in ("starts", "ends", "axes")]
        for name, values in zip(names, (begin, ends, axes), strict=True):
            model.graph.initializer.append(
                numpy_helper.from_array(np.array(values, np.int64), name)
            )
        nodes.append(helper.make_node("Slice", [full, *names], [cropped]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x.astype(np.float64))))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


# Precision name -> (torch dtype name, allow TF32 in cuDNN/cuBLAS). Torch allows TF32 in cuDNN
# convolutions by default, and so does TensorRT for FP32 engines: "fp32" here turns it off.
PRECISIONS = {"fp32": ("float32", False), "tf32": ("float32", True), "fp16": ("float16", False)}


def _tf32(allowed: bool) -> None:
    import torch

    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


def measure(model: str, arrays: Any, repeats: int) -> dict[str, Any]:
    """One model: reference on the CPU, each precision on the GPU; accuracy drift and latency."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx2torch import convert
    from sklearn.metrics import roc_auc_score

    device = torch.device("cuda")
    path = REPOSITORY / model / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_name = "prob" if model == BRAIN else "logits"
    x = arrays[f"{model}_x"].astype(np.float32)
    reference = session.run([output_name], {input_name: x})[0]
    graph = _symmetric_conv_transpose(onnx.load(str(path)))
    nets = {
        name: convert(graph).eval().to(device, getattr(torch, dtype))
        for name, (dtype, _) in PRECISIONS.items()
    }
    xt = torch.from_numpy(x).to(device)

    def gpu(precision: str, batch: torch.Tensor) -> np.ndarray:
        dtype, tf32 = PRECISIONS[precision]
        _tf32(tf32)
        with torch.inference_mode():
            out = nets[precision](batch.to(getattr(torch, dtype)))
        out = out[0] if isinstance(out, list | tuple) else out
        return np.asarray(out.float().cpu().numpy())

    outs = {p: gpu(p, xt) for p in PRECISIONS}
    row: dict[str, Any] = {}
    if model == BRAIN:
        ref_mask = reference > 0.5
        row["mask_voxels_ref"] = int(ref_mask.sum())
        for p, out in outs.items():
            row[p] = {
                "max_abs_prob_diff": float(np.abs(out - reference).max()),
                "dice_vs_ref": _dice(out > 0.5, ref_mask),
                "voxels_flipped": int(((out > 0.5) != ref_mask).sum()),
            }
        batches = {"1": (x, xt)}
    else:
        y = arrays[f"{model}_y"]
        threshold = json.loads((REPOSITORY / model / "metrics.json").read_text())[
            "operating_threshold"
        ]
        p_ref = _sigmoid(reference[:, 0])
        row |= {"n": len(y), "auc_ref": float(roc_auc_score(y, p_ref))}
        for p, out in outs.items():
            prob = _sigmoid(out[:, 0])
            row[p] = {
                "auc": float(roc_auc_score(y, prob)),
                "max_abs_prob_diff": float(np.abs(prob - p_ref).max()),
                "decisions_flipped": int(((prob >= threshold) != (p_ref >= threshold)).sum()),
            }
        batches = {"1": (x[:1], xt[:1]), "64": (x[:64], xt[:64])}
    for size, (xb, xtb) in batches.items():
        timings = {"ort_cpu": _median_ms(partial(session.run, None, {input_name: xb}), repeats)}
        timings |= {p: _median_ms(partial(gpu, p, xtb), repeats, cuda=True) for p in PRECISIONS}
        row[f"ms_batch{size}"] = timings
        row[f"speedup_vs_ort_cpu_batch{size}"] = {
            p: timings["ort_cpu"] / timings[p] for p in PRECISIONS
        }
    return row


def run(inputs: Path, repeats: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    arrays = np.load(inputs)
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, ort {ort.__version__}")
    torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {}
    for model in [*IMAGE_MODELS, BRAIN]:
        report[model] = measure(model, arrays, repeats)
        print(model, json.dumps(report[model], indent=1), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--inputs", type=Path, required=True)
    r.add_argument("--repeats", type=int, default=20)
    r.add_argument("--report", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.out)
    else:
        report = run(args.inputs, args.repeats)
        if args.report:
            args.report.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
