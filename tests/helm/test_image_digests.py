"""Images are pinned by digest in production and never default to a moving tag.

`requireImageDigests: true` (ci/gpu-production-values.yaml) makes values.schema.json refuse any
image of the release without a sha256 digest: the platform image, Triton's and, when Triton's
models come from a model image, that one too.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
from chart_support import (
    SCENARIOS,
    Obj,
    component_name,
    lint,
    merged_values,
    objects,
    parse_manifests,
    render,
    scenario_values,
)

PRODUCTION = "gpu-production"
DIGEST = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
TAGGED = re.compile(r"^[^\s@]+:(?P<tag>[^\s:/@]+)$")
MODEL_DIGEST = "sha256:" + "ab" * 32
MODEL_REPOSITORY = "registry.example.com/imaging/models"
TRITON = component_name("triton")


def pod_specs(obj: Obj) -> Iterator[Obj]:
    """Pod specs of an object: a Pod's own, a workload's template, a CronJob's job template."""
    spec: Obj = obj.get("spec") or {}
    if obj["kind"] == "Pod":
        yield spec
    if isinstance(spec.get("template"), dict):
        yield spec["template"]["spec"]
    if isinstance(spec.get("jobTemplate"), dict):
        yield spec["jobTemplate"]["spec"]["template"]["spec"]


def images(objs: list[Obj]) -> list[tuple[str, str]]:
    """(where, image) of every container, init and ephemeral ones included."""
    found = []
    for obj in objs:
        for spec in pod_specs(obj):
            for field in ("initContainers", "containers", "ephemeralContainers"):
                for c in spec.get(field) or []:
                    where = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
                    found.append((where, c["image"]))
    return found


def production_with_model_image() -> dict[str, Any]:
    """The production scenario with its models copied out of a digest-pinned model image."""
    values = copy.deepcopy(scenario_values(PRODUCTION))
    values["triton"]["modelRepository"] = {
        "source": "image",
        "image": {"repository": MODEL_REPOSITORY, "tag": "2024.11.1", "digest": MODEL_DIGEST},
    }
    return values


def without(values: dict[str, Any], *path: str) -> dict[str, Any]:
    """``values`` with the digest at ``path`` emptied."""
    values = copy.deepcopy(values)
    node = values
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = ""
    return values


def test_production_scenario_requires_digests() -> None:
    assert merged_values(PRODUCTION)["requireImageDigests"] is True
    assert merged_values("default")["requireImageDigests"] is False


@pytest.mark.parametrize(
    "values",
    [scenario_values(PRODUCTION), production_with_model_image()],
    ids=["objectStore models", "model image"],
)
def test_production_renders_every_image_by_digest(values: dict[str, Any]) -> None:
    found = images(parse_manifests(render(values)))
    assert {where.rsplit("/", 1)[-1] for where, _ in found} >= {"gateway", "triton"}
    assert [(w, i) for w, i in found if not DIGEST.match(i)] == []
    if values["triton"]["modelRepository"]["source"] == "image":
        model = (f"Deployment/{TRITON}/model-repository", f"{MODEL_REPOSITORY}@{MODEL_DIGEST}")
        assert model in found


EMPTY_DIGESTS = {
    "platform image": without(scenario_values(PRODUCTION), "image", "digest"),
    "Triton image": without(scenario_values(PRODUCTION), "triton", "image", "digest"),
    "model image": without(
        production_with_model_image(), "triton", "modelRepository", "image", "digest"
    ),
}
MALFORMED_DIGESTS = {
    "short": {**scenario_values(PRODUCTION)["image"], "digest": "sha256:abc123"},
    "upper-case": {**scenario_values(PRODUCTION)["image"], "digest": "sha256:" + "AB" * 32},
    "sha512": {**scenario_values(PRODUCTION)["image"], "digest": "sha512:" + "ab" * 64},
}


@pytest.mark.parametrize("values", EMPTY_DIGESTS.values(), ids=EMPTY_DIGESTS.keys())
def test_production_refuses_an_image_without_a_digest(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)
    assert lint(values, strict=True)["errors"]
    # The digest requirement is what refuses them: the same values render without it.
    relaxed = {**values, "requireImageDigests": False}
    assert [i for _, i in images(parse_manifests(render(relaxed))) if not DIGEST.match(i)]


@pytest.mark.parametrize("image", MALFORMED_DIGESTS.values(), ids=MALFORMED_DIGESTS.keys())
@pytest.mark.parametrize("required", [True, False], ids=["required", "optional"])
def test_a_malformed_digest_is_always_refused(image: dict[str, Any], required: bool) -> None:
    values = {**scenario_values(PRODUCTION), "image": image, "requireImageDigests": required}
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_model_digest_is_not_required_when_models_come_from_elsewhere() -> None:
    """With source objectStore/pvc no model image is rendered, so none needs a digest."""
    values = merged_values(PRODUCTION)
    assert values["triton"]["modelRepository"]["source"] != "image"
    assert values["triton"]["modelRepository"]["image"]["digest"] == ""
    assert not [i for _, i in images(objects(PRODUCTION)) if "models" in i]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_image_uses_latest_or_an_empty_tag(scenario: str) -> None:
    for where, image in images(objects(scenario)):
        if DIGEST.match(image):
            continue
        match = TAGGED.match(image)
        assert match, f"{where}: {image} has neither a tag nor a digest"
        assert match["tag"] != "latest", f"{where}: {image}"


def test_model_image_has_no_default_tag() -> None:
    values = merged_values("default")["triton"]["modelRepository"]["image"]
    assert values["tag"] == "" and values["digest"] == ""
    bare: dict[str, Any] = {
        "triton": {
            "modelRepository": {"source": "image", "image": {"repository": "reg.example/models"}}
        }
    }
    with pytest.raises(helm.HelmValuesError):
        render(bare)
    tagged = copy.deepcopy(bare)
    tagged["triton"]["modelRepository"]["image"]["tag"] = "2024.11.1"
    model = (f"Deployment/{TRITON}/model-repository", "reg.example/models:2024.11.1")
    assert model in images(parse_manifests(render(tagged)))
