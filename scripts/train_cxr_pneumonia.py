"""Train the pneumonia-vs-normal CXR classifier on PneumoniaMNIST (28x28) and export it to ONNX.

Why this script exists: the ``cxr_pneumonia`` model in ``model_repository`` must be rebuildable
from source on a laptop CPU in a few minutes, bit for bit. The network, training loop, ONNX
export (``logits`` plus the class activation map ``cam``), metrics and model card live in
``medmnist_cnn.py``; this file says which data, preprocessing pipeline and recipe to use and
what the card says about the model's use and limits.

Two versions are trained, beside each other: version 1 (the original recipe, ``1/model.onnx``,
``metrics.json``) and version 2 (augmented for acquisition / preprocessing shift,
``2/model.onnx``, ``metrics_v2.json``); both export ``logits``, ``cam`` and the
out-of-distribution score ``ood``. ``MODEL_CARD.md`` documents both.
Reproduce with ``python scripts/train_cxr_pneumonia.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import medmnist_cnn as mc
import numpy as np
import ood_data
from cxr_dataset import PIPELINE, training_tensor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/medmnist/pneumoniamnist_28_reconstructed.npz"
DEFAULT_OUT = ROOT / "model_repository" / "cxr_pneumonia"
DATA_DISPLAY = "shared/data/medmnist/pneumoniamnist_28_reconstructed.npz"
NAME = "cxr_pneumonia"

# 10 epochs with weight averaging over the second half matched 20 epochs of best-val selection
# at half the CPU time; no label smoothing keeps the probabilities closer to calibrated.
RECIPE = mc.Recipe(
    epochs=10,
    width=16,
    batch_size=128,
    peak_lr=3e-3,
    weight_decay=5e-4,
    label_smoothing=0.0,
    max_rotation_deg=10.0,
    max_scale=0.1,
    max_shift_px=2.0,
    hflip=True,
    select="swa",
    swa_start_frac=0.5,
)

# Version 2: the same network trained for robustness to acquisition / preprocessing shift
# (stronger crops and shifts, gamma, contrast, blur, noise, down/up-sampling with a random
# filter). Chosen on val only (val AUC, val specificity at the val Youden threshold and val
# decision-flip rates under scripts/ood_data.py's PERTURBATIONS) among the candidates listed in
# the card; 15 epochs because the harder task kept improving val AUC past 10.
RECIPE_V2 = dataclasses.replace(
    RECIPE,
    epochs=15,
    max_scale=0.15,
    max_shift_px=3.0,
    gamma_log_range=0.4,
    contrast_range=0.3,
    blur_prob=0.3,
    blur_max_sigma=1.0,
    noise_max_sigma=0.05,
    resample_prob=0.3,
)


def load(path: Path) -> mc.Splits:
    """PneumoniaMNIST through the ``cxr_pneumonia`` pipeline; label 1 = pneumonia."""
    data = np.load(path)
    splits = ("train", "val", "test")
    return mc.Splits(
        x={s: training_tensor(data[f"{s}_images"]) for s in splits},
        y={s: data[f"{s}_labels"].reshape(-1).astype(np.int64) for s in splits},
    )


def ood_sets(data: mc.Splits, split: str) -> dict[str, np.ndarray]:
    """OOD sets of the CXR model: BreastMNIST, OrganAMNIST CT, non-chest DICOMs, corruptions."""
    other = ("breastmnist", ood_data.MEDMNIST / "breastmnist_28.npz")
    return ood_data.ood_sets(PIPELINE, data.x[split], split, other)


def card_text(m: dict[str, object]) -> mc.CardText:
    """What the card says beyond the numbers."""
    return mc.CardText(
        title="pneumonia vs normal on 28x28 pediatric chest X-rays",
        script="scripts/train_cxr_pneumonia.py",
        intended_use=(
            "Research and demo triage of frontal pediatric chest X-rays downsampled to 28x28\n"
            "pixels, to exercise the inference platform end to end: a pneumonia probability, an\n"
            "operating-point decision that raises the study's triage priority, and a coarse\n"
            "heatmap of where the model looked. A research demonstrator, **not a medical device**."
        ),
        intended_users=(
            "engineers and researchers developing or evaluating the imaging platform (routing,\n"
            "batching, preprocessing parity, triage logic, heatmap rendering). Not clinicians."
        ),
        not_for_use=[
            "Diagnosis, treatment decisions or any clinical triage of real patients.",
            "Adults: trained on children aged 1-5 only.",
            "Lateral views, CT, or any modality other than frontal CR/DX chest radiographs.",
            "Telling bacterial from viral pneumonia, or detecting any other finding (effusion,"
            " nodules, lines and tubes): a 'normal' output does not mean a normal study.",
            "Localisation: the 7x7 CAM is not a segmentation and is not validated.",
        ],
        output=(
            "the pneumonia logit; the platform's postprocessor applies the sigmoid to get\n"
            "  P(pneumonia)."
        ),
        positive="pneumonia",
        negative="normal",
        preprocessing=(
            "The steps of `pipelines/cxr_pneumonia.yaml`, run by the platform's preprocessing\n"
            "code (`services/preprocessor/core.py`, `training_batch`) for training\n"
            "(`scripts/cxr_dataset.py`) and serving alike: modality LUT, VOI window (the file's\n"
            "window, else the full stored bit range), MONOCHROME1 inversion, centre crop to a\n"
            "square, area resize to 28x28, then `(x - 0.5) / 0.5`, giving `[N, 1, 28, 28]`\n"
            "float32 in [-1, 1]. For the 8-bit training images this is\n"
            "`((uint8 / 255) - 0.5) / 0.5`. A platform test checks that the service computes the\n"
            "training tensor bit for bit from a DICOM of the same pixels. Note the domain gap:\n"
            "MedMNIST images were downsampled from full-size radiographs with a different filter\n"
            "and crop than the service's area resize of a whole DICOM image."
        ),
        data=(
            "PneumoniaMNIST (MedMNIST v2, Yang et al., Scientific Data 2023; source images\n"
            "Kermany et al. 2018, Guangzhou Women and Children's Medical Center), licence\n"
            f"**CC BY 4.0**. File `{DATA_DISPLAY}`, sha256 `{m['data_sha256']}`: a\n"
            "reconstruction of the official file from two public modified copies. Split sizes and\n"
            "class counts equal the official ones, but the **order of the training images differs\n"
            "from the official file** (see `SOURCE.md` beside it). Label 1 = pneumonia."
        ),
        selection_note=(
            "Caveat: the architecture, epoch count, weight averaging and dropping label\n"
            "smoothing were settled in exploratory runs (several seeds, some on a GPU) that also\n"
            "printed test AUC, so the test figures are not perfectly untouched."
        ),
        reference=(
            "Reference: MedMNIST v2 reports test AUC 0.944 / accuracy 0.854 for ResNet-18 at\n"
            "28x28. The test split is small (390 pneumonia, 234 normal): see the CIs."
        ),
        limitations=[
            "28x28 inputs: a benchmark, not a diagnostic resolution.",
            "Single centre (Guangzhou), pediatric patients aged 1-5, one acquisition pipeline; no"
            " external validation. Performance on adults or other hospitals is unknown.",
            "No subgroup analysis is possible: MedMNIST carries no age, sex, device or view"
            " metadata, so performance per subgroup is unknown.",
            "The test split is distributed differently from train/val (62.5% pneumonia vs 74% in"
            " train): thresholds tuned on val trade specificity for sensitivity on test."
            " Recalibrate the threshold for any new population.",
            "Labels do not distinguish bacterial from viral pneumonia; the labels' own error rate"
            " is unknown.",
            "The training file is a reconstruction, not the byte-identical official release.",
        ],
        minutes="about 5 minutes on an idle core for both versions",
        v2_note=V2_NOTE,
        test_evaluations=TEST_EVALUATIONS,
    )


V2_NOTE = (
    "Version 2 is the same network (same width, SWA, seed) trained with augmentation aimed at"
    " acquisition and preprocessing shift: random crops and shifts (scale +-15%, shift +-3 px),"
    " gamma exp(U(-0.4, 0.4)), contrast 1 +- 0.3, Gaussian blur (sigma up to 1 px, 30% of"
    " images), Gaussian noise (sigma up to 0.05 of the intensity range) and, on 30% of each batch,"
    " down-sampling to 14-24 px and back with a random filter (nearest, bilinear, bicubic, area);"
    " inputs stay 28x28 and the preprocessing is unchanged. Everything (augmentation strengths,"
    " width, epochs) was chosen on train/val only, comparing candidates by val AUC, val"
    " specificity at their own val Youden threshold and val decision-flip rates; the test split"
    " was evaluated once, for the shipped candidate. Version 1 stays the pipeline's default"
    " (`pipelines/cxr_pneumonia.yaml` asks for version 1); its weights are unchanged."
)
TEST_EVALUATIONS = [
    "Version 1 (the committed weights, re-made bit for bit by this script): its test metrics as"
    " before, plus the OOD AUROCs, test acceptance and decision-flip rates added with the `ood`"
    " output. Earlier exploratory runs for version 1 also printed test AUC (see the caveat"
    " above).",
    "Version 2, the one candidate shipped (15 epochs, width 16, the augmentation above): one"
    " evaluation of every test metric in this card.",
    "Version 2 candidates not shipped were compared on val only and never evaluated on test:"
    " width 24 with stronger augmentation (gamma +-0.5, contrast +-0.4, blur on 50%, noise up"
    " to 0.08, resampling on 50%) was stopped after 11 of 15 epochs (val AUC 0.992-0.996 per"
    " epoch, no better than the shipped candidate's, at 2.5x the CPU time).",
]


if __name__ == "__main__":
    mc.run(
        mc.SingleModel(
            NAME,
            RECIPE,
            DEFAULT_DATA,
            DEFAULT_OUT,
            "PneumoniaMNIST 28px .npz",
            load,
            card_text,
            ood_sets,
            v2_recipe=RECIPE_V2,
        ),
        __doc__.splitlines()[0],
    )
