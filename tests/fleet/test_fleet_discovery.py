"""Finding the release's Triton pods through the official kubernetes client.

No kube-apiserver can run here: kmock's in-memory Kubernetes API emulator serves the Pod and
EndpointSlice objects over HTTP, and the client reaches it through a kubeconfig or a
Configuration pointing at it. No tritonserver is involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_kube import (
    ENDPOINT_SLICES,
    NAMESPACE,
    PODS,
    RELEASE,
    KubeApi,
    endpoint_slice,
    triton_pod,
)
from kubernetes import client

from services.cli.main import main
from services.fleet.core import Target
from services.fleet.kube import Cluster, connect

pytest_plugins = ("fleet_fixtures",)


def _cluster(kube_api: KubeApi) -> Cluster:
    return Cluster(client.ApiClient(client.Configuration(host=kube_api.url)))


def test_pods_are_found_by_labels_and_cross_checked_with_endpoint_slices(kube_api: KubeApi) -> None:
    """Objects served by the kmock API emulator, which ignores labelSelector (we re-check)."""
    kube_api.add(triton_pod("triton-a", 9001))
    kube_api.add(triton_pod("triton-b", 9002))  # Ready, but its endpoint says otherwise
    kube_api.add(triton_pod("triton-c", 9003, ready=False))
    kube_api.add(triton_pod("triton-d", 9004, terminating=True))
    kube_api.add(triton_pod("other-triton", 9005, release="other"))
    kube_api.add(triton_pod("gateway-0", 9006, component="gateway"))
    kube_api.add(endpoint_slice("demo-triton-1", {"triton-a": True, "triton-b": False}))
    kube_api.add(endpoint_slice("other-1", {"triton-a": False}, service="other-service"))

    targets = _cluster(kube_api).targets(NAMESPACE, RELEASE, default_port=8001)

    assert targets == [
        Target("triton-a", "127.0.0.1:9001"),
        Target("triton-b", "127.0.0.1:9002", "endpoint not ready"),
        Target("triton-c", "127.0.0.1:9003", "not ready"),
        Target("triton-d", "127.0.0.1:9004", "terminating"),
    ]
    pods_query = {
        "labelSelector": "app.kubernetes.io/instance=demo,app.kubernetes.io/component=triton"
    }
    slices_query = {"labelSelector": "kubernetes.io/service-name=demo-imaging-platform-triton"}
    assert kube_api.requests(PODS) == [(f"/api/v1/namespaces/{NAMESPACE}/pods", pods_query)]
    assert kube_api.requests(ENDPOINT_SLICES) == [
        (f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices", slices_query)
    ]


def test_forbidden_endpoint_slices_leave_pod_readiness_to_decide(kube_api: KubeApi) -> None:
    """Pods from the kmock API emulator; EndpointSlices answer 403 as without RBAC for them."""
    kube_api.add(triton_pod("triton-a", 9001))
    kube_api.add(endpoint_slice("demo-triton-1", {"triton-a": False}))  # hidden by the 403
    kube_api.reply(f"get /apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices", 403)

    targets = _cluster(kube_api).targets(NAMESPACE, RELEASE, default_port=8001)

    assert targets == [Target("triton-a", "127.0.0.1:9001")]


def test_kubeconfig_context_gives_the_default_namespace(kube_api: KubeApi, kube_env: Path) -> None:
    """The kubeconfig points at the kmock API emulator; its context names the namespace."""
    api, namespace = connect()
    with api:
        assert namespace == NAMESPACE
        assert api.configuration.host == kube_api.url


def test_no_ready_pod_fails_the_command_with_the_reasons(
    kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pods from the kmock API emulator: one not ready, one terminating, none to roll out to."""
    kube_api.add(triton_pod("triton-a", 9001, ready=False))
    kube_api.add(triton_pod("triton-b", 9002, terminating=True))

    assert main(["models", "rollout", "m", "--release", RELEASE]) == 1

    err = capsys.readouterr().err
    assert "no ready Triton pod for release demo in namespace imaging" in err
    assert "triton-a (not ready), triton-b (terminating)" in err


def test_a_release_without_pods_fails_the_command(
    kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kmock API emulator serves no pod of release "missing"."""
    kube_api.add(triton_pod("triton-a", 9001))

    assert main(["models", "rollout", "m", "--release", "missing"]) == 1

    assert "no Triton pod found for release missing" in capsys.readouterr().err


def test_an_unreachable_cluster_fails_the_command_readably(
    kube_api: KubeApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A kubeconfig naming a closed port instead of the kmock API emulator."""
    config = kube_api.write_kubeconfig(tmp_path / "kubeconfig").read_text()
    (tmp_path / "kubeconfig").write_text(config.replace(kube_api.url, "http://127.0.0.1:1"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    assert main(["models", "rollout", "m"]) == 1

    err = capsys.readouterr().err
    assert "listing pods in namespace imaging: Kubernetes API unreachable" in err


def test_a_refused_pod_listing_says_what_the_api_said(
    kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kmock API emulator answers the pod listing with a 403 Status, as RBAC would."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Forbidden",
        "code": 403,
        "message": 'pods is forbidden: User "ci" cannot list resource "pods"',
    }
    kube_api.reply(f"get /api/v1/namespaces/{NAMESPACE}/pods", 403, status)

    assert main(["models", "rollout", "m", "--release", RELEASE]) == 1

    err = capsys.readouterr().err
    assert "listing pods in namespace imaging: Kubernetes API answered 403 Forbidden" in err
    assert 'User "ci" cannot list resource "pods"' in err
