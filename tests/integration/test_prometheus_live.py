"""The chart's PromQL, evaluated by a real Prometheus scraping the real local stack.

Prometheus (Debian package) scrapes the four services and tritonserver every second, with the
`namespace` and `pod` target labels prometheus-operator would attach, and loads the chart's
rule file. After real traffic, every autoscaling query (prometheus-adapter rules, which KEDA
reuses), every recording rule and every alert expression must return numbers. The one
exception is GPU utilisation: the local tritonserver runs on the CPU and exports no
nv_gpu_* series, so that query is checked to be valid and empty.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from conftest import MEDMNIST_DIR, REPO_ROOT
from synthetic import chest_image
from waiting import eventually, wait_until

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.samples import pneumoniamnist_samples
from services.cli.stack import SERVICES, Stack
from services.gateway.core import STAGES

pytestmark = pytest.mark.integration
FILES = REPO_ROOT / "helm" / "imaging-platform" / "files"
NAMESPACE = "imaging"
TRITON_POD = "rel-imaging-platform-triton-7d9f8-abcde"
GPU_ONLY = {"imaging:triton_gpu_utilization:avg5m"}
# Series of the ingest's exporter: this stack runs no ingest (promtool's unit tests in
# tests/helm/promtool/exports-test.yaml evaluate those alerts on synthetic series).
INGEST_ONLY = {"imaging_ingest_export_oldest_seconds", "imaging_ingest_exports_total"}
# Prometheus binds port 0 (--web.listen-address) and logs the address it got.
LISTENING = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')


def _scrape_config(stack: Stack, rules: Path) -> dict[str, Any]:
    targets = [
        {
            "targets": [f"127.0.0.1:{stack.ports.metrics[s]}"],
            "labels": {"namespace": NAMESPACE, "pod": f"rel-imaging-platform-{s}-0"},
        }
        for s in SERVICES
    ]
    targets.append(
        {
            "targets": [f"127.0.0.1:{stack.ports.triton_metrics}"],
            "labels": {"namespace": NAMESPACE, "pod": TRITON_POD},
        }
    )
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        # honor_labels as in the chart's monitors: the app's own `service` label must win.
        "scrape_configs": [
            {"job_name": "imaging", "honor_labels": True, "static_configs": targets}
        ],
    }


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return dict(json.loads(reply.read()))


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `make test` installs the Debian package")
    folder = tmp_path_factory.mktemp("prometheus")
    rules = folder / "rules.yaml"
    shutil.copy(FILES / "prometheus-rules.yaml", rules)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(_scrape_config(stack, rules)))
    log_path = folder / "prometheus.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
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
        yield url
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
def traffic(prometheus: str, stack: Stack, gateway: gateway_pb2_grpc.GatewayStub) -> str:
    """Real requests (accepted and refused) between scrapes, so every rate sees them."""

    def wait_for(promql: str, what: str) -> None:
        if not eventually(lambda: query(prometheus, promql), 60):
            seen = query(prometheus, "imaging_stage_duration_seconds_count[30s]")
            pytest.fail(f"Prometheus: {what} not seen within 60 s; {seen}")

    targets = len(SERVICES) + 1
    wait_for(f"count(count_over_time(up[1m]) >= 2) == {targets}", "two scrapes of every target")
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
    return prometheus


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


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


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


@pytest.mark.parametrize("index", range(sum(1 for r in _rules() if "alert" in r)))
def test_alert_expressions_evaluate_to_numbers(traffic: str, index: int) -> None:
    """Each alert's exact expression, with `bool` added so non-firing series return 0."""
    rule = [r for r in _rules() if "alert" in r][index]
    expr = " ".join(rule["expr"].split())
    assert _COMPARISON.search(expr), f"{rule['alert']}: expected `<query> <op> <threshold>`"
    as_bool = _COMPARISON.sub(r" \1 bool \2", expr)
    result = query(traffic, as_bool)
    if any(name in expr for name in GPU_ONLY | INGEST_ONLY):
        assert result == []
        return
    assert result, f"{rule['alert']}: {expr} returned no series"
    assert set(_numbers(result)) <= {0.0, 1.0}
    firing = query(traffic, expr)
    assert all(s["metric"].get("namespace") == NAMESPACE for s in firing)
