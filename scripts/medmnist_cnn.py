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

import cpu_kernels  # noqa: F401  (first: pins the kernels numpy and torch load)
import numpy as np
import onnxruntime as ort
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from services.common.cards import intended_use_facts, intended_use_markdown
from services.common.pipelines import PipelineRegistry
from services.postprocessor.core import sigmoid

ROOT = Path(__file__).resolve().parents[1]

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
    # Photometric / acquisition-shift augmentation (all off by default: version 1 of every model
    # predates them and draws no random numbers for them). Applied to intensities in [0, 1].
    # gamma = exp(U(-g, g)); contrast factor 1 + U(-c, c) about the image mean; Gaussian blur
    # with sigma U(0, s) on a random ``blur_prob`` share; Gaussian noise sigma U(0, s); and on a
    # random ``resample_prob`` share of each batch, down-sampling to a random size in [14, 24]
    # px and back up with a random filter (nearest, bilinear, bicubic, area).
    gamma_log_range: float = 0.0
    contrast_range: float = 0.0
    blur_prob: float = 0.0
    blur_max_sigma: float = 0.0
    noise_max_sigma: float = 0.0
    resample_prob: float = 0.0

    @property
    def photometric(self) -> bool:
        """Whether any photometric / resampling augmentation is on."""
        return any(
            (
                self.gamma_log_range,
                self.contrast_range,
                self.blur_prob,
                self.noise_max_sigma,
                self.resample_prob,
            )
        )

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


class MahalanobisHead(nn.Module):
    """OOD score from the pooled features: min over classes of the Mahalanobis distance.

    ``ood(x) = min_c sqrt((f - mu_c)^T S^-1 (f - mu_c))`` with f the global-average-pooled last
    feature map, mu_c the class means and S the tied (shared) covariance of the un-augmented
    training images (Lee et al. 2018). ``S^-1 = L L^T`` is stored as its Cholesky factor, so the
    graph computes ``|(f - mu_c) L|``; higher = further from every class of the training data.
    """

    def __init__(self, means: np.ndarray, chol: np.ndarray) -> None:
        super().__init__()
        self.means: torch.Tensor
        self.chol: torch.Tensor
        self.register_buffer("means", torch.from_numpy(means.astype(np.float32)))
        self.register_buffer("chol", torch.from_numpy(chol.astype(np.float32)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, D) pooled features -> (N, 1) distance to the nearest class."""
        diff = pooled[:, None, :] - self.means[None, :, :]  # (N, C, D)
        z = torch.matmul(diff, self.chol)
        dist: torch.Tensor = torch.sqrt((z * z).sum(dim=2).min(dim=1, keepdim=True).values)
        return dist


class WithCamOod(nn.Module):
    """Export wrapper: (logits, cam, ood) from one forward pass; logits and cam as ``WithCam``."""

    def __init__(self, net: GapCnn, head: MahalanobisHead) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, class activation map and OOD score."""
        features: torch.Tensor = self.net.features(x)
        pooled = features.mean(dim=(2, 3))
        logits: torch.Tensor = self.net.fc(pooled)
        weight = self.net.fc.weight[:, :, None, None]
        cam: torch.Tensor = nn.functional.conv2d(features, weight)
        return logits, cam, self.head(pooled)


def pooled_features(model: GapCnn, x: np.ndarray) -> np.ndarray:
    """Eval-mode global-average-pooled features (N, D), float64."""
    model.eval()
    with torch.no_grad():
        out = [
            model.features(torch.from_numpy(x[i : i + 512])).mean(dim=(2, 3))
            for i in range(0, len(x), 512)
        ]
    feats: np.ndarray = torch.cat(out).numpy().astype(np.float64)
    return feats


# Ridge added to the tied covariance, relative to its mean variance: keeps S invertible when a
# feature channel is (nearly) dead on the training set.
COVARIANCE_RIDGE = 1e-4


def fit_mahalanobis(model: GapCnn, x: np.ndarray, y: np.ndarray) -> MahalanobisHead:
    """Class means and tied covariance of the pooled features of ``x`` (un-augmented train)."""
    feats = pooled_features(model, x)
    classes = np.unique(y)
    means = np.stack([feats[y == c].mean(axis=0) for c in classes])
    centred = feats - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / len(feats)
    cov += np.eye(len(cov)) * COVARIANCE_RIDGE * float(np.trace(cov)) / len(cov)
    chol = np.linalg.cholesky(np.linalg.inv(cov))
    return MahalanobisHead(means, chol)


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


RESAMPLE_MODES = ("nearest", "bilinear", "bicubic", "area")


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (5x5 kernel, replicate padding); ``sigma`` (N,), 0 = identity."""
    n = x.shape[0]
    r = torch.arange(-2, 3, dtype=x.dtype)
    s = sigma.clamp(min=1e-3)[:, None]
    k1 = torch.exp(-(r[None, :] ** 2) / (2 * s**2))
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    kernel = (k1[:, :, None] * k1[:, None, :])[:, None]  # (N, 1, 5, 5)
    padded = nn.functional.pad(x.reshape(1, n, *x.shape[2:]), (2, 2, 2, 2), mode="replicate")
    out: torch.Tensor = nn.functional.conv2d(padded, kernel, groups=n)
    return out.reshape(x.shape)


def photometric(x: torch.Tensor, gen: torch.Generator, recipe: Recipe) -> torch.Tensor:
    """Acquisition / preprocessing shift: gamma, contrast, blur, noise, resampling jitter.

    ``x`` is a batch of model inputs in [-1, 1]; the ops work on intensities ``u`` in [0, 1]
    (the pipelines' ``normalize 0.5 / 0.5`` undone) and the result is mapped back.
    """
    n = x.shape[0]
    u = ((x + 1) / 2).clamp(0, 1)
    if recipe.resample_prob:
        size = int(torch.randint(14, 25, (1,), generator=gen))
        mode = RESAMPLE_MODES[int(torch.randint(len(RESAMPLE_MODES), (1,), generator=gen))]
        chosen = torch.rand(n, generator=gen) < recipe.resample_prob
        small = nn.functional.interpolate(u, size=(size, size), mode="area")
        kwargs: dict[str, Any] = {} if mode in ("nearest", "area") else {"align_corners": False}
        up = nn.functional.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode=mode, **kwargs)
        u = torch.where(chosen[:, None, None, None], up.clamp(0, 1), u)
    if recipe.blur_prob:
        sigma = torch.rand(n, generator=gen) * recipe.blur_max_sigma
        sigma = torch.where(torch.rand(n, generator=gen) < recipe.blur_prob, sigma, 0.0)
        u = torch.where((sigma > 0)[:, None, None, None], gaussian_blur(u, sigma), u)
    if recipe.gamma_log_range:
        g = torch.exp((torch.rand(n, generator=gen) * 2 - 1) * recipe.gamma_log_range)
        u = u.clamp(min=1e-6) ** g[:, None, None, None]
    if recipe.contrast_range:
        c = 1 + (torch.rand(n, generator=gen) * 2 - 1) * recipe.contrast_range
        mean = u.mean(dim=(2, 3), keepdim=True)
        u = mean + c[:, None, None, None] * (u - mean)
    if recipe.noise_max_sigma:
        sd = torch.rand(n, generator=gen) * recipe.noise_max_sigma
        u = u + sd[:, None, None, None] * torch.randn(u.shape, generator=gen)
    return (u.clamp(0, 1) - 0.5) / 0.5


def predict_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Eval-mode logits (N,) for a preprocessed array, in fixed-size batches."""
    model.eval()
    with torch.no_grad():
        out = [model(torch.from_numpy(x[i : i + 512])) for i in range(0, len(x), 512)]
    logits: np.ndarray = torch.cat(out).numpy()[:, 0]
    return logits


def probability(z: np.ndarray) -> np.ndarray:
    """Probability of the positive class: the platform's postprocessor's sigmoid, in float64."""
    return sigmoid(z.astype(np.float64))


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
            if recipe.photometric:
                xb = photometric(xb, gen, recipe)
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


def export_onnx(
    model: GapCnn,
    path: Path,
    check_x: np.ndarray,
    cam: bool,
    ood: MahalanobisHead | None = None,
) -> None:
    """Export (outputs ``logits``, with ``cam`` also ``cam``, with ``ood`` also ``ood``) and
    verify with onnxruntime.

    Uses the legacy TorchScript exporter (no onnxscript dependency); BatchNorm is folded into
    the convolutions in eval mode, keeping the file small. Checks that onnxruntime reproduces
    the torch logits and, for the CAM, that ``mean(cam) + bias == logits``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    if ood is not None and not cam:
        raise ValueError("the ood output is exported together with the cam")
    module: nn.Module = (
        (WithCamOod(model, ood) if ood is not None else WithCam(model)) if cam else model
    )
    names = ["logits", "cam"] if cam else ["logits"]
    if ood is not None:
        names.append("ood")
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
    if ood is not None:
        with torch.no_grad():
            want_ood = ood(torch.from_numpy(pooled_features(model, check_x)).float()).numpy()
        if outputs[2].shape != want_ood.shape or outputs[2].dtype != np.float32:
            raise RuntimeError(f"ood output {outputs[2].shape} {outputs[2].dtype}")
        np.testing.assert_allclose(outputs[2], want_ood, rtol=1e-4, atol=1e-4)


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
    p_val, p_test = probability(val_logits), probability(test_logits)
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


OOD_ACCEPTANCE = 0.95


def onnx_outputs(path: Path, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """Named outputs of an exported model for a preprocessed array, in batches of 1024."""
    sess = ort_session(path)
    parts = [sess.run(names, {"image": x[i : i + 1024]}) for i in range(0, len(x), 1024)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Energy OOD score of a binary logit z (classes scored 0 and z): -E = logsumexp(0, z),
    negated so that higher = more out of distribution (Liu et al. 2020)."""
    score: np.ndarray = -np.logaddexp(0.0, logits.astype(np.float64))
    return score


def ood_auroc(in_dist: np.ndarray, out_dist: np.ndarray) -> float:
    """AUROC of telling ``out_dist`` (positive) from ``in_dist`` by a higher score."""
    y = np.concatenate([np.zeros(len(in_dist)), np.ones(len(out_dist))])
    return auc(y, np.concatenate([in_dist, out_dist]))


def ood_evaluation(
    onnx_path: Path,
    data: Splits,
    val_sets: dict[str, np.ndarray],
    test_sets: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Threshold of the ``ood`` output on val, the score choice on val, AUROCs on test sets.

    In-distribution is the model's own split (val for the choice and the threshold, test for
    the AUROCs and the acceptance rate); each OOD set is scored against it separately.
    """

    def scores(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, ood = onnx_outputs(onnx_path, x, ["logits", "ood"])
        return ood[:, 0].astype(np.float64), energy_score(logits[:, 0])

    maha_val, energy_val = scores(data.x["val"])
    choice: dict[str, dict[str, float]] = {"mahalanobis": {}, "energy": {}}
    for name, x in val_sets.items():
        m, e = scores(x)
        choice["mahalanobis"][name] = ood_auroc(maha_val, m)
        choice["energy"][name] = ood_auroc(energy_val, e)
    mean_val = {k: round(float(np.mean(list(v.values()))), 6) for k, v in choice.items()}
    threshold = float(np.percentile(maha_val, 100 * OOD_ACCEPTANCE))
    maha_test, _ = scores(data.x["test"])
    table = {}
    for name, x in test_sets.items():
        m, _ = scores(x)
        table[name] = {
            "n": len(x),
            "auroc": ood_auroc(maha_test, m),
            "flagged_at_threshold": round(float((m > threshold).mean()), 6),
        }
    return {
        "ood_score": "min over classes of the Mahalanobis distance of the pooled features "
        "(class means, tied covariance of the un-augmented train split)",
        "ood_score_selection_val": {
            "mean_auroc": mean_val,
            "per_set": choice,
            "chosen": max(mean_val, key=lambda k: mean_val[k]),
        },
        "ood_threshold": round(threshold, 6),
        "ood_threshold_selection": f"{OOD_ACCEPTANCE:.0%} percentile of val ood scores",
        "ood_acceptance_rate_val": round(float((maha_val <= threshold).mean()), 6),
        "ood_acceptance_rate_test": round(float((maha_test <= threshold).mean()), 6),
        "ood_test_auroc": table,
    }


def flip_rates(
    onnx_path: Path, x: np.ndarray, threshold: float, perturbed: dict[str, np.ndarray]
) -> dict[str, float]:
    """Share of images whose thresholded decision changes under each perturbation."""
    base = probability(onnx_logits(onnx_path, x)) >= threshold
    flipped = {
        name: (probability(onnx_logits(onnx_path, xp)) >= threshold) != base
        for name, xp in perturbed.items()
    }
    return {name: round(float(flips.mean()), 6) for name, flips in flipped.items()}


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


def checked_use_section(pipeline: str) -> str:
    """The intended use the gateway checks on every study (pipelines/<pipeline>.yaml), in the
    words the Triton config's ``card.intended_use.*`` parameters use (a unit test compares)."""
    spec = PipelineRegistry.load(ROOT / "pipelines").get(pipeline).intended_use
    if spec is None:
        return ""
    return (
        f"**Checked on every study** (`pipelines/{pipeline}.yaml`, `intended_use`; the pipeline"
        " refuses or flags what falls outside):\n\n" + intended_use_markdown(spec) + "\n"
    )


def intended_use_parameters(pipeline: str) -> str:
    """The ``card.intended_use.*`` config lines: the same facts as :func:`checked_use_section`."""
    spec = PipelineRegistry.load(ROOT / "pipelines").get(pipeline).intended_use
    if spec is None:
        return ""
    lines = [
        "# The intended use the pipeline checks on every study (pipelines/*.yaml `intended_use`;",
        "# tests/unit/test_intended_use_cards.py keeps them equal).",
        *(
            f'parameters {{ key: "card.intended_use.{key}" value {{ string_value: "{value}" }} }}'
            for key, value in intended_use_facts(spec).items()
        ),
    ]
    return "\n".join(lines) + "\n"


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
    # Why version 2 exists and how it was chosen (cards of models with a second version).
    v2_note: str = ""
    # Every evaluation on the test split, one line each (no dates).
    test_evaluations: list[str] = field(default_factory=list)


def ood_text(m: dict[str, Any]) -> str:
    """The ``ood`` output: definition, threshold, and the AUROC table on the test sets."""
    sel = m["ood_score_selection_val"]["mean_auroc"]
    intro = (
        "Output `ood`: float32 `[N, 1]`, an out-of-distribution score computed in the graph: "
        "the Mahalanobis distance of the global-average-pooled features to the nearest class "
        "mean, with the class means and one tied covariance fitted on the un-augmented training "
        "images (Lee et al. 2018); higher = less like the training data. Chosen over the energy "
        f"score of the logit on val-built sets only (mean val AUROC {sel['mahalanobis']:.3f} "
        f"Mahalanobis vs {sel['energy']:.3f} energy). Threshold **{m['ood_threshold']:.4f}** "
        f"= the {OOD_ACCEPTANCE:.0%} percentile of the val scores (val acceptance "
        f"{m['ood_acceptance_rate_val']:.1%}); on the test split it accepts "
        f"**{m['ood_acceptance_rate_test']:.1%}**. The platform does not act on it yet: a "
        "caller may treat `ood > ood_threshold` as 'not the kind of image this model was "
        "trained on'."
    )
    rows = "\n".join(
        f"| {name} | {r['n']} | {r['auroc']:.4f} | {r['flagged_at_threshold']:.1%} |"
        for name, r in m["ood_test_auroc"].items()
    )
    table = (
        "| OOD set (vs the own test split) | images | AUROC | flagged at threshold |\n"
        "|---|---|---|---|\n" + rows
    )
    note = (
        "Sets: the other MedMNIST task's test split and OrganAMNIST CT test, each through this "
        "model's pipeline; the DICOM corpus beside the repository decoded and preprocessed by "
        "the platform's own code (grouped by modality; first frame of multi-frame instances; "
        "colour instances skipped, as the service refuses them; duplicates counted once); and "
        "corruptions of the own test split in the [0, 1] intensity domain. The DICOM groups are "
        "small: read their AUROCs as indications."
    )
    return wrap(intro) + "\n\n" + table + "\n\n" + wrap(note)


def flip_table(ms: list[dict[str, Any]]) -> str:
    """Decision-flip rates on test under mild perturbations, one column per version."""
    head = " | ".join(f"version {m.get('version', 1)}" for m in ms)
    rows = "\n".join(
        f"| {name} | " + " | ".join(f"{m['test_flip_rates'][name]:.1%}" for m in ms) + " |"
        for name in ms[0]["test_flip_rates"]
    )
    mean = " | ".join(f"{np.mean(list(m['test_flip_rates'].values())):.1%}" for m in ms)
    intro = (
        "Share of test images whose thresholded decision (operating threshold of each version) "
        "changes under a mild, acquisition-like perturbation (`scripts/ood_data.py`, "
        "`PERTURBATIONS`; seeded)."
    )
    return (
        wrap(intro)
        + f"\n\n| perturbation | {head} |\n|---|{'---|' * len(ms)}\n{rows}\n| mean | {mean} |"
    )


def comparison_table(ms: list[dict[str, Any]]) -> str:
    """Test metrics of every version side by side (same stratified bootstrap)."""

    def ci(v: float, c: list[float]) -> str:
        return f"{v:.4f} ({c[0]:.4f} to {c[1]:.4f})"

    head = " | ".join(f"version {m.get('version', 1)}" for m in ms)
    lines = [
        ("test AUC", [ci(m["test_auc"], m["test_auc_ci95"]) for m in ms]),
        ("operating threshold (val)", [f"{m['operating_threshold']:.4f}" for m in ms]),
        (
            "sensitivity",
            [
                ci(m["test_at_operating_threshold"]["sensitivity"], m["test_sensitivity_ci95"])
                for m in ms
            ],
        ),
        (
            "specificity",
            [
                ci(m["test_at_operating_threshold"]["specificity"], m["test_specificity_ci95"])
                for m in ms
            ],
        ),
        ("val AUC", [f"{m['val_auc']:.4f}" for m in ms]),
        ("ECE (test)", [f"{m['test_ece']:.4f}" for m in ms]),
        ("ood threshold", [f"{m['ood_threshold']:.4f}" for m in ms]),
        ("ood acceptance, test", [f"{m['ood_acceptance_rate_test']:.1%}" for m in ms]),
    ]
    rows = "\n".join(f"| {k} | " + " | ".join(v) + " |" for k, v in lines)
    return f"| metric | {head} |\n|---|{'---|' * len(ms)}\n{rows}"


def write_card(
    path: Path,
    text: CardText,
    m: dict[str, Any],
    recipe: Recipe,
    counts: dict[str, tuple[int, int]],
    later: list[tuple[dict[str, Any], Recipe]] | None = None,
) -> None:
    """Write MODEL_CARD.md for a GapCnn model from its metrics (``later``: versions 2, ...)."""
    later = later or []
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
            *(
                ["Output `ood`: float32 `[N, 1]`, out-of-distribution score (see below)."]
                if "ood_threshold" in m
                else []
            ),
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
    extra = ""
    if "ood_threshold" in m:
        extra += f"## Out-of-distribution score (version 1)\n\n{ood_text(m)}\n\n"
    if "test_flip_rates" in m:
        flips = flip_table([m, *(x for x, _ in later)])
        extra += f"## Decision flips under perturbations\n\n{flips}\n\n"
    for m2, r2 in later:
        v = m2["version"]
        extra += (
            f"## Version {v}\n\n{wrap(text.v2_note)}\n\n"
            f"{wrap(training_text(r2, m2['seed']) + ' Weights kept: ' + m2['chosen'] + '.')}\n\n"
            f"Architecture: {architecture_text(r2.width, r2.dropout)} ONNX "
            f"{m2['onnx_bytes']} bytes, {m2['parameters']} parameters, sha256 "
            f"`{m2['onnx_sha256']}`, `b = {m2['cam_bias']!r}`.\n\n"
            f"### Results, version {v} (test split, n = {n_test})\n\n"
            f"{results_table(m2, text.positive)}\n\n"
            f"### Versions side by side\n\n{comparison_table([m, m2])}\n\n"
            f"### Out-of-distribution score, version {v}\n\n{ood_text(m2)}\n\n"
        )
    if text.test_evaluations:
        extra += (
            "## Test evaluations\n\nEvery evaluation on the test split made for the "
            f"versions documented here:\n\n{bullets(text.test_evaluations)}\n\n"
        )
    if later:
        versions_text = (
            f"Triton model `{m['model']}`, versions "
            + ", ".join(str(x.get("version", 1)) for x in [m, *(y for y, _ in later)])
            + f" (`model_repository/{m['model']}/<version>/model.onnx`; metrics of version N "
            "> 1 in `metrics_vN.json`, card facts in the config's `card.vN.metric.*`)."
        )
    else:
        folder = f"model_repository/{m['model']}/1/model.onnx"
        versions_text = f"Triton model `{m['model']}`, version 1 (`{folder}`)."
    card = f"""# {m["model"]}: {text.title}

Generated by `{text.script}`; do not edit by hand, rerun the script.

## Intended use

{wrap(text.intended_use)}

{wrap("**Intended users:** " + text.intended_users)}

{checked_use_section(m["model"])}
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

{extra}## Subgroups and limitations

{bullets(text.limitations)}

## Version and how to reproduce

{versions_text}

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
    ood: bool = False,
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
    if ood:
        outputs["ood"] = [1]
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


def card_metric_pattern(version: int) -> re.Pattern[str]:
    """``card.metric.<key>`` lines (version 1) or ``card.v<N>.metric.<key>`` lines."""
    prefix = r"card\.metric\." if version == 1 else rf"card\.v{version}\.metric\."
    return re.compile(
        rf'^(parameters \{{ key: "{prefix}(\w+)" value \{{ string_value: ")[^"]*(" \}} \}})$',
        re.MULTILINE,
    )


CARD_METRIC = card_metric_pattern(1)


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


def sync_card_metrics(config_path: Path, metrics: dict[str, Any], version: int = 1) -> None:
    """Rewrite the ``card.metric.*`` (``card.v<N>.metric.*``) parameters of a config.

    The config's other lines are left as they are; a config without such parameters, or a
    folder without a config (e.g. ``--out`` somewhere else), is left alone.
    """
    if not config_path.exists():
        return
    text = config_path.read_text()

    def value(match: re.Match[str]) -> str:
        return f"{match.group(1)}{json.dumps(metrics[match.group(2)])}{match.group(3)}"

    config_path.write_text(card_metric_pattern(version).sub(value, text))


@dataclass(frozen=True)
class SingleModel:
    """What a one-model training script (CNN + CAM + OOD) decides; ``run`` does the rest.

    ``ood_sets(data, split)``: the out-of-distribution sets built from ``split`` (val: to choose
    the score; test: the reported AUROCs). ``v2_recipe``: a second version trained beside the
    first (``<out>/2/model.onnx``, ``metrics_v2.json``).
    """

    name: str
    recipe: Recipe
    default_data: Path
    default_out: Path
    data_help: str
    load: Callable[[Path], Splits]
    card_text: Callable[[dict[str, Any]], CardText]
    ood_sets: Callable[[Splits, str], dict[str, np.ndarray]]
    v2_recipe: Recipe | None = None


def metrics_file(version: int) -> str:
    """metrics.json for version 1, metrics_v<N>.json for later versions."""
    return "metrics.json" if version == 1 else f"metrics_v{version}.json"


def run(spec: SingleModel, description: str) -> None:
    """CLI of a one-model script: train, evaluate on test, export and verify ONNX (logits, CAM,
    OOD), write metrics, card and the config's card metrics. The defaults reproduce the shipped
    model (every version of it)."""
    import ood_data  # services imports: only the one-model scripts need them

    versions = [1, 2] if spec.v2_recipe is not None else [1]
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=None, help="override every version's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=spec.default_data, help=spec.data_help)
    p.add_argument(
        "--out", type=Path, default=spec.default_out, help="model folder in the repository"
    )
    p.add_argument(
        "--version",
        type=int,
        choices=versions,
        action="append",
        help="train only this version (repeatable; default: every version)",
    )
    args = p.parse_args()
    started = time.perf_counter()
    data = spec.load(args.data)
    val_sets, test_sets = spec.ood_sets(data, "val"), spec.ood_sets(data, "test")
    perturbed = ood_data.perturbations(data.x["test"], seed=args.seed)
    recipes = {1: spec.recipe, 2: spec.v2_recipe}
    for version in args.version or versions:
        base = recipes[version]
        assert base is not None
        recipe = base if args.epochs is None else dataclasses.replace(base, epochs=args.epochs)
        print(f"version {version}", flush=True)
        trained = train(recipe, data, args.seed, log=lambda line: print(line, flush=True))
        head = fit_mahalanobis(trained.model, data.x["train"], data.y["train"])
        onnx_path = args.out / str(version) / "model.onnx"
        export_onnx(trained.model, onnx_path, data.x["test"], cam=True, ood=head)
        metrics = common_metrics(
            spec.name, trained, recipe, args.seed, data, onnx_path, args.data, ood=True
        )
        metrics["version"] = version
        metrics |= ood_evaluation(onnx_path, data, val_sets, test_sets)
        metrics["test_flip_rates"] = flip_rates(
            onnx_path, data.x["test"], metrics["operating_threshold"], perturbed
        )
        (args.out / metrics_file(version)).write_text(json.dumps(metrics, indent=2) + "\n")
        sync_card_metrics(args.out / "config.pbtxt", metrics, version)
        summary = {k: metrics[k] for k in ("test_auc", "test_auc_ci95", "operating_threshold")}
        print(json.dumps(summary | {"ood_threshold": metrics["ood_threshold"]}))
        print(f"version {version}: training {trained.seconds:.1f}s", flush=True)
    stored = {
        v: json.loads((args.out / metrics_file(v)).read_text())
        for v in versions
        if (args.out / metrics_file(v)).exists()
    }
    v1 = stored[1]
    later = [(stored[v], recipes[v]) for v in versions[1:] if v in stored]
    write_card(
        args.out / "MODEL_CARD.md",
        spec.card_text(v1),
        v1,
        spec.recipe,
        data.counts(),
        later=[(m, r) for m, r in later if r is not None],
    )
    print(f"total {time.perf_counter() - started:.1f}s")
