"""The chart's PromQL, evaluated by a real Prometheus scraping the real local stack.

Prometheus (Debian package) scrapes the four services and tritonserver every second, with the
target labels prometheus-operator would attach (`namespace`, `pod`, and the chart's monitors'
app_kubernetes_io_name/_instance/_component), and loads the chart's rule file. After real
traffic, every autoscaling query (prometheus-adapter rules, which KEDA reuses), every recording
rule and every alert expression must return numbers. The one exception is GPU utilisation: the
local tritonserver runs on the CPU and exports no nv_gpu_* series, so that query is checked to
be valid and empty.

The cluster alerts read exporters that cannot run here (no cluster, no GPU): kube-state-metrics,
cert-manager and dcgm-exporter. A stand-in serves what each would answer a scrape
(tests/helm/data/cluster_exporters.prom, transcribed from their sources), and Prometheus scrapes
it as a cluster scrapes the real ones. One more target of the release listens nowhere (its
scrapes fail), and one in another namespace is scraped and then no longer discovered (a
component whose targets vanished). Against that state each cluster alert must return exactly
the series it should: the expressions are evaluated (their `for` would take minutes).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from conftest import MEDMNIST_DIR, REPO_ROOT
from ports import refused_port
from synthetic import chest_image
from waiting import eventually, wait_until

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.samples import pneumoniamnist_samples
from services.cli.stack import SERVICES, Stack
from services.gateway.core import STAGES

pytestmark = pytest.mark.integration
FILES = REPO_ROOT / "helm" / "imaging-platform" / "files"
CLUSTER_EXPORTERS = REPO_ROOT / "tests" / "helm" / "data" / "cluster_exporters.prom"
NAMESPACE = "imaging"
RELEASE = "rel"
TRITON_POD = "rel-imaging-platform-triton-7d9f8-abcde"
TRITON_GPU = "GPU-8a1c5e2f-3b4d-4e6f-9a0b-1c2d3e4f5a6b"
GPU_ONLY = {"imaging:triton_gpu_utilization:avg5m"}
# Series of the ingest's exporter: this stack runs no ingest (promtool's unit tests in
# tests/helm/promtool/exports-test.yaml evaluate those alerts on synthetic series).
INGEST_ONLY = {"imaging_ingest_export_oldest_seconds", "imaging_ingest_exports_total"}
# Prometheus binds port 0 (--web.listen-address) and logs the address it got.
LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')

# The target labels the chart's monitors attach (targetLabels / podTargetLabels). With
# dataPlane.colocated, the chart's default, the decoder and the preprocessor are containers of
# the gateway's pod, scraped through the gateway's Service: component "gateway".
PLATFORM = {"app_kubernetes_io_name": "imaging-platform", "app_kubernetes_io_instance": RELEASE}
COMPONENT = {"gateway": "gateway", "decoder": "gateway", "preprocessor": "gateway"}
# A postprocessor pod of the release whose metrics port nobody listens on.
DEAD_POD = "rel-imaging-platform-postprocessor-6b7c9-zzzzz"
# A Triton pod of the release in namespace "staging" (answering with no series), discovered at
# first and then no longer: file-based discovery here, as Kubernetes discovery drops the targets
# of deleted pods or of a deleted ServiceMonitor.
RETIRED_NAMESPACE = "staging"
EMPTY_PATH = "/empty/metrics"
# How a cluster scrapes each exporter: with honorLabels as kube-prometheus-stack does
# kube-state-metrics, without it as cert-manager's chart and the GPU Operator (dcgm-exporter) do
# by default, and with the target labels prometheus-operator attaches for the exporter's pod.
STAND_IN_JOBS: dict[str, tuple[str, bool, dict[str, str]]] = {
    "kube-state-metrics": (
        "kube-state-metrics",
        True,
        {
            "namespace": "monitoring",
            "pod": "kube-prometheus-stack-kube-state-metrics-6d5b9c7f8-q2w4e",
            "container": "kube-state-metrics",
            "service": "kube-prometheus-stack-kube-state-metrics",
            "endpoint": "http",
        },
    ),
    "cert-manager": (
        "cert-manager",
        False,
        {
            "namespace": "cert-manager",
            "pod": "cert-manager-5b9d7f7c4d-8kq2x",
            "container": "cert-manager-controller",
            "service": "cert-manager",
            "endpoint": "http-metrics",
        },
    ),
    "dcgm-exporter": (
        "nvidia-dcgm-exporter",
        False,
        {
            "namespace": "gpu-operator",
            "pod": "nvidia-dcgm-exporter-7xk2p",
            "container": "nvidia-dcgm-exporter",
            "service": "nvidia-dcgm-exporter",
            "endpoint": "gpu-metrics",
        },
    ),
}
CLUSTER_GROUP = "imaging-platform.cluster"
# What each alert of the cluster group returns against that state: the labels that identify
# each series, and its value where it is exact. The rest of the stand-in's trouble is in
# a namespace without a release ("research") or not the chart's objects.
EXPECTED: dict[str, list[tuple[dict[str, str], float | None]]] = {
    "ImagingTargetDown": [({"namespace": NAMESPACE, "pod": DEAD_POD}, 0)],
    "ImagingComponentDown": [],
    "ImagingTargetsAbsent": [
        (
            {
                "namespace": RETIRED_NAMESPACE,
                "app_kubernetes_io_instance": RELEASE,
                "app_kubernetes_io_component": "triton",
            },
            1,
        )
    ],
    "TritonInferenceMetricsAbsent": [],
    "ImagingDeploymentReplicasBelowDesired": [
        ({"namespace": NAMESPACE, "deployment": "rel-imaging-platform-triton"}, 1)
    ],
    "ImagingAutoscalerAtMaxReplicas": [
        (
            {
                "namespace": NAMESPACE,
                "horizontalpodautoscaler": "keda-hpa-rel-imaging-platform-triton",
            },
            1,
        )
    ],
    # Expired on 2024-01-01: the time left is negative.
    "ImagingCertificateExpiringSoon": [({"namespace": NAMESPACE, "name": "pacs-client-tls"}, None)],
    "ImagingCertificateNotReady": [
        ({"namespace": NAMESPACE, "name": "pacs-client-tls", "condition": "False"}, 1)
    ],
    # 79300 MiB used, 1700 free.
    "TritonGPUMemoryNearFull": [
        ({"namespace": NAMESPACE, "pod": TRITON_POD, "UUID": TRITON_GPU}, 0.979)
    ],
    "TritonGPUXidError": [],
}
# Alerts whose expression is `A unless B`: a set difference with no threshold, which returns
# nothing at all when healthy (there is no `bool` form of it).
SET_DIFFERENCES = {"ImagingTargetsAbsent", "TritonInferenceMetricsAbsent"}
_EXPORTER_BLOCK = re.compile(r"^# exporter: (\S+)\n", re.MULTILINE)


def exporter_blocks(text: str) -> dict[str, str]:
    """The exposition of each exporter in the stand-in's file, by its `# exporter:` line."""
    parts = _EXPORTER_BLOCK.split(text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@contextmanager
def cluster_exporters_stand_in(path: Path) -> Iterator[int]:
    """A stand-in for kube-state-metrics, cert-manager and dcgm-exporter, not those exporters:
    http.server on 127.0.0.1, port 0, in a thread, answering GET /<exporter>/metrics with that
    exporter's block of ``path``, verbatim, until the block ends (and EMPTY_PATH with no series).
    Yields the port."""
    blocks = {
        f"/{name}/metrics": body.encode()
        for name, body in exporter_blocks(path.read_text()).items()
    }
    blocks[EMPTY_PATH] = b""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = blocks.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="cluster-exporters", daemon=True
    )
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _retired_targets(stand_in_port: int) -> list[dict[str, Any]]:
    """The file-based discovery's target groups: the retired Triton pod."""
    labels = {
        "namespace": RETIRED_NAMESPACE,
        "pod": "rel-imaging-platform-triton-5c6d7-fghij",
        **PLATFORM,
        "app_kubernetes_io_component": "triton",
    }
    return [{"targets": [f"127.0.0.1:{stand_in_port}"], "labels": labels}]


def _scrape_config(
    stack: Stack, rules: Path, retired: Path, dead_port: int, stand_in_port: int
) -> dict[str, Any]:
    targets = [
        {
            "targets": [f"127.0.0.1:{stack.ports.metrics[s]}"],
            "labels": {
                "namespace": NAMESPACE,
                "pod": f"rel-imaging-platform-{COMPONENT.get(s, s)}-0",
                **PLATFORM,
                "app_kubernetes_io_component": COMPONENT.get(s, s),
            },
        }
        for s in map(str, SERVICES)
    ]
    targets.append(
        {
            "targets": [f"127.0.0.1:{stack.ports.triton_metrics}"],
            "labels": {
                "namespace": NAMESPACE,
                "pod": TRITON_POD,
                **PLATFORM,
                "app_kubernetes_io_component": "triton",
            },
        }
    )
    targets.append(
        {
            "targets": [f"127.0.0.1:{dead_port}"],
            "labels": {
                "namespace": NAMESPACE,
                "pod": DEAD_POD,
                **PLATFORM,
                "app_kubernetes_io_component": "postprocessor",
            },
        }
    )
    stand_ins = [
        {
            "job_name": job,
            "honor_labels": honor_labels,
            "metrics_path": f"/{exporter}/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{stand_in_port}"], "labels": labels}],
        }
        for exporter, (job, honor_labels, labels) in STAND_IN_JOBS.items()
    ]
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        # honor_labels as in the chart's monitors: the app's own `service` label must win.
        "scrape_configs": [
            {"job_name": "imaging", "honor_labels": True, "static_configs": targets},
            {
                "job_name": "imaging-staging",
                "honor_labels": True,
                "metrics_path": EMPTY_PATH,
                "file_sd_configs": [{"files": [str(retired)]}],
            },
            *stand_ins,
        ],
    }


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return dict(json.loads(reply.read()))


@dataclass
class Prometheus:
    url: str
    targets: int
    retired: Path

    def retire(self) -> None:
        """Discover the retired target no more (the file swapped whole: never read half)."""
        emptied = self.retired.with_suffix(".new")
        emptied.write_text("[]")
        emptied.replace(self.retired)


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    with refused_port() as port:
        yield port


@pytest.fixture(scope="module")
def stand_in_port() -> Iterator[int]:
    with cluster_exporters_stand_in(CLUSTER_EXPORTERS) as port:
        yield port


@pytest.fixture(scope="module")
def prometheus(
    stack: Stack, dead_port: int, stand_in_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `make test` installs the Debian package")
    folder = tmp_path_factory.mktemp("prometheus")
    rules = folder / "rules.yaml"
    shutil.copy(FILES / "prometheus-rules.yaml", rules)
    config_path = folder / "prometheus.yml"
    retired = folder / "retired.json"
    retired.write_text(json.dumps(_retired_targets(stand_in_port)))
    config = _scrape_config(stack, rules, retired, dead_port, stand_in_port)
    config_path.write_text(yaml.safe_dump(config))
    discovered = [
        group for job in config["scrape_configs"] for group in job.get("static_configs", [])
    ]
    discovered += json.loads(retired.read_text())
    targets = sum(len(group["targets"]) for group in discovered)
    log_path = folder / "prometheus.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={folder / 'data'}",
            "--web.listen-address=127.0.0.1:0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def exited() -> None:
            if process.poll() is not None:
                pytest.fail(log_path.read_text()[-2000:])

        def listening() -> int:
            found = LISTENING.search(log_path.read_text(errors="replace"))
            if found is None:
                exited()
                return 0
            return int(found[1])

        if not eventually(listening, 30):
            pytest.fail(f"Prometheus never logged its address: {log_path.read_text()[-2000:]}")
        url = f"http://127.0.0.1:{listening()}"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                    return True
            except OSError:
                exited()
                return False

        if not eventually(ready, 30):
            pytest.fail(log_path.read_text()[-2000:])
        yield Prometheus(url, targets, retired)
    finally:
        process.terminate()
        process.wait(10)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    reply = _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


def _numbers(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


@pytest.fixture(scope="module")
def traffic(prometheus: Prometheus, stack: Stack, gateway: gateway_pb2_grpc.GatewayStub) -> str:
    """Real requests (accepted and refused) between scrapes, so every rate sees them. Once
    every target has been scraped, the retired one is no longer discovered."""
    url = prometheus.url

    def wait_for(promql: str, what: str) -> None:
        if not eventually(lambda: query(url, promql), 60):
            seen = query(url, "imaging_stage_duration_seconds_count[30s]")
            pytest.fail(f"Prometheus: {what} not seen within 60 s; {seen}")

    targets = prometheus.targets
    wait_for(f"count(count_over_time(up[1m]) >= 2) == {targets}", "two scrapes of every target")
    # Prometheus marks the series of a target it no longer discovers stale, but applies
    # discovery updates every 5 seconds: the tests before those that need it gone (`retired`)
    # leave it the time.
    prometheus.retire()
    for value in range(0, 200, 20):  # flat images: out of distribution, INDETERMINATE
        gateway.Analyze(
            gateway_pb2.AnalyzeRequest(instances=[chest_image(np.full((64, 64), value, np.uint8))])
        )
    # Children's radiographs the model decides (the positive-rate rules need decisions), one
    # of them with an SR asked for (the report stage).
    samples = pneumoniamnist_samples(MEDMNIST_DIR / "pneumoniamnist_28_reconstructed.npz")
    for index, (_, dicom) in enumerate(samples):
        options = gateway_pb2.OutputOptions(dicom_sr=index == 0)
        gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[dicom], options=options))
    with pytest.raises(grpc.RpcError):
        gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[b"not dicom"]))
    stages = len(STAGES) + 3  # the gateway's, and one in each inner service
    wait_for(
        f"count(increase(imaging_stage_duration_seconds_count[1m]) > 0) == {stages}",
        "the new requests in every stage of every service",
    )
    wait_for("increase(nv_inference_request_success[1m]) > 0", "Triton's new inferences")
    # The decision counters exist at zero from start-up, so the new decisions are an increase.
    wait_for(
        'increase(imaging_model_decisions_total{status="POSITIVE"}[1m]) > 0',
        "the model decisions",
    )
    wait_for("imaging:stage_duration_seconds:p99_5m >= 0", "the recording rules")
    wait_for("imaging:triton_dcgm_fb_used_mib:max", "the stand-in's GPU series, recorded")
    return url


@pytest.fixture(scope="module")
def retired(traffic: str) -> str:
    """``traffic``, once the retired target's series have gone stale."""
    wait_until(
        lambda: not query(traffic, f'up{{namespace="{RETIRED_NAMESPACE}"}}'),
        30,
        "Prometheus still scrapes the target it no longer discovers",
    )
    return traffic


def _adapter_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((FILES / "adapter-rules.yaml").read_text())["rules"]
    matchers = f'namespace="{NAMESPACE}",pod="{TRITON_POD}"'
    return [
        (
            rule["name"]["as"],
            rule["metricsQuery"]
            .replace("<<.GroupBy>>", "pod")
            .replace("<<.LabelMatchers>>", matchers),
        )
        for rule in rules
    ]


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())[
        "groups"
    ]
    return groups


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _expr(rule: dict[str, Any]) -> str:
    return " ".join(rule["expr"].split())


def test_autoscaling_queries_return_numbers_for_the_triton_pod(traffic: str) -> None:
    for name, promql in _adapter_queries():
        result = query(traffic, promql)
        assert [s["metric"].get("pod") for s in result] == [TRITON_POD], name
        assert all(math.isfinite(v) and v >= 0 for v in _numbers(result)), name


@pytest.mark.parametrize("rule", [r["record"] for r in _rules() if "record" in r])
def test_recording_rules_return_numbers(traffic: str, rule: str) -> None:
    expr = next(r["expr"] for r in _rules() if r.get("record") == rule)
    result = query(traffic, expr)
    if rule in GPU_ONLY:
        assert result == [], "a CPU-only tritonserver exports no GPU metrics"
        return
    assert result, f"{rule} returned no series"
    nan = [s["metric"] for s in result if math.isnan(float(s["value"][1]))]
    assert not nan, f"{rule}: NaN for {nan}"
    # The rule group may be one evaluation behind.
    wait_until(lambda: query(traffic, rule), 10, f"Prometheus did not record {rule}")


_COMPARISON = re.compile(r"\s(>|<|>=|<=|==|!=)\s+([0-9.eE+-]+)\s*$")


def test_alerts_compare_with_a_threshold_or_are_a_set_difference() -> None:
    for rule in _alerts():
        expr = _expr(rule)
        if rule["alert"] in SET_DIFFERENCES:
            assert " unless " in expr and not _COMPARISON.search(expr), rule["alert"]
        else:
            assert _COMPARISON.search(expr), f"{rule['alert']}: expected `<query> <op> <threshold>`"


@pytest.mark.parametrize(
    "index",
    [i for i, r in enumerate(_alerts()) if r["alert"] not in SET_DIFFERENCES],
    ids=lambda i: f"{i}-{_alerts()[i]['alert']}",
)
def test_alert_expressions_evaluate_to_numbers(traffic: str, index: int) -> None:
    """Each alert's exact expression, with `bool` added so non-firing series return 0."""
    rule = _alerts()[index]
    expr = _expr(rule)
    as_bool = _COMPARISON.sub(r" \1 bool \2", expr)
    result = query(traffic, as_bool)
    if any(name in expr for name in GPU_ONLY | INGEST_ONLY):
        assert result == []
        return
    assert result, f"{rule['alert']}: {expr} returned no series"
    assert set(_numbers(result)) <= {0.0, 1.0}
    firing = query(traffic, expr)
    assert all(s["metric"].get("namespace") == NAMESPACE for s in firing)


def test_every_cluster_alert_has_an_expected_outcome() -> None:
    (group,) = [g for g in _groups() if g["name"] == CLUSTER_GROUP]
    assert {r["alert"] for r in group["rules"] if "alert" in r} == set(EXPECTED)
    assert set(EXPECTED) >= SET_DIFFERENCES
    assert [name for name, firing in EXPECTED.items() if firing]
    assert [name for name, firing in EXPECTED.items() if not firing]


def test_stand_in_serves_each_exporter_its_own_block() -> None:
    blocks = exporter_blocks(CLUSTER_EXPORTERS.read_text())
    assert set(blocks) == set(STAND_IN_JOBS)
    prefixes = {
        "kube-state-metrics": "kube_",
        "cert-manager": "certmanager_",
        "dcgm-exporter": "DCGM_",
    }
    for name, body in blocks.items():
        samples = [line for line in body.splitlines() if line and not line.startswith("#")]
        assert samples and all(line.startswith(prefixes[name]) for line in samples), name


def test_exporters_arrive_labelled_as_a_cluster_scrapes_them(traffic: str) -> None:
    """kube-state-metrics with honorLabels: the Deployment's namespace; cert-manager and
    dcgm-exporter without it: the object's namespace (and the GPU's pod) as exported_*."""
    (deployment,) = query(traffic, 'kube_deployment_spec_replicas{deployment="orthanc"}')
    assert deployment["metric"]["namespace"] == NAMESPACE
    (ready,) = query(
        traffic, 'certmanager_certificate_ready_status{name="pacs-client-tls",condition="False"}'
    )
    assert ready["metric"]["namespace"] == "cert-manager"
    assert ready["metric"]["exported_namespace"] == NAMESPACE
    (gpu,) = query(traffic, f'DCGM_FI_DEV_FB_USED{{UUID="{TRITON_GPU}"}}')
    assert (gpu["metric"]["namespace"], gpu["metric"]["pod"]) == (
        "gpu-operator",
        STAND_IN_JOBS["dcgm-exporter"][2]["pod"],
    )
    assert (gpu["metric"]["exported_namespace"], gpu["metric"]["exported_pod"]) == (
        NAMESPACE,
        TRITON_POD,
    )


@pytest.mark.parametrize("alert", sorted(EXPECTED))
def test_cluster_alerts_fire_exactly_where_the_cluster_is_broken(retired: str, alert: str) -> None:
    """The expression (no `bool`: what would fire once its `for` has passed) returns exactly
    the expected series. First its inputs must be there, so that silence means healthy, not
    not-yet-scraped: the `bool` form returns series, or for a set difference, its left side."""
    (rule,) = [r for r in _alerts() if r["alert"] == alert]
    expr = _expr(rule)
    if alert in SET_DIFFERENCES:
        inputs = expr.split(" unless ", 1)[0]
    else:
        inputs = _COMPARISON.sub(r" \1 bool \2", expr)
    wait_until(lambda: query(retired, inputs), 10, f"{alert}: no inputs: {inputs}")
    expected = EXPECTED[alert]
    keys = sorted({key for labels, _ in expected for key in labels} | {"namespace"})
    got = {
        tuple(sample["metric"].get(key, "") for key in keys): round(float(sample["value"][1]), 3)
        for sample in query(retired, expr)
    }
    want = {tuple(labels.get(key, "") for key in keys): value for labels, value in expected}
    assert sorted(got) == sorted(want), f"{alert}: {query(retired, expr)}"
    for identity, value in want.items():
        if value is not None:
            assert got[identity] == value, f"{alert}: {identity} = {got[identity]}, not {value}"
