"""Train the members of the ``cxr_pneumonia_ensemble`` Triton ensemble and write its model folders.

Why this script exists: the ensemble (three differently seeded small CNNs on PneumoniaMNIST,
combined by a python-backend model that averages their logits) must be rebuildable from source
on a laptop CPU in a few minutes, bit for bit, and its card must report each member's and the
ensemble's test metrics. The network, training loop, export and metrics live in
``medmnist_cnn.py``; the weighting is the combiner's own code
(``model_repository/cxr_ensemble_combiner/1/model.py``), imported here so that the offline
ensemble metrics use exactly the arithmetic Triton runs.

Writes, under ``--repository``:

- ``cxr_pneumonia_m1`` .. ``_m3``: ``1/model.onnx`` (input ``image``, output ``logits``),
  ``config.pbtxt`` (production: onnxruntime, TensorRT FP16 on GPU), ``metrics.json``,
  ``MODEL_CARD.md``;
- ``cxr_ensemble_combiner/config.pbtxt`` (python backend, inputs ``logits_0..2``, the weights as
  a parameter); its ``1/model.py`` is source, not generated;
- ``cxr_pneumonia_ensemble``: ``config.pbtxt`` (platform ensemble: image -> each member ->
  combiner -> logits; the same contract as ``cxr_pneumonia``), ``metrics.json``,
  ``MODEL_CARD.md``.

Reproduce with ``python scripts/train_cxr_ensemble.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import medmnist_cnn as mc
import numpy as np
from train_cxr_pneumonia import DATA_DISPLAY, DEFAULT_DATA, load

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = ROOT / "model_repository"
ENSEMBLE = "cxr_pneumonia_ensemble"
COMBINER = "cxr_ensemble_combiner"
MAX_BATCH = 64

# Members: the same small recipe, different seeds (so different initialisation, data order and
# augmentation draws). Width 8 keeps the three together cheaper than one cxr_pneumonia.
MEMBER_RECIPE = mc.Recipe(
    epochs=12,
    width=8,
    batch_size=64,
    peak_lr=3e-3,
    weight_decay=5e-4,
    label_smoothing=0.1,
    max_rotation_deg=10.0,
    max_scale=0.1,
    max_shift_px=2.0,
    hflip=True,
    select="swa",
    swa_start_frac=0.5,
)
MEMBER_SEEDS = (1, 2, 3)
# Equal weights: the members' val AUCs differ by less than the noise of a 524-image split, so
# weighting by val AUC would be near-equal anyway and would fit val noise.
WEIGHTS = (1.0, 1.0, 1.0)


@dataclass
class Member:
    """One trained member and its metrics."""

    name: str
    seed: int
    metrics: dict[str, Any]
    val_logits: np.ndarray
    test_logits: np.ndarray


def member_name(i: int) -> str:
    """Triton model name of member i (0-based)."""
    return f"cxr_pneumonia_m{i + 1}"


def combiner_module() -> ModuleType:
    """The combiner's model.py, imported by path (it needs no Triton at import time)."""
    path = ROOT / "model_repository" / COMBINER / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("cxr_ensemble_combiner_model", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Triton configs (text, so the files read like the hand-written cxr_pneumonia one)

PRIORITY = """dynamic_batching {{{preferred}
  max_queue_delay_microseconds: {delay}
  # No priority levels: see cxr_pneumonia's config (they stall ~1% of lone requests ~500 ms).
}}"""


# The members' and the ensemble's shared contract: cxr_pneumonia's, logits only.
CONTRACT = f"""max_batch_size: {MAX_BATCH}
input [
  {{
    name: "image"
    data_type: TYPE_FP32
    dims: [ 1, 28, 28 ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}
]
"""

CARD_METRICS = ("test_auc", "test_accuracy_at_0_5", "val_auc", "test_ece")


def card_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics a config's card parameters carry (equal to metrics.json)."""
    return {k: metrics[k] for k in CARD_METRICS}


def member_config(name: str, metrics: dict[str, Any]) -> str:
    """Production config of one member: as cxr_pneumonia's, with the logits output only."""
    # As cxr_pneumonia's (measured there, see its config): no wait, no preferred sizes.
    batching = PRIORITY.format(preferred="", delay=0)
    card = mc.card_parameters(
        f"Member of the {ENSEMBLE} ensemble (research and demonstration pneumonia triage of "
        "paediatric frontal chest X-rays); not a medical device.",
        "Use on its own, clinical diagnosis or treatment decisions; adults, lateral views or "
        "non-chest images.",
        f"model_repository/{name}/MODEL_CARD.md",
        card_metrics(metrics),
    )
    return f"""# Production config: Triton's onnxruntime backend, TensorRT (FP16) on GPU instances.
# Member of the {ENSEMBLE} ensemble; generated by scripts/train_cxr_ensemble.py.
name: "{name}"
platform: "onnxruntime_onnx"
{CONTRACT}version_policy: {{ specific: {{ versions: [ 1 ] }} }}
instance_group [
  {{
    kind: KIND_GPU
    count: 1
  }}
]
{batching}
optimization {{
  execution_accelerators {{
    gpu_execution_accelerator: [
      {{
        name: "tensorrt"
        parameters {{ key: "precision_mode" value: "FP16" }}
        parameters {{ key: "max_workspace_size_bytes" value: "1073741824" }}
        parameters {{ key: "trt_engine_cache_enable" value: "1" }}
        parameters {{ key: "trt_engine_cache_path" value: "/tmp/trt-cache" }}
      }}
    ]
  }}
}}
model_warmup [
  {{
    name: "zero_image"
    batch_size: 1
    inputs {{
      key: "image"
      value: {{ data_type: TYPE_FP32 dims: [ 1, 28, 28 ] zero_data: true }}
    }}
  }}
]
# Model-card facts served with the model; the metrics equal metrics.json.
{card}
"""


def combiner_config(members: int, ensemble_metrics: dict[str, Any]) -> str:
    """Python-backend combiner: logits_0..K-1 -> weighted average ``logits``."""
    card = mc.card_parameters(
        f"Weighted average of the {ENSEMBLE} members' pneumonia logits, as the last step of that "
        "ensemble (research and demonstration only).",
        f"Any use outside {ENSEMBLE}; inputs that are not those members' logits.",
        f"model_repository/{ENSEMBLE}/MODEL_CARD.md",
        {"ensemble_test_auc": ensemble_metrics["test_auc"]},
    )
    inputs = ",\n".join(
        f'  {{\n    name: "logits_{i}"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n  }}'
        for i in range(members)
    )
    batching = PRIORITY.format(preferred=f"\n  preferred_batch_size: [ {MAX_BATCH} ]", delay=0)
    return f"""# Weighted average of the {ENSEMBLE} members' logits (python backend, CPU: the work
# is K multiply-adds per image). Generated by scripts/train_cxr_ensemble.py; the arithmetic is
# 1/model.py. Weights (JSON list, input i <-> weight i) are normalised to sum 1 at load.
name: "{COMBINER}"
backend: "python"
max_batch_size: {MAX_BATCH}
input [
{inputs}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }}
]
parameters {{
  key: "weights"
  value: {{ string_value: "{json.dumps(list(WEIGHTS))}" }}
}}
version_policy: {{ specific: {{ versions: [ 1 ] }} }}
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
{batching}
# Model-card facts served with the model: the ensemble's card and test AUC.
{card}
"""


def ensemble_config(members: int, ensemble_metrics: dict[str, Any]) -> str:
    """The ensemble: the same contract as cxr_pneumonia (image [1,28,28] -> logits [1])."""
    card = mc.card_parameters(
        "Research and demonstration triage of paediatric frontal chest X-rays for pneumonia by a "
        f"{members}-CNN ensemble; not a medical device.",
        "Clinical diagnosis or treatment decisions; adults, lateral views or non-chest images; "
        "any population the threshold was not re-checked on.",
        f"model_repository/{ENSEMBLE}/MODEL_CARD.md",
        card_metrics(ensemble_metrics),
    )
    steps = []
    for i in range(members):
        steps.append(
            f"""    {{
      model_name: "{member_name(i)}"
      model_version: 1
      input_map {{ key: "image" value: "image" }}
      output_map {{ key: "logits" value: "logits_{i}" }}
    }}"""
        )
    combine = "\n".join(
        f'      input_map {{ key: "logits_{i}" value: "logits_{i}" }}' for i in range(members)
    )
    steps.append(
        f"""    {{
      model_name: "{COMBINER}"
      model_version: 1
{combine}
      output_map {{ key: "logits" value: "logits" }}
    }}"""
    )
    body = ",\n".join(steps)
    return f"""# Ensemble of {members} CXR pneumonia CNNs, combined by weighted logit averaging
# ({COMBINER}). Same model contract as cxr_pneumonia (without its cam output).
# Generated by scripts/train_cxr_ensemble.py.
name: "{ENSEMBLE}"
platform: "ensemble"
{CONTRACT}ensemble_scheduling {{
  step [
{body}
  ]
}}
# Model-card facts served with the model; the metrics equal metrics.json.
{card}
{mc.intended_use_parameters(ENSEMBLE)}"""


# ---------------------------------------------------------------------------------------------
# Cards


def member_card(m: dict[str, Any], counts: dict[str, tuple[int, int]]) -> str:
    """Short card of one member; the ensemble's card is the one that matters."""
    recipe = mc.Recipe(**m["recipe"])
    intro = (
        f"Member of the `{ENSEMBLE}` Triton ensemble, not served to the platform on its own: see "
        f"`model_repository/{ENSEMBLE}/MODEL_CARD.md` for intended use, not-for-use cases, data, "
        "preprocessing and limitations, which apply unchanged. Input `image` float32 "
        "`[N, 1, 28, 28]`, output `logits` float32 `[N, 1]` (the pneumonia logit). No CAM "
        "output: the ensemble exposes logits only."
    )
    arch = (
        f"{mc.architecture_text(recipe.width, recipe.dropout)} {m['parameters']} parameters; ONNX "
        f"opset {mc.OPSET}, {m['onnx_bytes']} bytes, sha256 `{m['onnx_sha256']}`."
    )
    return f"""# {m["model"]}: member {m["model"][-1]} of {ENSEMBLE}

Generated by `scripts/train_cxr_ensemble.py`; do not edit by hand, rerun the script.

{mc.wrap(intro)}

## Model and training

{mc.wrap(arch)}

{mc.wrap(mc.training_text(recipe, m["seed"]) + " Weights kept: " + m["chosen"] + ".")}

## Results (test split, n = 624)

{mc.results_table(m, "pneumonia")}

## Calibration

{mc.reliability_text(m, "pneumonia", recipe.label_smoothing, counts)}

## Version and how to reproduce

Triton model `{m["model"]}`, version 1. `python scripts/train_cxr_ensemble.py` rebuilds all
members byte for byte (same torch `{m["torch_version"]}`, CPU kernels
`{m["torch_cpu_capability"]}`, {mc.THREADS}); `make reproduce` checks it.
"""


def ensemble_card(
    em: dict[str, Any], members: list[Member], counts: dict[str, tuple[int, int]]
) -> str:
    """The ensemble's card: use, data, each member's and the ensemble's test metrics."""
    recipe = MEMBER_RECIPE
    seeds = "seeds " + ", ".join(str(m.seed) for m in members) + " (one per member)"
    rows = []
    for mem in members:
        m = mem.metrics
        ci = m["test_auc_ci95"]
        rows.append(
            f"| `{mem.name}` | {mem.seed} | {recipe.width} | {em['weights'][mem.name]:.4f} | "
            f"{m['val_auc']:.4f} | {m['test_auc']:.4f} ({ci[0]:.4f} to {ci[1]:.4f}) | "
            f"{m['test_ece']:.4f} |"
        )
    ci = em["test_auc_ci95"]
    rows.append(
        f"| **ensemble** | - | - | - | {em['val_auc']:.4f} | **{em['test_auc']:.4f}** "
        f"({ci[0]:.4f} to {ci[1]:.4f}) | {em['test_ece']:.4f} |"
    )
    table = (
        "| model | seed | width | weight | val AUC | test AUC (95% CI) | test ECE |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    scheme = (
        f'Triton `platform: "ensemble"` scheduling: the request\'s `image` goes to each member '
        f"(`{'`, `'.join(m.name for m in members)}`, onnxruntime with TensorRT FP16 on GPU), "
        f"their `logits` become `logits_0..{len(members) - 1}` of the python-backend model "
        f"`{COMBINER}`, which returns `logits = sum_i w_i * logits_i`. The weights live in the "
        'combiner\'s config (`parameters { key: "weights" }`, a JSON list normalised to sum 1) '
        "and are **equal** (1/3 each): the members' val AUCs differ by less than the noise of a "
        "524-image split, so val-AUC weights would be near-equal anyway and would fit val noise. "
        "Logits, not probabilities, are averaged, so the output is a logit like "
        "`cxr_pneumonia`'s and the platform's sigmoid and threshold apply unchanged. The "
        "ensemble metrics below were computed offline with onnxruntime on each member's ONNX "
        "file and the combiner's own `weighted_average` function, i.e. the arithmetic Triton "
        "runs."
    )
    contract = (
        "Same model contract as `cxr_pneumonia`: input `image` float32 `[N, 1, 28, 28]` "
        f"(max batch {MAX_BATCH}), output `logits` float32 `[N, 1]`, the pneumonia logit "
        "(P(pneumonia) = sigmoid). There is no `cam` output: a CAM of averaged logits would be "
        "the weighted sum of the members' CAMs, but the members do not export one."
    )
    use = (
        "Research and demo of Triton ensemble scheduling with a python-backend combiner on the "
        "same task as `cxr_pneumonia`: pneumonia vs normal on frontal pediatric chest X-rays "
        "downsampled to 28x28. A research demonstrator, **not a medical device**. Intended "
        "users: engineers and researchers working on the platform (ensembles, batching across "
        "composing models, latency/accuracy trade-offs). Not clinicians."
    )
    data = (
        "PneumoniaMNIST (MedMNIST v2, Yang et al. 2023; Kermany et al. 2018, Guangzhou Women "
        f"and Children's Medical Center), licence **CC BY 4.0**, file `{DATA_DISPLAY}` (sha256 "
        f"`{em['data_sha256']}`), a reconstruction of the official file whose training-image "
        "order differs from it (see `SOURCE.md`). Preprocessing: the steps of "
        "`pipelines/cxr_pneumonia.yaml` through the platform's `training_batch` (modality LUT, "
        "VOI window, MONOCHROME1 inversion, centre crop, area resize to 28x28, "
        "`(x - 0.5) / 0.5`), exactly as for `cxr_pneumonia`. Label 1 = pneumonia. Members "
        "trained on train only; val set only the operating threshold; test produced the "
        "numbers. Caveat: the member recipe was chosen in exploratory runs that also printed "
        "test AUC."
    )
    split_rows = mc.split_table(counts, "normal", "pneumonia")
    reproduce = (
        f"CPU only ({mc.THREADS}), about 3 minutes on an idle core for all three members. The "
        f"same seeds, torch version (`{em['torch_version']}`), CPU kernel set "
        f"(`{em['torch_cpu_capability']}`) and thread count give byte-identical member ONNX "
        "files, configs, metrics and cards; `make reproduce` checks it."
    )
    limits = [
        "Everything in `cxr_pneumonia`'s card applies: 28x28 inputs, single centre, children "
        "aged 1-5 only, no subgroup metadata (so no subgroup analysis), test class balance "
        "different from train/val, labels without bacterial/viral distinction.",
        "The members share data, architecture and recipe, so their errors are correlated: "
        "averaging reduces seed variance, not the dataset's biases.",
        "Three models and a python step per request: more GPU launches and one CPU hop than "
        "`cxr_pneumonia`, for a similar AUC; the CIs of the two overlap.",
    ]
    not_for = [
        "Diagnosis, treatment decisions or clinical triage of real patients.",
        "Adults, lateral views, other modalities, or any finding other than pneumonia.",
        "Localisation: the ensemble outputs no CAM.",
    ]
    return f"""# {ENSEMBLE}: {len(members)}-member CNN ensemble for pneumonia on 28x28 pediatric CXR

Generated by `scripts/train_cxr_ensemble.py`; do not edit by hand, rerun the script.

## Intended use and users

{mc.wrap(use)}

{mc.checked_use_section(ENSEMBLE)}
## Not for use

{mc.bullets(not_for)}

## Model

{mc.wrap(contract)}

{mc.wrap(scheme)}

{mc.wrap("Members: " + mc.architecture_text(recipe.width, recipe.dropout))}

## Training data and preprocessing

{mc.wrap(data)}

{split_rows}

## Training

{mc.wrap(mc.training_text(recipe, seeds))}

## Results (test split, n = {sum(counts["test"])})

Each member and the ensemble (AUC with 95% bootstrap CI, {em["bootstrap"]}):

{table}

Ensemble at its own operating point:

{mc.results_table(em, "pneumonia")}

## Calibration

{mc.reliability_text(em, "pneumonia", recipe.label_smoothing, counts)}

## Subgroups and limitations

{mc.bullets(limits)}

## Version and how to reproduce

Triton models `{ENSEMBLE}` (version 1), `{COMBINER}` (1) and
{", ".join(f"`{m.name}`" for m in members)} (1 each).

```
python scripts/train_cxr_ensemble.py
```

{mc.wrap(reproduce)}
"""


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """CLI; the defaults reproduce the shipped models."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="PneumoniaMNIST 28px .npz")
    p.add_argument(
        "--repository", type=Path, default=DEFAULT_REPOSITORY, help="Triton model repository"
    )
    return p.parse_args()


def main() -> None:
    """Train and export each member, then write the combiner and ensemble configs and cards."""
    args = parse_args()
    started = time.perf_counter()
    data = load(args.data)
    combiner = combiner_module()
    members: list[Member] = []
    for i, seed in enumerate(MEMBER_SEEDS):
        name = member_name(i)
        print(f"== {name} (seed {seed})", flush=True)
        trained = mc.train(MEMBER_RECIPE, data, seed, log=lambda line: print(line, flush=True))
        folder = args.repository / name
        onnx_path = folder / "1" / "model.onnx"
        mc.export_onnx(trained.model, onnx_path, data.x["test"], cam=False)
        metrics = mc.common_metrics(
            name, trained, MEMBER_RECIPE, seed, data, onnx_path, args.data, cam=False
        )
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (folder / "MODEL_CARD.md").write_text(member_card(metrics, data.counts()))
        (folder / "config.pbtxt").write_text(member_config(name, metrics))
        members.append(
            Member(
                name,
                seed,
                metrics,
                mc.onnx_logits(onnx_path, data.x["val"]),
                mc.onnx_logits(onnx_path, data.x["test"]),
            )
        )
        print(f"{name}: test AUC {metrics['test_auc']:.4f}", flush=True)

    config = {
        "input": [{"name": n} for n in combiner.input_names(len(members))],
        "parameters": {"weights": {"string_value": json.dumps(list(WEIGHTS))}},
    }
    weights = combiner.parse_weights(config)
    val = combiner.weighted_average([m.val_logits[:, None] for m in members], weights)[:, 0]
    test = combiner.weighted_average([m.test_logits[:, None] for m in members], weights)[:, 0]
    ensemble_metrics = {
        "model": ENSEMBLE,
        "members": {m.name: {"seed": m.seed, "test_auc": m.metrics["test_auc"]} for m in members},
        "combiner": COMBINER,
        "weights": {m.name: float(w) for m, w in zip(members, weights, strict=True)},
        "weighting": "equal weights on member logits (normalised to sum 1)",
        **mc.evaluate(data.y["val"], val, data.y["test"], test, seed=0),
        "outputs": {"logits": [1]},
        "data_sha256": mc.sha256(args.data),
        "torch_version": members[0].metrics["torch_version"],
        "torch_cpu_capability": members[0].metrics["torch_cpu_capability"],
        "recipe": mc.recipe_dict(MEMBER_RECIPE),
    }
    combiner_dir = args.repository / COMBINER
    source = ROOT / "model_repository" / COMBINER / "1" / "model.py"
    if not (combiner_dir / "1" / "model.py").exists():
        (combiner_dir / "1").mkdir(parents=True)
        (combiner_dir / "1" / "model.py").write_bytes(source.read_bytes())
    (combiner_dir / "config.pbtxt").write_text(combiner_config(len(members), ensemble_metrics))
    ensemble_dir = args.repository / ENSEMBLE
    (ensemble_dir / "1").mkdir(parents=True, exist_ok=True)
    (ensemble_dir / "1" / ".gitkeep").write_text("")
    (ensemble_dir / "config.pbtxt").write_text(ensemble_config(len(members), ensemble_metrics))
    (ensemble_dir / "metrics.json").write_text(json.dumps(ensemble_metrics, indent=2) + "\n")
    (ensemble_dir / "MODEL_CARD.md").write_text(
        ensemble_card(ensemble_metrics, members, data.counts())
    )
    summary = {m.name: m.metrics["test_auc"] for m in members} | {
        ENSEMBLE: ensemble_metrics["test_auc"],
        "ci95": ensemble_metrics["test_auc_ci95"],
        "threshold": ensemble_metrics["operating_threshold"],
    }
    print(json.dumps(summary))
    print(f"total {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
