"""Rendering and inspection helpers shared by the chart tests (imported by module name).

The chart is rendered offline through helm-python-sdk (Helm's Go SDK behind a C ABI), so no
`helm` binary and no cluster are needed. Renders are cached per scenario: every scenario is
rendered once per test session.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "imaging-platform"
CI_DIR = CHART_DIR / "ci"
TESTS_DIR = Path(__file__).resolve().parent
RELEASE = "rel"
NAMESPACE = "imaging"
FULLNAME = f"{RELEASE}-imaging-platform"
SERVICES = ("gateway", "decoder", "preprocessor", "postprocessor")
COMPONENTS = (*SERVICES, "triton")
# Services that run in the gateway's pod when dataPlane.colocated is true (the default).
SIDECARS = ("decoder", "preprocessor")
# "default" renders values.yaml alone; the others are the chart's ci/<name>-values.yaml.
SCENARIOS = ("default", *sorted(p.name.removesuffix("-values.yaml") for p in CI_DIR.glob("*.yaml")))

Obj = dict[str, Any]


def scenario_values(scenario: str) -> dict[str, Any]:
    """User-supplied values of a scenario (merged over values.yaml by Helm)."""
    if scenario == "default":
        return {}
    loaded = yaml.safe_load((CI_DIR / f"{scenario}-values.yaml").read_text())
    return loaded or {}


@functools.cache
def _merged_values(scenario: str) -> dict[str, Any]:
    with helm.Chart.load(CHART_DIR) as chart:
        merged: dict[str, Any] = chart.merge_values(scenario_values(scenario))
        return merged


def overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` as Helm merges values files (maps key by key;
    lists and scalars replaced)."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merged_values(scenario: str) -> dict[str, Any]:
    """The values a release of this scenario computes (defaults coalesced with overrides)."""
    return copy.deepcopy(_merged_values(scenario))


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Render the chart with ``values``; raises HelmValuesError/HelmRenderError on bad values."""
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(values or None, name=RELEASE, namespace=NAMESPACE)


def lint(values: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return helm.lint(CHART_DIR, values or None, namespace=NAMESPACE, **options)


def parse_manifests(manifests: dict[str, str]) -> list[Obj]:
    """Every Kubernetes object of a render, each tagged with its template in ``_template``."""
    objects: list[Obj] = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["_template"] = template
                objects.append(doc)
    return objects


@functools.cache
def _rendered(scenario: str) -> tuple[Obj, ...]:
    return tuple(parse_manifests(render(scenario_values(scenario))))


def objects(scenario: str) -> list[Obj]:
    """Parsed objects of a scenario (deep copies: tests may mutate them)."""
    return [copy.deepcopy(o) for o in _rendered(scenario)]


def k8s_object(obj: Obj) -> Obj:
    """The object without the test's bookkeeping keys."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def by_name(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def component_name(component: str) -> str:
    return f"{FULLNAME}-{component}"


def deployment(objs: list[Obj], component: str) -> Obj:
    return by_name(objs, "Deployment", component_name(component))


def pod_spec(deploy: Obj) -> Obj:
    spec: Obj = deploy["spec"]["template"]["spec"]
    return spec


def containers(deploy: Obj, init: bool = True) -> Iterator[Obj]:
    spec = pod_spec(deploy)
    yield from spec["containers"]
    if init:
        yield from spec.get("initContainers", [])


def container(deploy: Obj, name: str) -> Obj:
    return next(c for c in pod_spec(deploy)["containers"] if c["name"] == name)


def env_of(c: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def env_entry(c: Obj, name: str) -> Obj:
    """The one EnvVar of ``c`` called ``name`` (value or valueFrom)."""
    matches: list[Obj] = [e for e in c.get("env", []) if e["name"] == name]
    assert len(matches) == 1, f"{c['name']} sets {name} {len(matches)} times"
    return matches[0]


def mounted_volume(deploy: Obj, c: Obj, path: str) -> tuple[Obj, Obj]:
    """(volumeMount, pod volume) of the mount of ``c`` whose mountPath holds ``path``."""
    mounts = [
        m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert len(mounts) == 1, f"{c['name']}: {len(mounts)} mounts hold {path}"
    (mount,) = mounts
    volume: Obj = next(v for v in pod_spec(deploy)["volumes"] if v["name"] == mount["name"])
    return mount, volume


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pods_selected(objs: list[Obj], selector: Obj) -> set[str]:
    """Components whose Deployment pod template labels the selector matches."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in of_kind(objs, "Deployment")
        if selector_matches(selector, d["spec"]["template"]["metadata"]["labels"])
    }


def colocated(scenario: str) -> bool:
    """Whether the scenario runs the decoder and the preprocessor in the gateway's pod."""
    return bool(merged_values(scenario)["dataPlane"]["colocated"])


def deployed_services(scenario: str) -> tuple[str, ...]:
    """Services with a Deployment (and HPA, PDB, Service, NetworkPolicy) of their own."""
    return tuple(s for s in SERVICES if not (colocated(scenario) and s in SIDECARS))


def deployed_components(scenario: str) -> tuple[str, ...]:
    return (*deployed_services(scenario), "triton")


def pod_of(objs: list[Obj], service: str) -> Obj:
    """The Deployment whose pods run ``service`` (the gateway's for a colocated sidecar)."""
    matches = [
        d
        for d in of_kind(objs, "Deployment")
        if any(c["name"] == service for c in pod_spec(d)["containers"])
    ]
    assert len(matches) == 1, f"{service} runs in {len(matches)} Deployments"
    return matches[0]


def service_container(objs: list[Obj], service: str) -> Obj:
    """The container of ``service``, wherever it runs."""
    return container(pod_of(objs, service), service)


def _ports_of(values: dict[str, Any], service: str) -> dict[str, int]:
    data_plane = values["dataPlane"]
    if data_plane["colocated"] and service in SIDECARS:
        ports: dict[str, int] = data_plane["ports"][service]
    else:
        ports = values["ports"]
    return ports


def expected_ports(values: dict[str, Any], service: str) -> tuple[int, int]:
    """(gRPC, metrics) port the values give ``service``'s container."""
    ports = _ports_of(values, service)
    return ports["grpc"], ports["metrics"]


def expected_health_port(values: dict[str, Any], service: str) -> int | None:
    """Plaintext health port of ``service``'s container: only with tls.enabled, else None."""
    if not values["tls"]["enabled"]:
        return None
    return _ports_of(values, service)["health"]


def tls_enabled(scenario: str) -> bool:
    return bool(merged_values(scenario)["tls"]["enabled"])


def adapter_rules_file() -> Obj:
    loaded: Obj = yaml.safe_load((CHART_DIR / "files" / "adapter-rules.yaml").read_text())
    return loaded


def adapter_metric_names() -> set[str]:
    return {rule["name"]["as"] for rule in adapter_rules_file()["rules"]}


def promtool() -> str:
    """Path of promtool; the tests fail (never skip) without it."""
    path = shutil.which("promtool")
    if path is None:
        raise AssertionError(
            "promtool not found on PATH: install the Debian package `prometheus` "
            "(apt-get install -y prometheus) to run the alerting-rule tests"
        )
    return path


@contextlib.contextmanager
def schemaless(folder: Path) -> Iterator[helm.Chart]:
    """The chart copied into ``folder`` without values.schema.json, to prove the template
    checks hold on their own."""
    copy_dir = folder / "imaging-platform"
    shutil.copytree(CHART_DIR, copy_dir, symlinks=False)
    (copy_dir / "values.schema.json").unlink()
    with helm.Chart.load(copy_dir) as chart:
        yield chart
