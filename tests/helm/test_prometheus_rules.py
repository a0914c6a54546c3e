"""Alerting/recording rules, adapter rules, KEDA query and dashboards, checked with promtool.

files/prometheus-rules.yaml is what the PrometheusRule template embeds, so `promtool check rules`
and `promtool test rules` run on exactly what is deployed. promtool must be installed (Debian
package `prometheus`); without it these tests fail with a message saying so.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import (
    CHART_DIR,
    COMPONENTS,
    NAMESPACE,
    RELEASE,
    TESTS_DIR,
    adapter_rules_file,
    by_name,
    component_name,
    objects,
    of_kind,
    promtool,
)
from prometheus_client import Counter, Gauge, Histogram

from services.common import metrics as app_metrics
from services.ingest import monitoring as ingest_monitoring
from services.postprocessor import monitoring as model_monitoring

RULES_FILE = CHART_DIR / "files" / "prometheus-rules.yaml"
UNIT_TESTS = sorted((TESTS_DIR / "promtool").glob("*.yaml"))
DASHBOARDS = sorted((CHART_DIR / "files" / "dashboards").glob("*.json"))
# Triton 2.51 metrics the rules, adapter rules and dashboards may use.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}
# Series of exporters the chart does not run, which the rules and dashboards may use, with the
# label names each exports (a selector may match only these):
#   up: Prometheus' per-target series, with the target labels prometheus-operator attaches for a
#     ServiceMonitor or PodMonitor (job, instance, namespace, pod, container, service, endpoint)
#     and the chart's monitors' targetLabels/podTargetLabels (app_kubernetes_io_*).
#   kube_*: kube-state-metrics v2.20.0 (docs/metrics/workload/deployment-metrics.md and
#     horizontalpodautoscaler-metrics.md).
#   certmanager_*: cert-manager v1.21.1 (pkg/metrics/metrics.go, certificates_test.go).
#   DCGM_*: dcgm-exporter 4.5.3-4.8.2: fields of etc/default-counters.csv, the labels its
#     renderer writes (internal/pkg/rendermetrics/render_metrics.go; GPU_I_* on MIG instances,
#     DCGM_FI_DRIVER_VERSION a label field), err_code/err_msg on XID errors
#     (internal/pkg/collector/gpu_collector.go) and the Kubernetes pod attribution's namespace,
#     pod and container (internal/pkg/transformation/kubernetes.go).
_UP_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
    | {f"app_kubernetes_io_{k}" for k in ("name", "instance", "component")}
)
_DEPLOYMENT = frozenset({"namespace", "deployment"})
_HPA = frozenset({"namespace", "horizontalpodautoscaler"})
_CERTIFICATE = frozenset({"namespace", "name", "issuer_name", "issuer_kind", "issuer_group"})
_DCGM = frozenset(
    {"gpu", "UUID", "pci_bus_id", "device", "modelName", "GPU_I_PROFILE", "GPU_I_ID"}
    | {"Hostname", "DCGM_FI_DRIVER_VERSION", "namespace", "pod", "container"}
)
EXTERNAL_METRICS: dict[str, frozenset[str]] = {
    "up": _UP_LABELS,
    "kube_deployment_spec_replicas": _DEPLOYMENT,
    "kube_deployment_status_replicas_available": _DEPLOYMENT,
    "kube_horizontalpodautoscaler_spec_min_replicas": _HPA,
    "kube_horizontalpodautoscaler_spec_max_replicas": _HPA,
    "kube_horizontalpodautoscaler_status_current_replicas": _HPA,
    "certmanager_certificate_expiration_timestamp_seconds": _CERTIFICATE,
    "certmanager_certificate_renewal_timestamp_seconds": _CERTIFICATE,
    "certmanager_certificate_ready_status": _CERTIFICATE | {"condition"},
    "DCGM_FI_DEV_GPU_UTIL": _DCGM,
    "DCGM_FI_DEV_FB_USED": _DCGM,
    "DCGM_FI_DEV_FB_FREE": _DCGM,
    "DCGM_FI_DEV_XID_ERRORS": _DCGM | {"err_code", "err_msg"},
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": _DCGM,
}
# Names of series in PromQL: the platform's and Triton's, recorded ones, and the external ones
# above (a misspelt DCGM_, kube_ or certmanager_ name, or `up`, is caught as well).
METRIC_TOKEN = re.compile(
    r"\b(?:(?:imaging|nv)[a-z0-9_:]*|DCGM_[A-Z0-9_]+|kube_[a-z0-9_]+|certmanager_[a-z0-9_]+|up\b)"
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
TARGET_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
]


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def rules_doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return loaded


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in rules_doc()["groups"] for rule in group["rules"]]


def app_series_names() -> set[str]:
    """Series names the services export, read from the modules that define them."""
    names: set[str] = set()
    for module in (app_metrics, model_monitoring, ingest_monitoring):
        for value in vars(module).values():
            if isinstance(value, Histogram):
                names |= {f"{value._name}_{s}" for s in ("bucket", "count", "sum")}
            elif isinstance(value, Counter):
                names.add(f"{value._name}_total")
            elif isinstance(value, Gauge):
                names.add(value._name)
    return names


def known_series() -> set[str]:
    recorded = {r["record"] for r in all_rules() if "record" in r}
    return app_series_names() | TRITON_METRICS | set(EXTERNAL_METRICS) | recorded


def metric_names(expr: str) -> list[str]:
    """Series names in a PromQL expression, string literals (label values) left out."""
    return METRIC_TOKEN.findall(_STRING.sub('""', expr))


def unknown_labels(expr: str) -> list[str]:
    """Labels that selectors of external series match on but their exporter does not export."""
    return [
        f"{name}{{{label}}}"
        for name, matchers in _SELECTOR.findall(expr)
        if name in EXTERNAL_METRICS
        for label in _MATCHER_LABEL.findall(matchers)
        if label not in EXTERNAL_METRICS[name]
    ]


def check_promql(tmp_path: Path, exprs: dict[str, str]) -> None:
    """Syntax-check PromQL expressions by wrapping them in a rule file for promtool."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs.values())]
    path = tmp_path / "exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{list(exprs)}"


# --- the rule file ---------------------------------------------------------------------------


def test_promtool_is_installed() -> None:
    result = run_promtool("--version")
    assert result.returncode == 0, result.stderr


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize("test_file", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(test_file: Path) -> None:
    result = run_promtool("test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_cover_every_rule() -> None:
    assert UNIT_TESTS, "no promtool unit tests under tests/helm/promtool"
    fired: set[str] = set()
    silent_checked: set[str] = set()
    exprs = ""
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text())
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                if case["exp_alerts"]:
                    fired.add(case["alertname"])
                else:
                    silent_checked.add(case["alertname"])
            exprs += " " + " ".join(c["expr"] for c in test.get("promql_expr_test", []))
    alerts = {r["alert"] for r in all_rules() if "alert" in r}
    assert alerts <= fired, f"alerts never seen firing: {alerts - fired}"
    assert alerts <= silent_checked, (
        f"alerts never checked to stay silent: {alerts - silent_checked}"
    )
    # A recording rule is covered when a test evaluates it or another rule builds on it.
    used = set(METRIC_TOKEN.findall(exprs))
    for rule in all_rules():
        used |= set(METRIC_TOKEN.findall(rule["expr"]))
    for rule in all_rules():
        if "record" in rule:
            assert rule["record"] in used, f"recording rule {rule['record']} is never evaluated"


def test_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """Mutating one alert threshold must make the unit tests fail (they really assert)."""
    text = RULES_FILE.read_text()
    mutated = text.replace(
        "imaging:triton_gpu_utilization:avg5m > 0.9", "imaging:triton_gpu_utilization:avg5m > 0.99"
    )
    assert mutated != text
    rules = tmp_path / "prometheus-rules.yaml"
    rules.write_text(mutated)
    for path in UNIT_TESTS:
        doc = yaml.safe_load(path.read_text())
        doc["rule_files"] = [str(rules)]
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        result = run_promtool("test", "rules", copy)
        if result.returncode != 0:
            assert "TritonGPUSaturated" in result.stdout + result.stderr
            return
    raise AssertionError("the unit tests pass against a broken GPU saturation threshold")


def test_rules_use_only_exported_metrics_and_labels() -> None:
    known = known_series()
    for rule in all_rules():
        name = rule.get("record") or rule.get("alert")
        for token in metric_names(rule["expr"]):
            assert token in known, f"{token} in {name}"
        assert not unknown_labels(rule["expr"]), f"{unknown_labels(rule['expr'])} in {name}"
    assert set(app_metrics.STAGE_LATENCY._labelnames) == {"service", "stage"}
    assert set(app_metrics.RPC_TOTAL._labelnames) == {"service", "method", "code"}
    decisions = model_monitoring.DECISIONS._labelnames
    assert set(decisions) == {"model", "version", "finding", "status"}
    assert set(model_monitoring.EXPECTED._labelnames) == {"model", "version", "kind"}


@pytest.mark.parametrize(
    "expr",
    [
        "DCGM_FI_DEV_FB_USE",
        "max(kube_deployment_status_replicas_availble)",
        'certmanager_certificate_expiry_timestamp_seconds{namespace="imaging"}',
        "nv_inference_cont",
    ],
)
def test_a_misspelt_metric_is_caught(expr: str) -> None:
    (token,) = metric_names(expr)
    assert token not in known_series()


@pytest.mark.parametrize(
    ("expr", "unknown"),
    [
        ('kube_deployment_spec_replicas{deploy="x"}', ["kube_deployment_spec_replicas{deploy}"]),
        ('DCGM_FI_DEV_FB_USED{uuid="GPU-1", pod="p"}', ["DCGM_FI_DEV_FB_USED{uuid}"]),
        ('DCGM_FI_DEV_XID_ERRORS{err_code!="0"}', []),
        ('up{app_kubernetes_io_component="triton"}', []),
    ],
)
def test_a_label_an_exporter_lacks_is_caught(expr: str, unknown: list[str]) -> None:
    assert unknown_labels(expr) == unknown


def test_alerts_are_labelled_and_annotated() -> None:
    for rule in all_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            assert rule.get("for"), f"{rule['alert']} fires on a single evaluation"


@pytest.mark.parametrize("scenario", ["gpu-production", "gpu-keda"])
def test_prometheusrule_embeds_the_rule_file(scenario: str) -> None:
    (rule,) = of_kind(objects(scenario), "PrometheusRule")
    assert rule["spec"] == rules_doc()


def test_monitors_keep_the_services_own_service_label() -> None:
    """Without honorLabels the operator's `service` target label would rename ours."""
    for scenario, kind, endpoints in (
        ("gpu-production", "ServiceMonitor", "endpoints"),
        ("gpu-keda", "PodMonitor", "podMetricsEndpoints"),
    ):
        objs = objects(scenario)
        services = by_name(objs, kind, component_name("services"))
        assert all(e["honorLabels"] is True for e in services["spec"][endpoints])
        triton = by_name(objs, kind, component_name("triton"))
        assert triton["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "triton"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    matched = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        matched = matched and labels.get(expression["key"]) in expression["values"]
    return matched


@pytest.mark.parametrize(
    ("scenario", "kind", "key"),
    [
        ("gpu-production", "ServiceMonitor", "targetLabels"),
        ("gpu-keda", "PodMonitor", "podTargetLabels"),
    ],
)
def test_monitors_label_every_series_with_release_and_component(
    scenario: str, kind: str, key: str
) -> None:
    """The app_kubernetes_io_* labels the cluster rules scope by: copied from the Services
    (ServiceMonitor) or pods (PodMonitor) each monitor selects, which all carry them, with the
    values the rule file matches (name "imaging-platform", a component of the chart)."""
    objs = objects(scenario)
    sanitized = {re.sub(r"[./-]", "_", label) for label in TARGET_LABELS}
    assert sanitized == {label for label in _UP_LABELS if label.startswith("app_")}
    assert 'app_kubernetes_io_name="imaging-platform"' in RULES_FILE.read_text()
    if kind == "ServiceMonitor":
        sources = [s["metadata"]["labels"] for s in of_kind(objs, "Service")]
    else:
        sources = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(objs, "Deployment")]
    for name in ("services", "triton"):
        monitor = by_name(objs, kind, component_name(name))
        assert monitor["spec"][key] == TARGET_LABELS
        selected = [labels for labels in sources if _selects(monitor["spec"]["selector"], labels)]
        assert selected, f"{kind} {name} selects nothing"
        for labels in selected:
            assert labels["app.kubernetes.io/name"] == "imaging-platform"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/component"] in COMPONENTS


# --- prometheus-adapter rules and the KEDA query ----------------------------------------------


def _adapter_query(metric: str, group_by: str, matchers: str) -> str:
    rule = next(r for r in adapter_rules_file()["rules"] if r["name"]["as"] == metric)
    query: str = rule["metricsQuery"]
    return query.replace("<<.GroupBy>>", group_by).replace("<<.LabelMatchers>>", matchers)


def test_adapter_rules_are_well_formed(tmp_path: Path) -> None:
    rules = adapter_rules_file()["rules"]
    assert {r["name"]["as"] for r in rules} == {
        "triton_inflight_requests",
        "triton_queue_time_per_request_us",
        "triton_pending_requests",
    }
    exprs = {}
    for rule in rules:
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        series = rule["seriesQuery"].split("{")[0]
        assert re.fullmatch(rule["name"]["matches"], series)
        assert series in TRITON_METRICS
        for token in METRIC_TOKEN.findall(rule["metricsQuery"]):
            assert token in TRITON_METRICS
        exprs[rule["name"]["as"]] = _adapter_query(
            rule["name"]["as"], "namespace, pod", 'namespace="imaging",pod=~"a|b"'
        )
        exprs[f"{rule['name']['as']}-series"] = rule["seriesQuery"]
    check_promql(tmp_path, exprs)


def _run_expr_test(
    tmp_path: Path, series: list[dict[str, str]], cases: list[dict[str, Any]]
) -> None:
    doc = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": cases}],
    }
    path = tmp_path / "expr-test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = run_promtool("test", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


TRITON_A = 'namespace="imaging",pod="triton-a"'
TRITON_B = 'namespace="imaging",pod="triton-b"'
OTHER_NS = 'namespace="elsewhere",pod="triton-a"'
TRITON_SERIES = [
    # triton-a: model x, 1 request/s queued 100 ms each; model y, 1 request/s not queued.
    {"series": f'nv_inference_queue_duration_us{{{TRITON_A},model="x"}}', "values": "0+1500000x40"},
    {"series": f'nv_inference_request_success{{{TRITON_A},model="x"}}', "values": "0+15x40"},
    {"series": f'nv_inference_queue_duration_us{{{TRITON_A},model="y"}}', "values": "0x40"},
    {"series": f'nv_inference_request_success{{{TRITON_A},model="y"}}', "values": "0+15x40"},
    {"series": f'nv_inference_pending_request_count{{{TRITON_A},model="x"}}', "values": "5x40"},
    {"series": f'nv_inference_pending_request_count{{{TRITON_A},model="y"}}', "values": "3x40"},
    # triton-a in flight: model x 1 request/s taking 2.5 s, model y 1 request/s taking 0.5 s.
    {
        "series": f'nv_inference_request_duration_us{{{TRITON_A},model="x"}}',
        "values": "0+37500000x40",
    },
    {
        "series": f'nv_inference_request_duration_us{{{TRITON_A},model="y"}}',
        "values": "0+7500000x40",
    },
    # triton-b: idle.
    {"series": f'nv_inference_queue_duration_us{{{TRITON_B},model="x"}}', "values": "0x40"},
    {"series": f'nv_inference_request_success{{{TRITON_B},model="x"}}', "values": "0x40"},
    {"series": f'nv_inference_pending_request_count{{{TRITON_B},model="x"}}', "values": "0x40"},
    {"series": f'nv_inference_request_duration_us{{{TRITON_B},model="x"}}', "values": "0x40"},
    # Another namespace's pod of the same name must not leak in.
    {"series": f'nv_inference_queue_duration_us{{{OTHER_NS},model="x"}}', "values": "0+9000000x40"},
    {"series": f'nv_inference_request_success{{{OTHER_NS},model="x"}}', "values": "0+15x40"},
    {
        "series": f'nv_inference_request_duration_us{{{OTHER_NS},model="x"}}',
        "values": "0+900000000x40",
    },
]


def test_adapter_metrics_compute_per_pod_values(tmp_path: Path) -> None:
    """What the HPA sees, as prometheus-adapter would query it for two Triton pods."""
    matchers = 'namespace="imaging",pod=~"triton-a|triton-b"'
    queue = _adapter_query("triton_queue_time_per_request_us", "pod", matchers)
    pending = _adapter_query("triton_pending_requests", "pod", matchers)
    inflight = _adapter_query("triton_inflight_requests", "pod", matchers)
    _run_expr_test(
        tmp_path,
        TRITON_SERIES,
        [
            {
                # Two requests/s on triton-a, one queued 100 ms: 50 ms average. Idle: 0, not NaN.
                "expr": f"round({queue})",
                "eval_time": "5m",
                "exp_samples": [
                    {"labels": '{pod="triton-a"}', "value": 50000},
                    {"labels": '{pod="triton-b"}', "value": 0},
                ],
            },
            {
                "expr": pending,
                "eval_time": "5m",
                "exp_samples": [
                    {"labels": '{pod="triton-a"}', "value": 8},
                    {"labels": '{pod="triton-b"}', "value": 0},
                ],
            },
            {
                # Little's law: 2.5 + 0.5 requests in flight on triton-a; the idle pod: 0.
                "expr": f"round(10 * ({inflight}))",
                "eval_time": "5m",
                "exp_samples": [
                    {"labels": '{pod="triton-a"}', "value": 30},
                    {"labels": '{pod="triton-b"}', "value": 0},
                ],
            },
        ],
    )


def test_keda_query_is_scoped_to_the_release(tmp_path: Path) -> None:
    (so,) = of_kind(objects("gpu-keda"), "ScaledObject")
    query = so["spec"]["triggers"][0]["metadata"]["query"]
    check_promql(tmp_path, {"keda": query})
    triton = component_name("triton")
    mine = f'namespace="{NAMESPACE}",pod="{triton}-5d8c7b9f4d-x7k2q"'
    other_release = f'namespace="{NAMESPACE}",pod="other-imaging-platform-triton-5d8c7b9f4d-x7k2q"'
    other_namespace = f'namespace="staging",pod="{triton}-5d8c7b9f4d-x7k2q"'
    # 300 request-seconds per 15 s: 20 requests in flight, summed over the release's pods
    # (KEDA's AverageValue divides the sum over the replicas).
    series = [
        {"series": f"nv_inference_request_duration_us{{{mine}}}", "values": "0+300000000x40"},
    ]
    for noise in (other_release, other_namespace):
        series += [
            {"series": f"nv_inference_request_duration_us{{{noise}}}", "values": "0+9000000000x40"},
        ]
    _run_expr_test(
        tmp_path,
        series,
        [
            {
                "expr": f"round({query})",
                "eval_time": "5m",
                "exp_samples": [{"labels": f'{{namespace="{NAMESPACE}"}}', "value": 20}],
            }
        ],
    )


# --- dashboards ---------------------------------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _grafana_to_promql(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$namespace", "imaging")
        .replace("$service", "gateway")
        .replace("$stage", "decode")
    )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_parse_and_use_known_metrics(path: Path, tmp_path: Path) -> None:
    dashboard = json.loads(path.read_text())
    exprs = {}
    known = known_series()
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert "$" not in _grafana_to_promql(expr), expr
            for token in metric_names(expr):
                assert token in known, f"{token} in panel {panel['title']!r}"
            assert not unknown_labels(expr), f"{unknown_labels(expr)} in {panel['title']!r}"
            exprs[f"{panel['title']} {target['refId']}"] = _grafana_to_promql(expr)
    assert exprs
    check_promql(tmp_path, exprs)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_shows_what_operators_need(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "stage"} <= variables
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert heatmaps and heatmaps[0]["repeat"] == "stage"
    assert heatmaps[0]["targets"][0]["format"] == "heatmap"
    text = json.dumps(dashboard)
    for needle in (
        "imaging_stage_duration_seconds_bucket",
        "imaging_rpc_total",
        "nv_inference_queue_duration_us",
        "nv_inference_pending_request_count",
        "nv_gpu_utilization",
        # dcgm-exporter's series of the Triton pods' GPUs, MIG instances by profile and id.
        "imaging:triton_dcgm_gpu_util:max",
        "imaging:triton_dcgm_fb_used_mib:max",
        "imaging:triton_dcgm_fb_free_mib:max",
        "imaging:triton_dcgm_gr_engine_active:max",
        "imaging:triton_dcgm_xid_errors:max",
        "{{GPU_I_PROFILE}} {{GPU_I_ID}}",
    ):
        assert needle in text
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboards_configmap_is_picked_up_by_grafana() -> None:
    cm = by_name(objects("gpu-production"), "ConfigMap", component_name("dashboards"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(cm["data"]) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
