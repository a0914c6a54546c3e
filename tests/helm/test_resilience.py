"""Staying up when Triton is slow or down, and scaling Triton out so new pods take traffic.

- Probes: startup and liveness ask the health service `liveness` (never tied to a dependency),
  readiness the overall status (follows Triton and the peers), so an outage drains pods and
  never restarts them.
- Triton ages its gRPC connections (the gateways re-resolve and reach new pods) and accepts the
  gateway's keepalive pings; the flag names and units are checked against the real binary.
- The prometheus-adapter configuration is one ConfigMap the adapter chart mounts
  (`rules.existing`), the HPA and KEDA scale on requests in flight.
- Rollouts: Triton's progressDeadlineSeconds follows its start-up budget, production runs two
  Triton pods on different nodes, a ReadWriteOnce model volume refuses several replicas, the
  PriorityClass the pods name exists, and every monitor carries the kube-prometheus-stack label.
"""

from __future__ import annotations

import copy
import re
import subprocess
from functools import cache
from typing import Any

import pytest
import yaml
from chart_support import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    SERVICES,
    Obj,
    by_name,
    component_name,
    container,
    deployment,
    expected_health_port,
    expected_ports,
    merged_values,
    objects,
    of_kind,
    parse_manifests,
    pod_spec,
    pods_selected,
    render,
    scenario_values,
    service_container,
)

from services.common.server import LIVENESS_SERVICE
from services.common.settings import GatewaySettings, ServiceSettings
from services.triton_local.launch import triton_paths

NOTES = "imaging-platform/templates/NOTES.txt"
MONITOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
# Fields of one prometheus-adapter discovery rule (its config-file format).
ADAPTER_RULE_FIELDS = {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
# Keys of prometheus-adapter's config file.
ADAPTER_CONFIG_KEYS = {"rules", "externalRules", "resourceRules"}
# System classes every cluster has; any other priorityClassName must be created by someone.
SYSTEM_PRIORITY_CLASSES = {"system-cluster-critical", "system-node-critical"}


def _flags(args: list[str]) -> dict[str, str]:
    """--name=value arguments (the single-valued ones: --load-model repeats)."""
    return dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)


def _triton_args(objs: list[Obj]) -> list[str]:
    args: list[str] = container(deployment(objs, "triton"), "triton")["args"]
    return args


# --- probes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_startup_and_liveness_never_wait_for_a_dependency(scenario: str) -> None:
    """Every service container: startup and liveness ask `liveness`, readiness the overall ""."""
    objs = objects(scenario)
    values = merged_values(scenario)
    for svc in SERVICES:
        c = service_container(objs, svc)
        port = expected_health_port(values, svc) or expected_ports(values, svc)[0]
        where = f"{scenario}/{svc}"
        assert c["startupProbe"]["grpc"] == {"port": port, "service": LIVENESS_SERVICE}, where
        assert c["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS_SERVICE}, where
        # No service field: the overall status, which the gateway ties to Triton and its peers.
        assert c["readinessProbe"]["grpc"] == {"port": port}, where


def test_the_chart_probes_the_name_the_services_serve() -> None:
    assert LIVENESS_SERVICE == "liveness"
    text = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    block = re.search(r'define "imaging-platform.livenessService" -}}\s*(\S+)\s*{{-', text)
    assert block and block.group(1) == LIVENESS_SERVICE


def test_a_triton_outage_cannot_restart_the_gateway() -> None:
    """Only readiness follows Triton: it drains the gateway within its failure budget while
    nothing restarts it, however long the outage (the default and production scenarios)."""
    for scenario in ("default", "gpu-production"):
        c = service_container(objects(scenario), "gateway")
        probes = merged_values(scenario)["probes"]
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["grpc"]["service"] == LIVENESS_SERVICE
        assert "service" not in c["readinessProbe"]["grpc"]
        readiness = probes["readiness"]
        unreachable = merged_values(scenario)["gateway"]["readiness"]["peerUnreachableSeconds"]
        drained_within = unreachable + readiness["periodSeconds"] * readiness["failureThreshold"]
        assert drained_within <= 15


def test_triton_probes_its_own_health_endpoints() -> None:
    c = container(deployment(objects("gpu-production"), "triton"), "triton")
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}


# --- Triton's connection age and keepalive ----------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_triton_ages_connections_and_accepts_the_gateway_keepalive(scenario: str) -> None:
    grpc = merged_values(scenario)["triton"]["grpc"]
    flags = _flags(_triton_args(objects(scenario)))
    assert flags["--grpc-max-connection-age"] == str(grpc["maxConnectionAgeSeconds"] * 1000)
    assert flags["--grpc-max-connection-age-grace"] == str(
        grpc["maxConnectionAgeGraceSeconds"] * 1000
    )
    assert flags["--grpc-keepalive-permit-without-calls"] == "true"
    assert flags["--grpc-http2-max-pings-without-data"] == "0"
    assert flags["--grpc-http2-min-recv-ping-interval-without-data"] == str(
        grpc["minPingIntervalSeconds"] * 1000
    )


def test_connection_policy_defaults_fit_the_gateway() -> None:
    """30 s age; the grace covers the gateway's per-call timeout; pings accepted every 5 s,
    below the gateway's 10 s keepalive (the defaults the template checks assume)."""
    values = merged_values("default")
    flags = _flags(_triton_args(objects("default")))
    assert flags["--grpc-max-connection-age"] == "30000"
    assert flags["--grpc-max-connection-age-grace"] == "65000"
    assert flags["--grpc-http2-min-recv-ping-interval-without-data"] == "5000"
    call_timeout = float(values["gateway"]["env"]["IMAGING_CALL_TIMEOUT_SECONDS"])
    assert call_timeout == GatewaySettings.model_fields["call_timeout_seconds"].default
    assert int(flags["--grpc-max-connection-age-grace"]) >= call_timeout * 1000
    keepalive = GatewaySettings.model_fields["keepalive_seconds"].default
    assert keepalive == 10.0  # the template's default when gateway.env does not set it
    assert int(flags["--grpc-http2-min-recv-ping-interval-without-data"]) < keepalive * 1000
    # The same ping policy as the platform's own servers.
    assert ServiceSettings.model_fields["min_ping_interval_seconds"].default == 5.0


def test_connection_age_zero_turns_ageing_off() -> None:
    objs = parse_manifests(render({"triton": {"grpc": {"maxConnectionAgeSeconds": 0}}}))
    flags = _flags(_triton_args(objs))
    assert "--grpc-max-connection-age" not in flags
    assert "--grpc-max-connection-age-grace" not in flags
    assert flags["--grpc-keepalive-permit-without-calls"] == "true"


@cache
def _tritonserver_help() -> str:
    binary, _, libs = triton_paths()
    result = subprocess.run(
        [str(binary), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LD_LIBRARY_PATH": str(libs), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    return result.stdout + result.stderr


def test_flag_names_and_units_match_the_real_tritonserver() -> None:
    """The bundled tritonserver (2.51, as the chart's 24.10 image) knows every flag the chart
    passes, and its help gives the age and ping interval in milliseconds. It accepts `30s`
    silently as 30, so the chart must render plain milliseconds."""
    help_text = _tritonserver_help()
    assert "--grpc-max-connection-age " in help_text, help_text[:500]
    described: dict[str, str] = {}
    for match in re.finditer(r"^\s+(--[a-z0-9-]+)[^\n]*\n((?:\t[^\n]*\n)+)", help_text, re.M):
        described[match.group(1)] = " ".join(match.group(2).split())
    args = _triton_args(objects("gpu-production"))
    assert {"--grpc-max-connection-age", "--grpc-http2-min-recv-ping-interval-without-data"} <= set(
        _flags(args)
    )
    for arg in args:
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            assert name in described, f"tritonserver has no flag {name}"
    assert "milliseconds" in described["--grpc-max-connection-age"]
    assert "milliseconds" in described["--grpc-http2-min-recv-ping-interval-without-data"]
    assert "0 allows" in described["--grpc-http2-max-pings-without-data"]
    for name, value in _flags(args).items():
        if name.startswith(("--grpc-max-connection-age", "--grpc-http2-min-recv")):
            assert re.fullmatch(r"[1-9][0-9]*000", value), (name, value)


# --- the prometheus-adapter configuration and the scaling metric ------------------------------


def test_adapter_configmap_is_what_the_adapter_chart_mounts() -> None:
    """One ConfigMap, key config.yaml, in the adapter's namespace, holding a complete adapter
    config; NOTES.txt and the README give the `--set rules.existing=<it>` install line."""
    values = scenario_values("gpu-production")
    manifests = render(values)
    objs = parse_manifests(manifests)
    cm = by_name(objs, "ConfigMap", component_name("adapter-rules"))
    namespace = merged_values("gpu-production")["prometheusAdapter"]["rules"]["namespace"]
    assert cm["metadata"]["namespace"] == namespace == "monitoring"
    assert set(cm["data"]) == {"config.yaml"}
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert set(config) <= ADAPTER_CONFIG_KEYS
    for rule in config["rules"]:
        assert set(rule) <= ADAPTER_RULE_FIELDS, rule
        assert {"seriesQuery", "resources", "name", "metricsQuery"} <= set(rule)
    names = {r["name"]["as"] for r in config["rules"]}
    hpa = by_name(objs, "HorizontalPodAutoscaler", component_name("triton"))
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in names
    line = next(x for x in manifests[NOTES].splitlines() if "rules.existing" in x)
    assert "upgrade --install prometheus-adapter prometheus-community/prometheus-adapter" in line
    assert f"-n {namespace}" in line
    assert f"--set rules.existing={cm['metadata']['name']}" in line
    readme = (CHART_DIR / "README.md").read_text()
    assert "--set rules.existing=imaging-imaging-platform-adapter-rules" in readme


def test_adapter_config_carries_the_extra_rule_kinds() -> None:
    external = {"seriesQuery": "queue_depth", "metricsQuery": "sum(queue_depth)"}
    resource = {"cpu": {"containerQuery": "x", "nodeQuery": "y"}, "window": "3m"}
    values = {
        "prometheusAdapter": {"rules": {"enabled": True, "externalRules": [external]}},
    }
    values["prometheusAdapter"]["rules"]["resourceRules"] = resource
    cm = by_name(parse_manifests(render(values)), "ConfigMap", component_name("adapter-rules"))
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["externalRules"] == [external]
    assert config["resourceRules"] == resource
    assert cm["metadata"]["namespace"] == NAMESPACE


def test_triton_scales_on_requests_in_flight_by_default() -> None:
    autoscaling = merged_values("default")["triton"]["autoscaling"]
    assert autoscaling["hpa"]["metricName"] == "triton_inflight_requests"
    assert autoscaling["hpa"]["targetAverageValue"] == "4"
    assert autoscaling["keda"]["metricName"] == "triton_inflight_requests"
    assert autoscaling["keda"]["metricType"] == "AverageValue"
    assert autoscaling["keda"]["threshold"] == "4"
    rules = yaml.safe_load((CHART_DIR / "files" / "adapter-rules.yaml").read_text())["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == "triton_inflight_requests"]
    assert " ".join(rule["metricsQuery"].split()) == (
        "sum by (<<.GroupBy>>) "
        "(rate(nv_inference_request_duration_us{<<.LabelMatchers>>}[1m])) / 1e6"
    )
    hpa = by_name(objects("gpu-production"), "HorizontalPodAutoscaler", component_name("triton"))
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "triton_inflight_requests"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    (so,) = of_kind(objects("gpu-keda"), "ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["metricType"] == "AverageValue"
    assert "nv_inference_request_duration_us" in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "4"


# --- rollout timing ---------------------------------------------------------------------------


def _startup_budget(triton: dict[str, Any]) -> int:
    probe = triton["startupProbe"]
    budget: int = probe.get("initialDelaySeconds", 0) + (
        probe["periodSeconds"] * probe["failureThreshold"]
    )
    return budget


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_triton_progress_deadline_follows_the_startup_budget(scenario: str) -> None:
    triton = merged_values(scenario)["triton"]
    deploy = deployment(objects(scenario), "triton")
    startup = container(deploy, "triton")["startupProbe"]
    budget = _startup_budget(triton)
    rendered_budget = startup.get("initialDelaySeconds", 0) + (
        startup["periodSeconds"] * startup["failureThreshold"]
    )
    assert rendered_budget == budget
    assert triton["progressDeadlineSeconds"] == 0
    assert deploy["spec"]["progressDeadlineSeconds"] == budget + 300


def test_production_rollout_waits_for_its_900_second_start() -> None:
    values = merged_values("gpu-production")
    assert _startup_budget(values["triton"]) == 900
    manifests = render(scenario_values("gpu-production"))
    deploy = deployment(parse_manifests(manifests), "triton")
    assert deploy["spec"]["progressDeadlineSeconds"] == 1200
    # Helm waits for every Triton pod, and an upgrade replaces them one after another.
    pods = values["triton"]["autoscaling"]["minReplicas"]
    assert f"--wait --timeout {pods * 1200}s" in manifests[NOTES]
    readme = (CHART_DIR / "README.md").read_text()
    assert re.search(r"helm upgrade --install .*--wait --timeout \d+m", readme)


def test_progress_deadline_is_settable() -> None:
    objs = parse_manifests(render({"triton": {"progressDeadlineSeconds": 3600}}))
    assert deployment(objs, "triton")["spec"]["progressDeadlineSeconds"] == 3600
    delayed = {"triton": {"startupProbe": {"initialDelaySeconds": 60}}}
    objs = parse_manifests(render(delayed))
    assert deployment(objs, "triton")["spec"]["progressDeadlineSeconds"] == 60 + 600 + 300


# --- availability of Triton -------------------------------------------------------------------


def test_production_runs_two_tritons_on_different_nodes() -> None:
    values = merged_values("gpu-production")["triton"]
    objs = objects("gpu-production")
    deploy = deployment(objs, "triton")
    assert values["replicas"] >= 2
    if values["autoscaling"]["hpa"]["enabled"] or values["autoscaling"]["keda"]["enabled"]:
        hpa = by_name(objs, "HorizontalPodAutoscaler", component_name("triton"))
        assert hpa["spec"]["minReplicas"] >= 2
    else:
        assert deploy["spec"]["replicas"] >= 2
    by_host = [
        t
        for t in pod_spec(deploy)["topologySpreadConstraints"]
        if t["topologyKey"] == "kubernetes.io/hostname"
    ]
    assert by_host
    for constraint in by_host:
        assert constraint["whenUnsatisfiable"] == "DoNotSchedule"
        assert constraint["maxSkew"] == 1
        assert pods_selected(objs, constraint["labelSelector"]) == {"triton"}
    pdb = by_name(objs, "PodDisruptionBudget", component_name("triton"))
    assert pdb["spec"]["maxUnavailable"] == 1


def test_shared_model_volume_allows_several_replicas() -> None:
    """ReadOnlyMany/ReadWriteMany claims (gpu-keda) or one replica on ReadWriteOnce render."""
    keda = merged_values("gpu-keda")["triton"]
    assert keda["modelRepository"]["source"] == "pvc"
    assert keda["modelRepository"]["pvc"]["accessMode"] == "ReadOnlyMany"
    assert keda["autoscaling"]["maxReplicas"] > 1
    default = merged_values("default")["triton"]
    assert default["modelRepository"]["pvc"]["accessMode"] == "ReadWriteOnce"
    assert default["replicas"] == 1
    for mode in ("ReadOnlyMany", "ReadWriteMany"):
        values = {"triton": {"replicas": 3, "modelRepository": {"pvc": {"accessMode": mode}}}}
        assert deployment(parse_manifests(render(values)), "triton")["spec"]["replicas"] == 3
    # A model image or an object store has no such limit.
    image = copy.deepcopy(scenario_values("mtls"))
    image["triton"]["replicas"] = 3
    assert deployment(parse_manifests(render(image)), "triton")["spec"]["replicas"] == 3


# --- PriorityClass ------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_priority_class_named_exists(scenario: str) -> None:
    objs = objects(scenario)
    created = {p["metadata"]["name"] for p in of_kind(objs, "PriorityClass")}
    for deploy in of_kind(objs, "Deployment"):
        name = pod_spec(deploy).get("priorityClassName")
        if name:
            assert name in created | SYSTEM_PRIORITY_CLASSES, (scenario, name)


def test_production_creates_its_priority_class() -> None:
    values = merged_values("gpu-production")["priorityClass"]
    (pc,) = of_kind(objects("gpu-production"), "PriorityClass")
    assert pc["apiVersion"] == "scheduling.k8s.io/v1"
    assert pc["metadata"]["name"] == values["name"] == "imaging-critical"
    assert pc["value"] == values["value"]
    assert pc["globalDefault"] is False
    assert pc["preemptionPolicy"] == "PreemptLowerPriority"
    assert "namespace" not in pc["metadata"]
    objs = objects("gpu-production")
    for component in ("gateway", "triton"):
        assert pod_spec(deployment(objs, component))["priorityClassName"] == "imaging-critical"
    assert not of_kind(objects("default"), "PriorityClass")


# --- monitors select into kube-prometheus-stack -----------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_monitor_carries_the_release_label(scenario: str) -> None:
    labels = merged_values(scenario)["monitoring"]["labels"]
    assert labels == {"release": "kube-prometheus-stack"}
    for kind in MONITOR_KINDS:
        for obj in of_kind(objects(scenario), kind):
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", (
                kind,
                obj["metadata"]["name"],
            )


def test_monitor_labels_follow_the_values() -> None:
    values = copy.deepcopy(scenario_values("gpu-keda"))
    values["monitoring"]["labels"] = {"release": "prom", "team": "imaging"}
    values["monitoring"]["scrape"]["labels"] = {"team": "radiology"}
    objs = parse_manifests(render(values))
    monitors = [o for kind in MONITOR_KINDS for o in of_kind(objs, kind)]
    assert len(monitors) == 3
    for obj in monitors:
        labels = obj["metadata"]["labels"]
        assert labels["release"] == "prom"
        expected = "imaging" if obj["kind"] == "PrometheusRule" else "radiology"
        assert labels["team"] == expected
        assert labels["app.kubernetes.io/instance"] == RELEASE
    # Helm merges a map with the defaults: null deletes the default label.
    values["monitoring"]["labels"] = {"release": None}
    objs = parse_manifests(render(values))
    assert all("release" not in o["metadata"]["labels"] for o in of_kind(objs, "PodMonitor"))


def test_notes_explain_the_connection_age() -> None:
    notes = render()[NOTES]
    assert "gRPC connections to Triton end after 30 s" in notes
    off = render({"triton": {"grpc": {"maxConnectionAgeSeconds": 0}}})[NOTES]
    assert "never age out" in off
