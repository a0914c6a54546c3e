"""Shared library of the MedMNIST (28x28) training scripts: CNN, training, ONNX export, metrics.

Why this exists: every 28x28 model in ``model_repository`` (``cxr_pneumonia``, ``us_breast``,
the ``cxr_pneumonia_m*`` ensemble members) must be rebuildable from source on two CPU cores in
a few minutes, bit for bit, and must be documented the same way. Everything that could make
two runs differ (data order, augmentation, weight init, thread count, kernel choice) is seeded
or pinned here, once.

The network is a small all-convolutional CNN whose head is global average pooling (GAP) followed
by one Linear layer. For such a head the logit is the spatial mean of the class activation map
(CAM) plus the Linear bias::

    cam[x, y] = sum_k w_k * F_k[x, y]            (F = last feature map, w = Linear weights)
    logit     = sum_k w_k * mean_xy F_k + b = mean_xy cam + b

so the CAM is exported as a second ONNX output, ``cam`` [N, 1, 7, 7], bias excluded (Zhou et
al. 2016). ``export_onnx`` checks this identity with onnxruntime.

The per-model scripts (``train_cxr_pneumonia.py``, ``train_us_breast.py``,
``train_cxr_ensemble.py``) only say which data, pipeline and recipe to use, and what the model
card says about intended use and limits.
"""

# mypy: disallow-subclassing-any=False
# (torch is an optional extra, `.[train]`; where it is not installed nn.Module is Any.)
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import random
import re
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

OPSET = 17
# One thread: on a shared 2-core machine two OpenMP threads ran anywhere from 1.6x faster to 4x
# slower than one (waiting at barriers while the other core is busy); one thread is steady.
NUM_THREADS = 1
THREADS = f"{NUM_THREADS} thread" + ("s" if NUM_THREADS > 1 else "")
IMAGE_SIZE = 28
BOOTSTRAP_RESAMPLES = 1000
ECE_BINS = 10
CAM_IDENTITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one training run besides the data; the card prints it."""

    epochs: int
    width: int = 16
    batch_size: int = 128
    peak_lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    dropout: float = 0.0
    pct_start: float = 0.2
    max_rotation_deg: float = 10.0
    max_scale: float = 0.1
    max_shift_px: float = 2.0
    hflip: bool = True
    # Which weights are kept: "swa" = the average of the weights at the end of each epoch from
    # ``swa_start`` on (stochastic weight averaging, BatchNorm statistics recomputed after);
    # "best_val" = the epoch with the best val AUC; "last" = the final epoch.
    select: str = "swa"
    swa_start_frac: float = 0.5

    @property
    def swa_start(self) -> int:
        """First epoch (1-based) whose end-of-epoch weights enter the average."""
        return max(1, int(self.epochs * self.swa_start_frac))


@dataclass
class Splits:
    """Preprocessed model inputs (N, 1, 28, 28) float32 and 0/1 labels per split."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]

    def counts(self) -> dict[str, tuple[int, int]]:
        """(negatives, positives) per split."""
        return {s: (int((v == 0).sum()), int((v == 1).sum())) for s, v in self.y.items()}


@dataclass
class Trained:
    """A trained model and how it was chosen."""

    model: GapCnn
    chosen: str
    val_auc: float
    seconds: float
    history: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Pin every source of randomness and non-determinism we rely on."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    # Deterministic mode would also fill every freshly allocated tensor with NaN, which cost
    # about a fifth of the training time; no op used here reads uninitialised memory.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined,unused-ignore]


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 conv + BatchNorm + ReLU; BN lets a small net train fast at a high learning rate."""
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class GapCnn(nn.Module):
    """Conv blocks -> global average pooling -> (dropout) -> one Linear to a single logit.

    Channels ``w, 2w, 2w, 4w, 4w`` with 2x2 max-pooling after the 1st and 3rd block
    (28 -> 14 -> 7). Only one conv runs at full 28x28 resolution: it is where most CPU time
    goes, and extra full-resolution convs bought no val AUC.
    """

    def __init__(self, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *conv_bn(1, w),
            nn.MaxPool2d(2),  # 14x14
            *conv_bn(w, 2 * w),
            *conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),  # 7x7
            *conv_bn(2 * w, 4 * w),
            *conv_bn(4 * w, 4 * w),
        )
        # Dropout on the pooled features is the identity at inference, so the CAM identity
        # below holds for the exported (eval-mode) graph.
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logit, shape (N, 1)."""
        features: torch.Tensor = self.features(x)
        logits: torch.Tensor = self.fc(self.dropout(features.mean(dim=(2, 3))))
        return logits


class WithCam(nn.Module):
    """Export wrapper: (logits [N, 1], cam [N, 1, h, w]) from one forward pass.

    ``cam`` is the last feature map weighted by the Linear weights (a 1x1 convolution without
    bias), so ``cam.mean((2, 3)) + fc.bias == logits``.
    """

    def __init__(self, net: GapCnn) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and class activation map."""
        features: torch.Tensor = self.net.features(x)
        logits: torch.Tensor = self.net.fc(features.mean(dim=(2, 3)))
        weight = self.net.fc.weight[:, :, None, None]
        cam: torch.Tensor = nn.functional.conv2d(features, weight)
        return logits, cam


def augment(x: torch.Tensor, gen: torch.Generator, recipe: Recipe) -> torch.Tensor:
    """Random rotation, scale, shift and (optionally) horizontal flip in one affine resample.

    Only mild geometry is used: the images are roughly aligned. All draws come from ``gen``.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(recipe.max_rotation_deg)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * recipe.max_scale
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * recipe.max_shift_px / IMAGE_SIZE)
    flip_draw = torch.rand(n, generator=gen)
    flip = torch.where(flip_draw < 0.5, -1.0, 1.0) if recipe.hflip else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def predict_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Eval-mode logits (N,) for a preprocessed array, in fixed-size batches."""
    model.eval()
    with torch.no_grad():
        out = [model(torch.from_numpy(x[i : i + 512])) for i in range(0, len(x), 512)]
    logits: np.ndarray = torch.cat(out).numpy()[:, 0]
    return logits


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Probability of the positive class, as the platform's postprocessor computes it."""
    prob: np.ndarray = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    return prob


def train(
    recipe: Recipe,
    data: Splits,
    seed: int,
    log: Callable[[str], None] = print,
) -> Trained:
    """AdamW + one-cycle; keep averaged (SWA), best-val or last weights, as the recipe says."""
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GapCnn(recipe.width, recipe.dropout)
    # No weight decay on BatchNorm affine parameters and biases (1-D tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=recipe.peak_lr,
    )
    x_train, y_train = data.x["train"], data.y["train"]
    steps_per_epoch = math.ceil(len(x_train) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=recipe.peak_lr,
        total_steps=recipe.epochs * steps_per_epoch,
        pct_start=recipe.pct_start,
    )
    xt = torch.from_numpy(x_train)
    # Label smoothing for a binary logit: pull targets 0/1 towards 0.5.
    smooth = recipe.label_smoothing
    yt = torch.from_numpy(y_train.astype(np.float32)) * (1 - smooth) + smooth / 2

    started = time.perf_counter()
    best_auc, best_epoch, best_state = -1.0, -1, copy.deepcopy(model.state_dict())
    swa_sum: list[torch.Tensor] = []
    history: list[float] = []
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(perm), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            xb = augment(xt[idx], gen, recipe)
            loss = nn.functional.binary_cross_entropy_with_logits(model(xb)[:, 0], yt[idx])
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if recipe.select == "swa" and epoch >= recipe.swa_start:
            with torch.no_grad():
                params = [p.detach().clone() for p in model.parameters()]
                swa_sum = (
                    params if not swa_sum else [a + b for a, b in zip(swa_sum, params, strict=True)]
                )
        val_auc = float(roc_auc_score(data.y["val"], predict_logits(model, data.x["val"])))
        history.append(val_auc)
        marker = ""
        if recipe.select == "last" or (recipe.select == "best_val" and val_auc > best_auc):
            best_auc, best_epoch, best_state = val_auc, epoch, copy.deepcopy(model.state_dict())
            marker = " *"
        elif recipe.select == "swa" and epoch >= recipe.swa_start:
            marker = " +"
        log(
            f"epoch {epoch:3d}  loss {total / len(xt):.4f}  val_auc {val_auc:.4f}"
            f"  ({time.perf_counter() - t0:.1f}s){marker}"
        )
    if recipe.select == "swa":
        count = recipe.epochs - recipe.swa_start + 1
        with torch.no_grad():
            for p, s in zip(model.parameters(), swa_sum, strict=True):
                p.copy_(s / count)
        recompute_batchnorm(model, xt)
        chosen = f"average of the weights after epochs {recipe.swa_start}-{recipe.epochs} (SWA)"
        best_auc = float(roc_auc_score(data.y["val"], predict_logits(model, data.x["val"])))
        log(f"SWA over epochs {recipe.swa_start}-{recipe.epochs}: val_auc {best_auc:.4f}")
    else:
        model.load_state_dict(best_state)
        chosen = f"epoch {best_epoch} of {recipe.epochs} ({recipe.select})"
    model.eval()
    return Trained(model, chosen, best_auc, time.perf_counter() - started, history)


def recompute_batchnorm(model: GapCnn, x: torch.Tensor) -> None:
    """BatchNorm running statistics for averaged weights: one pass over un-augmented ``x``.

    Equal-weight (cumulative) averages over fixed, in-order batches, so the result is
    deterministic.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 512):
            model(x[i : i + 512])
    for m in norms:
        m.momentum = 0.1
    model.eval()


def ort_session(path: Path) -> ort.InferenceSession:
    """A CPU onnxruntime session pinned to the training thread count."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = NUM_THREADS
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits (N,) of an exported model for a preprocessed array, as served."""
    logits: np.ndarray = ort_session(path).run(["logits"], {"image": x})[0][:, 0]
    return logits


def export_onnx(model: GapCnn, path: Path, check_x: np.ndarray, cam: bool) -> None:
    """Export (outputs ``logits`` and, with ``cam``, ``cam``) and verify with onnxruntime.

    Uses the legacy TorchScript exporter (no onnxscript dependency); BatchNorm is folded into
    the convolutions in eval mode, keeping the file small. Checks that onnxruntime reproduces
    the torch logits and, for the CAM, that ``mean(cam) + bias == logits``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    module: nn.Module = WithCam(model) if cam else model
    names = ["logits", "cam"] if cam else ["logits"]
    dummy = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        # The legacy exporter is deliberate (see docstring); silence its deprecation notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=names,
            dynamic_axes={"image": {0: "N"}, **{n: {0: "N"} for n in names}},
            do_constant_folding=True,
        )
    outputs = ort_session(path).run(names, {"image": check_x})
    got = outputs[0]
    want = predict_logits(model, check_x)[:, None]
    if got.shape != want.shape or got.dtype != np.float32:
        raise RuntimeError(f"ONNX output {got.shape} {got.dtype}, expected {want.shape} float32")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    if cam:
        check_cam_identity(got, outputs[1], cam_bias(model))


def cam_bias(model: GapCnn) -> float:
    """The Linear bias b of ``logit = mean(cam) + b`` (exact float32 value as a float)."""
    return float(model.fc.bias.detach()[0])


def check_cam_identity(logits: np.ndarray, cam: np.ndarray, bias: float) -> None:
    """Raise unless the CAM has shape [N, 1, 7, 7] and ``mean(cam) + bias == logits``."""
    n = len(logits)
    if cam.shape != (n, 1, IMAGE_SIZE // 4, IMAGE_SIZE // 4) or cam.dtype != np.float32:
        raise RuntimeError(f"cam output {cam.shape} {cam.dtype}, expected [{n}, 1, 7, 7] float32")
    implied = cam.astype(np.float64).mean(axis=(1, 2, 3)) + bias
    err = float(np.abs(implied - logits[:, 0]).max())
    if err > CAM_IDENTITY_TOLERANCE:
        raise RuntimeError(f"mean(cam) + bias differs from the logit by {err:.2e}")


# ---------------------------------------------------------------------------------------------
# Metrics


def at_threshold(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity and specificity when predicting positive for prob >= threshold."""
    pred = prob >= threshold
    pos, neg = y == 1, y == 0
    return {
        "accuracy": float((pred == pos).mean()),
        "sensitivity": float(pred[pos].mean()),
        "specificity": float((~pred[neg]).mean()),
    }


def youden_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """Probability threshold maximising sensitivity + specificity - 1 (chosen on val)."""
    fpr, tpr, thr = roc_curve(y, prob)
    return float(thr[int(np.argmax(tpr - fpr))])


def bootstrap_ci(
    y: np.ndarray, prob: np.ndarray, threshold: float, seed: int
) -> dict[str, tuple[float, float]]:
    """Percentile 95% CIs of AUC, sensitivity and specificity at ``threshold``.

    Seeded resampling of the test set with replacement, stratified by class so that every
    resample keeps the split's class counts (and AUC is always defined).
    """
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    draws: dict[str, list[float]] = {"auc": [], "sensitivity": [], "specificity": []}
    for _ in range(BOOTSTRAP_RESAMPLES):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        draws["auc"].append(float(roc_auc_score(y[idx], prob[idx])))
        m = at_threshold(y[idx], prob[idx], threshold)
        draws["sensitivity"].append(m["sensitivity"])
        draws["specificity"].append(m["specificity"])
    out = {}
    for name, values in draws.items():
        lo, hi = np.percentile(values, [2.5, 97.5])
        out[name] = (round(float(lo), 6), round(float(hi), 6))
    return out


def calibration(y: np.ndarray, prob: np.ndarray) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error and reliability table, 10 equal-width bins of P(positive).

    ECE = sum over bins of (bin count / N) * |observed positive rate - mean predicted P|.
    This is the binary (positive-class) form; empty bins are listed with count 0.
    """
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    which = np.clip(np.digitize(prob, edges[1:-1], right=False), 0, ECE_BINS - 1)
    ece, table = 0.0, []
    for b in range(ECE_BINS):
        inside = which == b
        count = int(inside.sum())
        row: dict[str, Any] = {
            "bin": f"[{edges[b]:.1f}, {edges[b + 1]:.1f}{']' if b == ECE_BINS - 1 else ')'}",
            "count": count,
            "mean_predicted": None,
            "observed_rate": None,
        }
        if count:
            mean_p, rate = float(prob[inside].mean()), float(y[inside].mean())
            ece += count / len(y) * abs(rate - mean_p)
            row["mean_predicted"], row["observed_rate"] = round(mean_p, 4), round(rate, 4)
        table.append(row)
    return round(ece, 6), table


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, rounded as the metrics files store it."""
    return round(float(roc_auc_score(y, score)), 6)


def evaluate(
    y_val: np.ndarray,
    val_logits: np.ndarray,
    y_test: np.ndarray,
    test_logits: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    """Operating threshold on val, then every test-split metric the card reports."""
    p_val, p_test = sigmoid(val_logits), sigmoid(test_logits)
    threshold = youden_threshold(y_val, p_val)
    ci = bootstrap_ci(y_test, p_test, threshold, seed)
    ece, table = calibration(y_test, p_test)
    return {
        "val_auc": auc(y_val, val_logits),
        "test_auc": auc(y_test, test_logits),
        "test_auc_ci95": list(ci["auc"]),
        "test_accuracy_at_0_5": round(at_threshold(y_test, p_test, 0.5)["accuracy"], 6),
        "operating_threshold": round(threshold, 6),
        "operating_threshold_selection": "Youden's J on val, probability scale",
        "test_at_operating_threshold": {
            k: round(v, 6) for k, v in at_threshold(y_test, p_test, threshold).items()
        },
        "test_sensitivity_ci95": list(ci["sensitivity"]),
        "test_specificity_ci95": list(ci["specificity"]),
        "bootstrap": f"{BOOTSTRAP_RESAMPLES} stratified resamples of test, seed {seed}",
        "test_ece": ece,
        "test_reliability": table,
    }


def sha256(path: Path) -> str:
    """Content hash, recorded so deployed artefacts can be matched to a training run."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as stored in metrics.json."""
    return asdict(recipe)


# ---------------------------------------------------------------------------------------------
# Model card pieces (prose is written as single-line paragraphs and wrapped here)


def wrap(text: str) -> str:
    """Wrap each blank-line separated paragraph at 100 columns (tables and code untouched)."""
    out = []
    for para in text.split("\n\n"):
        if para.lstrip().startswith(("|", "```", "- ")):
            out.append(para)
        else:
            out.append(textwrap.fill(" ".join(para.split()), width=100, break_on_hyphens=False))
    return "\n\n".join(out)


def bullets(items: list[str]) -> str:
    """Markdown bullet list, wrapped with a hanging indent."""
    return "\n".join(
        textwrap.fill(
            " ".join(item.split()),
            width=100,
            initial_indent="- ",
            subsequent_indent="  ",
            break_on_hyphens=False,
        )
        for item in items
    )


def architecture_text(width: int, dropout: float) -> str:
    """One paragraph describing GapCnn at this width."""
    w = width
    drop = f", dropout {dropout} on the pooled features (training only)" if dropout else ""
    return (
        f"5 x (3x3 conv, BatchNorm, ReLU) at {w}/{2 * w}/{2 * w}/{4 * w}/{4 * w} channels with "
        f"2x2 max-pooling after the 1st and 3rd (28 -> 14 -> 7), then global average pooling"
        f"{drop} and a single Linear({4 * w} -> 1)."
    )


def cam_text() -> str:
    """How the ``cam`` output is defined and how to read it."""
    return (
        "Output `cam`: float32 `[N, 1, 7, 7]`, the class activation map (Zhou et al. 2016): the "
        "last 7x7 feature map weighted by the Linear weights, `sum_k w_k F_k(x, y)`, **bias "
        "excluded**, so that `mean(cam) + b = logit` (b is `cam_bias` in `metrics.json`; checked "
        "with onnxruntime at export and by `tests/unit/test_model_files.py`). Each cell covers "
        "4x4 input pixels; positive cells pushed the logit up. It shows where the model looked, "
        "not a segmentation, and is not validated as an explanation."
    )


def results_table(m: dict[str, Any], positive: str) -> str:
    """Markdown table of the test-split metrics with their bootstrap CIs."""
    t = m["test_at_operating_threshold"]
    ci_auc, ci_se, ci_sp = (
        m["test_auc_ci95"],
        m["test_sensitivity_ci95"],
        m["test_specificity_ci95"],
    )
    table = f"""| metric | value (95% bootstrap CI) |
|---|---|
| AUC | {m["test_auc"]:.4f} ({ci_auc[0]:.4f} to {ci_auc[1]:.4f}) |
| operating threshold, P({positive}) (Youden's J on val) | {m["operating_threshold"]:.4f} |
| sensitivity at operating threshold | {t["sensitivity"]:.4f} ({ci_se[0]:.4f} to {ci_se[1]:.4f}) |
| specificity at operating threshold | {t["specificity"]:.4f} ({ci_sp[0]:.4f} to {ci_sp[1]:.4f}) |
| accuracy at operating threshold | {t["accuracy"]:.4f} |
| accuracy at P >= 0.5 | {m["test_accuracy_at_0_5"]:.4f} |
| expected calibration error (10 bins) | {m["test_ece"]:.4f} |
| val AUC | {m["val_auc"]:.4f} |"""
    note = (
        f"CIs: percentile intervals over {m['bootstrap']} (class-stratified, so each resample "
        "keeps the test split's class counts); the threshold is held fixed."
    )
    return table + "\n\n" + wrap(note)


def reliability_text(
    m: dict[str, Any],
    positive: str,
    label_smoothing: float,
    counts: dict[str, tuple[int, int]],
) -> str:
    """Markdown reliability table (test split) with a short reading guide."""
    rows = "\n".join(
        f"| {r['bin']} | "
        + (f"{r['mean_predicted']:.3f} | {r['observed_rate']:.3f}" if r["count"] else "- | -")
        + f" | {r['count']} |"
        for r in m["test_reliability"]
    )
    intro = (
        f"Reliability on the test split: P({positive}) binned into 10 equal-width bins; a "
        "calibrated model has observed rate = mean predicted in every bin. Expected calibration "
        f"error (ECE, count-weighted mean of |observed - predicted|): **{m['test_ece']:.4f}**."
    )
    smoothing = (
        f"Training used label smoothing {label_smoothing}, which pulls probabilities towards 0.5 "
        "by design. "
        if label_smoothing
        else ""
    )
    share = {k: pos / (neg + pos) for k, (neg, pos) in counts.items()}
    shift = (
        f" The test split's {positive} share ({share['test']:.1%}) differs from training's "
        f"({share['train']:.1%}), which alone moves observed rates away from predictions."
        if abs(share["test"] - share["train"]) > 0.02
        else ""
    )
    outro = (
        f"{smoothing}No recalibration (e.g. temperature scaling) is applied.{shift} Observed "
        "rates depend on the population's prevalence: use the probability as a ranking score with "
        "the operating threshold, not as a calibrated risk."
    )
    table = f"| bin of P | mean predicted | observed rate | count |\n|---|---|---|---|\n{rows}"
    return wrap(intro) + "\n\n" + table + "\n\n" + wrap(outro)


def split_table(counts: dict[str, tuple[int, int]], negative: str, positive: str) -> str:
    """Markdown table of split sizes and class balance."""
    rows = "\n".join(
        f"| {name} | {neg + pos} | {neg} | {pos} | {pos / (neg + pos):.1%} |"
        for name, (neg, pos) in counts.items()
    )
    return (
        f"| split | images | {negative} (0) | {positive} (1) | positive share |\n"
        f"|---|---|---|---|---|\n{rows}"
    )


def training_text(recipe: Recipe, seed: int | str) -> str:
    """The optimisation and augmentation settings, in prose (``seed``: number or phrase)."""
    seed_text = f"seed {seed}" if isinstance(seed, int) else seed
    flip = " and horizontal flip" if recipe.hflip else ""
    select = {
        "swa": (
            f"the weights at the end of epochs {recipe.swa_start}-{recipe.epochs} are averaged "
            "(stochastic weight averaging, Izmailov et al. 2018) and the BatchNorm statistics "
            "recomputed on the un-augmented training images; val picks nothing"
        ),
        "best_val": "the weights of the epoch with the best val AUC are kept",
        "last": "the final weights are kept",
    }[recipe.select]
    smoothing = (
        f"BCE with label smoothing {recipe.label_smoothing}"
        if recipe.label_smoothing
        else "plain BCE"
    )
    dropout = f", dropout {recipe.dropout}" if recipe.dropout else ""
    return (
        f"AdamW (peak lr {recipe.peak_lr}, weight decay {recipe.weight_decay} on conv/linear "
        f"weights), one-cycle schedule ({recipe.pct_start:.0%} warm-up), {recipe.epochs} epochs, "
        f"batch {recipe.batch_size}, {smoothing}{dropout}; augmentation of random rotation "
        f"(+-{recipe.max_rotation_deg:g} deg), scale (+-{recipe.max_scale:.0%}), shift "
        f"(+-{recipe.max_shift_px:g} px){flip}; {select}. CPU, {THREADS}, {seed_text}, "
        "deterministic algorithms."
    )


@dataclass
class CardText:
    """The model-specific prose of a model card; numbers come from metrics.json."""

    title: str
    script: str
    intended_use: str
    intended_users: str
    not_for_use: list[str]
    output: str
    positive: str
    negative: str
    preprocessing: str
    data: str
    selection_note: str
    reference: str
    limitations: list[str]
    minutes: str


def write_card(
    path: Path,
    text: CardText,
    m: dict[str, Any],
    recipe: Recipe,
    counts: dict[str, tuple[int, int]],
) -> None:
    """Write MODEL_CARD.md for a single GapCnn model from its metrics."""
    n_test = sum(counts["test"])
    val_role = (
        "picked the checkpoint and the operating threshold"
        if recipe.select == "best_val"
        else "served only for the operating threshold (and the logged learning curve)"
    )
    model_bullets = bullets(
        [
            "Input `image`: float32 `[N, 1, 28, 28]` (dynamic batch), preprocessed as below.",
            f"Output `logits`: float32 `[N, 1]`, {text.output}",
            f"{cam_text()} For this model `b = {m['cam_bias']!r}`.",
            f"ONNX opset {OPSET}, exported with the TorchScript (legacy) exporter, BatchNorm "
            f"folded into the convolutions; {m['onnx_bytes']} bytes, {m['parameters']} trained "
            f"parameters, sha256 `{m['onnx_sha256']}`.",
            f"Architecture: {architecture_text(recipe.width, recipe.dropout)}",
        ]
    )
    data_use = (
        f"Training used the train split only; val {val_role}; test only produced the numbers "
        f"below. {text.selection_note}"
    )
    reproduce = (
        f"(`make train` installs the `train` extra, torch and scikit-learn, first.) CPU only "
        f"({THREADS}), {text.minutes}. Two runs with the same seed, torch version "
        f"(`{m['torch_version']}`), CPU kernel set (`{m['torch_cpu_capability']}`) and thread "
        "count produce a byte-identical `model.onnx`; other torch versions or CPUs may give "
        "slightly different weights (`make reproduce` checks both cases)."
    )
    card = f"""# {m["model"]}: {text.title}

Generated by `{text.script}`; do not edit by hand, rerun the script.

## Intended use

{wrap(text.intended_use)}

{wrap("**Intended users:** " + text.intended_users)}

## Not for use

{bullets(text.not_for_use)}

## Model

{model_bullets}

## Preprocessing

{wrap(text.preprocessing)}

## Training data

{wrap(text.data)}

{split_table(counts, text.negative, text.positive)}

{wrap(data_use)}

## Training

{wrap(training_text(recipe, m["seed"]) + " Weights kept: " + m["chosen"] + ".")}

## Results (test split, n = {n_test})

{results_table(m, text.positive)}

{wrap(text.reference)}

## Calibration

{reliability_text(m, text.positive, recipe.label_smoothing, counts)}

## Subgroups and limitations

{bullets(text.limitations)}

## Version and how to reproduce

Triton model `{m["model"]}`, version 1 (`model_repository/{m["model"]}/1/model.onnx`).

```
python {text.script}
```

{wrap(reproduce)}
"""
    path.write_text(card)


def common_metrics(
    name: str,
    trained: Trained,
    recipe: Recipe,
    seed: int,
    data: Splits,
    onnx_path: Path,
    data_path: Path,
    cam: bool = True,
) -> dict[str, Any]:
    """metrics.json content shared by the training scripts (deterministic: no timings).

    Every metric is computed from the exported ONNX file's logits, i.e. what Triton serves.
    """
    model = trained.model
    outputs: dict[str, list[int]] = {"logits": [1]}
    extra: dict[str, Any] = {}
    if cam:
        outputs["cam"] = [1, IMAGE_SIZE // 4, IMAGE_SIZE // 4]
        extra["cam_bias"] = cam_bias(model)
    return {
        "model": name,
        "seed": seed,
        "epochs": recipe.epochs,
        "chosen": trained.chosen,
        **evaluate(
            data.y["val"],
            onnx_logits(onnx_path, data.x["val"]),
            data.y["test"],
            onnx_logits(onnx_path, data.x["test"]),
            seed,
        ),
        "outputs": outputs,
        **extra,
        "onnx_sha256": sha256(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_sha256": sha256(data_path),
        "torch_version": torch.__version__,
        # The kernels torch dispatched to; byte-identical rebuilds need the same (see the card).
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "opset": OPSET,
        "recipe": recipe_dict(recipe),
    }


CARD_METRIC = re.compile(
    r'^(parameters \{ key: "card\.metric\.(\w+)" value \{ string_value: ")[^"]*(" \} \})$',
    re.MULTILINE,
)


def card_parameters(
    intended_use: str, not_for_use: str, reference: str, metrics: dict[str, float]
) -> str:
    """``card.*`` parameter lines of a Triton config (the gateway serves them as the card)."""
    lines = [
        ("card.intended_use", intended_use),
        ("card.not_for_use", not_for_use),
        ("card.reference", reference),
        *((f"card.metric.{k}", json.dumps(v)) for k, v in metrics.items()),
    ]
    for key, value in lines:
        if '"' in value or "\\" in value:
            raise ValueError(f"{key}: no quotes or backslashes in card text")
    return "\n".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}' for key, value in lines
    )


def sync_card_metrics(config_path: Path, metrics: dict[str, Any]) -> None:
    """Rewrite the ``card.metric.*`` parameters of an existing config from ``metrics``.

    The config's other lines are left as they are; a config without such parameters, or a
    folder without a config (e.g. ``--out`` somewhere else), is left alone.
    """
    if not config_path.exists():
        return
    text = config_path.read_text()

    def value(match: re.Match[str]) -> str:
        return f"{match.group(1)}{json.dumps(metrics[match.group(2)])}{match.group(3)}"

    config_path.write_text(CARD_METRIC.sub(value, text))


@dataclass(frozen=True)
class SingleModel:
    """What a one-model training script (CNN + CAM) decides; ``run`` does the rest."""

    name: str
    recipe: Recipe
    default_data: Path
    default_out: Path
    data_help: str
    load: Callable[[Path], Splits]
    card_text: Callable[[dict[str, Any]], CardText]


def run(spec: SingleModel, description: str) -> None:
    """CLI of a one-model script: train, evaluate on test, export and verify ONNX (logits + CAM),
    write metrics, card and the config's card metrics. The defaults reproduce the shipped model."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=spec.recipe.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=spec.default_data, help=spec.data_help)
    p.add_argument(
        "--out", type=Path, default=spec.default_out, help="model folder in the repository"
    )
    args = p.parse_args()
    started = time.perf_counter()
    recipe = dataclasses.replace(spec.recipe, epochs=args.epochs)
    data = spec.load(args.data)
    trained = train(recipe, data, args.seed, log=lambda line: print(line, flush=True))
    onnx_path = args.out / "1" / "model.onnx"
    export_onnx(trained.model, onnx_path, data.x["test"], cam=True)
    metrics = common_metrics(spec.name, trained, recipe, args.seed, data, onnx_path, args.data)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    sync_card_metrics(args.out / "config.pbtxt", metrics)
    write_card(args.out / "MODEL_CARD.md", spec.card_text(metrics), metrics, recipe, data.counts())
    summary = {k: metrics[k] for k in ("test_auc", "test_auc_ci95", "operating_threshold")}
    print(json.dumps(summary | {"test_ece": metrics["test_ece"]}))
    print(f"training {trained.seconds:.1f}s, total {time.perf_counter() - started:.1f}s")
