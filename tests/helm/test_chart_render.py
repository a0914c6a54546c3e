"""The chart lints clean and renders well-formed, consistently labelled objects."""

from __future__ import annotations

import re

import helm_python as helm
import pytest
from chart_support import (
    CHART_DIR,
    NAMESPACE,
    SCENARIOS,
    SERVICES,
    component_name,
    deployed_components,
    lint,
    merged_values,
    objects,
    of_kind,
    pod_spec,
    scenario_values,
    service_container,
)

REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kinds that live outside namespaces (the PriorityClass a scenario asks the chart to create).
CLUSTER_SCOPED = {"PriorityClass"}
# Helm lint INFO findings that are accepted: the chart has no icon to point at.
ACCEPTED_INFO = {"icon is recommended"}


def test_scenarios_cover_the_ci_files() -> None:
    assert {"dev-cpu", "gpu-production", "gpu-keda", "mtls", "separate-pods"} <= set(SCENARIOS)


@pytest.mark.parametrize("kube_version", ["v1.29.0", "v1.33.0"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_is_clean(scenario: str, kube_version: str) -> None:
    report = lint(scenario_values(scenario), strict=True, kube_version=kube_version)
    assert report["errors"] == []
    findings = [
        m for m in report["messages"] if not (m["severity"] <= 1 and m["error"] in ACCEPTED_INFO)
    ]
    assert findings == [], findings


def test_chart_declares_the_kubernetes_versions_it_needs() -> None:
    # gRPC container probes are GA from 1.27; the chart is validated against 1.29 and 1.33.
    with helm.Chart.load(CHART_DIR) as chart:
        assert chart.metadata["kubeVersion"] == ">=1.29.0-0"
        assert chart.metadata["apiVersion"] == "v2"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_is_labelled_and_namespaced(scenario: str) -> None:
    objs = objects(scenario)
    assert objs
    for obj in objs:
        meta = obj["metadata"]
        where = f"{obj['kind']}/{meta['name']}"
        for label in REQUIRED_LABELS:
            assert meta["labels"].get(label), f"{where} lacks label {label}"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "imaging-platform"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert DNS_LABEL.match(meta["name"]) and len(meta["name"]) <= 63, where
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{where} is cluster-scoped"
        else:
            assert meta.get("namespace"), f"{where} has no namespace"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_names_are_unique_per_kind(scenario: str) -> None:
    keys = [
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in objects(scenario)
    ]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_core_workloads_exist(scenario: str) -> None:
    objs = objects(scenario)
    deployments = {d["metadata"]["name"] for d in of_kind(objs, "Deployment")}
    services = {s["metadata"]["name"] for s in of_kind(objs, "Service")}
    # Colocated (the default): the decoder and the preprocessor run in the gateway's pod and
    # have neither Deployment nor Services; separate-pods: all four services stand alone.
    expected = {component_name(c) for c in deployed_components(scenario)}
    peers = {f"{component_name(c)}-peers" for c in deployed_components(scenario) if c != "gateway"}
    assert len(deployments) == (5 if scenario == "separate-pods" else 3)
    assert deployments == expected
    # entry.loadBalancer adds <fullname>-gateway-lb, the one Service that is not ClusterIP.
    lb = merged_values(scenario)["entry"]["loadBalancer"]["enabled"]
    entries = {component_name("gateway-lb")} if lb else set()
    assert services == expected | peers | entries
    for svc in of_kind(objs, "Service"):
        internal = svc["metadata"]["name"] not in entries
        assert (svc["spec"].get("type", "ClusterIP") == "ClusterIP") is internal
    assert any(
        o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-pipelines") for o in objs
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pod_templates_carry_the_object_labels(scenario: str) -> None:
    for deploy in of_kind(objects(scenario), "Deployment"):
        pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
        for label in REQUIRED_LABELS:
            assert pod_labels.get(label), f"{deploy['metadata']['name']} pods lack {label}"
        assert deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_everything_lands_in_the_release_namespace_by_default() -> None:
    for obj in objects("default"):
        assert obj["kind"] not in CLUSTER_SCOPED
        assert obj["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("scenario", ["default", "separate-pods"])
def test_services_use_one_image_with_a_per_service_command(scenario: str) -> None:
    objs = objects(scenario)
    images = set()
    for svc in SERVICES:
        c = service_container(objs, svc)
        images.add(c["image"])
        assert c["command"] == ["python", "-m", f"services.{svc}.server"]
    assert len(images) == 1
    for deploy in of_kind(objs, "Deployment"):
        for c in pod_spec(deploy)["containers"]:
            assert c["name"] in (*SERVICES, "triton")


def test_chart_ships_the_files_the_templates_include() -> None:
    for rel in (
        "files/prometheus-rules.yaml",
        "files/adapter-rules.yaml",
        "values.schema.json",
        "ci/dev-cpu-values.yaml",
        "ci/gpu-production-values.yaml",
        "ci/mtls-values.yaml",
        "ci/separate-pods-values.yaml",
    ):
        assert (CHART_DIR / rel).is_file(), rel
    assert list((CHART_DIR / "files" / "dashboards").glob("*.json"))
    assert list((CHART_DIR / "files" / "pipelines").glob("*.yaml"))
