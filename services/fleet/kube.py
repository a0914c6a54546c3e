"""Thin adapter over the official kubernetes client: the Triton pods of a Helm release.

Pods are listed by the chart's labels (CoreV1) and cross-checked with the EndpointSlices of
the release's Triton Service (discovery.k8s.io/v1), which mark a terminating pod not ready
before its own Ready condition flips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from services.fleet.core import GRPC_PORT_NAME, PodInfo, Target, select_targets
from services.fleet.errors import ClusterUnavailable

CHART = "imaging-platform"
TRITON_COMPONENT = "triton"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = 30.0


def pod_labels(release: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": release, "app.kubernetes.io/component": TRITON_COMPONENT}


def service_name(release: str) -> str:
    """The chart's Triton Service, ``<fullname>-triton``, named as the chart's helpers do.

    fullname is ``<release>-<chart>`` cut to 40 characters. With a fullnameOverride the name
    differs; then no EndpointSlice matches and pods are judged by their Ready condition alone.
    """
    fullname = f"{release}-{CHART}"[:40].removesuffix("-")
    return f"{fullname}-{TRITON_COMPONENT}"[:63].removesuffix("-")


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def connect(context: str | None = None) -> tuple[client.ApiClient, str]:
    """An API client and its default namespace: in-cluster when run in a pod, else kubeconfig."""
    configuration = client.Configuration()
    # kubernetes.config is not annotated (the generated client is), hence the ignores.
    try:
        if "KUBERNETES_SERVICE_HOST" in os.environ:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        else:
            # The library reads KUBECONFIG once at import; read it now, as kubectl would.
            kubeconfig = os.environ.get("KUBECONFIG", "~/.kube/config")
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
            contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                kubeconfig
            )
            chosen = next((c for c in contexts if c["name"] == context), active)
            namespace = chosen.get("context", {}).get("namespace") or "default"
    except (ConfigException, OSError) as err:
        raise ClusterUnavailable(f"no usable Kubernetes configuration: {err}") from err
    return client.ApiClient(configuration), namespace


def _api_error(what: str, err: Exception) -> ClusterUnavailable:
    if isinstance(err, ApiException):
        try:  # the API's Status message says who may not do what, which RBAC needs to know
            message = str(json.loads(err.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            message = ""
        answer = f"{err.status} {err.reason}" + (f": {message}" if message else "")
        return ClusterUnavailable(f"{what}: Kubernetes API answered {answer}")
    return ClusterUnavailable(f"{what}: Kubernetes API unreachable ({err})")


def _labels(metadata: client.V1ObjectMeta | None) -> dict[str, str]:
    return dict(metadata.labels or {}) if metadata else {}


_CONTROL_FLAG = "--model-control-mode="


def _pod_info(pod: client.V1Pod) -> PodInfo:
    metadata = pod.metadata or client.V1ObjectMeta()
    status = pod.status or client.V1PodStatus()
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    port = None
    model_control = None
    for container in pod.spec.containers if pod.spec else []:
        for declared in container.ports or []:
            if declared.name == GRPC_PORT_NAME:
                port = declared.container_port
                words = [*(container.command or []), *(container.args or [])]
                modes = [w.split("=", 1)[1] for w in words if w.startswith(_CONTROL_FLAG)]
                model_control = modes[-1] if modes else "none"  # Triton's default
    return PodInfo(
        name=metadata.name or "",
        ip=status.pod_ip,
        ready=ready,
        terminating=metadata.deletion_timestamp is not None,
        grpc_port=port,
        model_control=model_control,
    )


class Cluster:
    """Reads the release's Triton pods; never writes to the cluster."""

    def __init__(self, api: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api)
        self._discovery = client.DiscoveryV1Api(api)

    def triton_pods(self, namespace: str, release: str) -> list[PodInfo]:
        labels = pod_labels(release)
        try:
            listed = self._core.list_namespaced_pod(
                namespace, label_selector=selector(labels), _request_timeout=REQUEST_TIMEOUT
            )
        except (ApiException, urllib3.exceptions.HTTPError) as err:
            raise _api_error(f"listing pods in namespace {namespace}", err) from err
        # The server filters by the selector; checking again costs nothing and keeps a proxy
        # that drops the query string from widening the rollout to foreign pods.
        return [
            _pod_info(pod)
            for pod in listed.items
            if all(_labels(pod.metadata).get(k) == v for k, v in labels.items())
        ]

    def endpoints_ready(self, namespace: str, release: str) -> dict[str, bool]:
        """Pod name -> ready, as the Service's EndpointSlices say; {} when they can't be read.

        A pod in several slices (dual stack) is ready only if every slice says so; an unset
        condition means ready, as the API documents. Lacking RBAC for EndpointSlices only
        loses this cross-check, so 403/404 are not errors.
        """
        labels = {"kubernetes.io/service-name": service_name(release)}
        try:
            listed = self._discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=selector(labels), _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status in (403, 404):
                return {}
            raise _api_error(f"listing EndpointSlices in namespace {namespace}", err) from err
        except urllib3.exceptions.HTTPError as err:
            raise _api_error(f"listing EndpointSlices in namespace {namespace}", err) from err
        ready: dict[str, bool] = {}
        for endpoint_slice in listed.items:
            if not all(_labels(endpoint_slice.metadata).get(k) == v for k, v in labels.items()):
                continue
            for endpoint in endpoint_slice.endpoints or []:
                ref = endpoint.target_ref
                if ref is None or ref.kind != "Pod" or not ref.name:
                    continue
                conditions = endpoint.conditions
                is_ready = conditions is None or (
                    conditions.ready is not False and conditions.terminating is not True
                )
                ready[ref.name] = ready.get(ref.name, True) and is_ready
        return ready

    def targets(self, namespace: str, release: str, default_port: int) -> list[Target]:
        where = (
            f"for release {release} in namespace {namespace} "
            f"(label selector {selector(pod_labels(release))})"
        )
        return select_targets(
            self.triton_pods(namespace, release),
            self.endpoints_ready(namespace, release),
            default_port,
            where,
        )
