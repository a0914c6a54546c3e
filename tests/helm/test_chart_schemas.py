"""Every rendered object is valid for Kubernetes 1.29 and 1.33 (strict), custom resources included.

Built-in kinds go through kubernetes-validate's strict schemas (unknown fields are errors); a kind
it has no schema for is a failure, not a warning. Custom resources (ServiceMonitor, PodMonitor,
PrometheusRule, ScaledObject) are checked against the hand-transcribed CRD schemas in crds/.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from chart_support import SCENARIOS, TESTS_DIR, k8s_object, objects

pytestmark = pytest.mark.filterwarnings("error")

KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
}


@cache
def crd_validator(filename: str) -> jsonschema.protocols.Validator:
    schema = json.loads((TESTS_DIR / "crds" / filename).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _describe(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']} ({obj['_template']})"


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_ships_the_versions(kube_version: str) -> None:
    # validate() silently falls back to the newest older schema set; insist on an exact match.
    assert kube_version in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_builtin_objects_are_valid(scenario: str, kube_version: str) -> None:
    failures = []
    for obj in objects(scenario):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            validated = kubernetes_validate.validate(k8s_object(obj), kube_version, strict=True)
            assert validated == kube_version.rsplit(".", 1)[0]
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            failures.append(f"{_describe(obj)}: {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            failures.append(f"{_describe(obj)}: {err.message}")
    assert failures == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_match_their_crd_schemas(scenario: str) -> None:
    failures = []
    for obj in objects(scenario):
        filename = CUSTOM_KINDS.get((obj["apiVersion"], obj["kind"]))
        if filename is None:
            continue
        for err in crd_validator(filename).iter_errors(k8s_object(obj)):
            path = ".".join(str(p) for p in err.absolute_path)
            failures.append(f"{_describe(obj)}: {path}: {err.message}")
    assert failures == []


def test_every_custom_kind_is_rendered_by_some_scenario() -> None:
    rendered = {(o["apiVersion"], o["kind"]) for s in SCENARIOS for o in objects(s)}
    assert set(CUSTOM_KINDS) <= rendered


@pytest.mark.parametrize("filename", sorted(CUSTOM_KINDS.values()))
def test_crd_schemas_reject_what_the_api_server_rejects(filename: str) -> None:
    validator = crd_validator(filename)
    kind = next(k for k, f in CUSTOM_KINDS.items() if f == filename)
    no_spec = {"apiVersion": kind[0], "kind": kind[1], "metadata": {"name": "x"}}
    assert not validator.is_valid(no_spec)
    unknown_field = {**no_spec, "spec": {"notAField": True}}
    assert not validator.is_valid(unknown_field)


def test_builtin_validation_catches_mistakes() -> None:
    """Guard against a validator that accepts everything (e.g. a wrong schema directory)."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c"}]}}},
        "unknown": 1,
    }
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)
