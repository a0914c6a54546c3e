"""One model change at a time, and a record of it that outlives the process doing it.

A Kubernetes Lease (coordination.k8s.io/v1) makes rollouts exclusive: two at once would
interleave their loads (and Triton double-loads on concurrent load calls,
triton-inference-server/server#7018). A ConfigMap holds the plan and progress: what each pod
served before, and which pods a load was sent to. A rollout killed between two steps
(SIGTERM from a Job's deadline or an eviction, a crash) leaves it behind, and the next run
first puts every touched pod back on what it served, so the fleet is never left half changed.

Acquiring is a create: the API server refuses a second one (409), which is the exclusion. A
Lease whose holder stopped renewing for its whole duration is taken over (delete, create).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.fleet.errors import ClusterUnavailable, RolloutLocked


def object_name(release: str) -> str:
    """The Lease's and the ConfigMap's name (the chart's RBAC grants exactly these)."""
    return f"{release}-model-rollout"[:63].rstrip("-")


def holder_identity() -> str:
    """Who holds the Lease: the pod (the Job's) or the workstation, and the process."""
    return f"{socket.gethostname()}/{os.getpid()}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _failed(what: str, err: ApiException) -> ClusterUnavailable:
    return ClusterUnavailable(f"{what}: the Kubernetes API answered {err.status} {err.reason}")


class FleetLock:
    """The Lease and the journal ConfigMap of one release."""

    def __init__(
        self, api: client.ApiClient, namespace: str, release: str, lease_seconds: int
    ) -> None:
        self._coordination = client.CoordinationV1Api(api)
        self._core = client.CoreV1Api(api)
        self._namespace, self._name = namespace, object_name(release)
        self._seconds = lease_seconds
        self.holder = holder_identity()

    def _lease(self) -> client.V1Lease:
        now = _now()
        return client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._name, namespace=self._namespace),
            spec=client.V1LeaseSpec(
                holder_identity=self.holder,
                lease_duration_seconds=self._seconds,
                acquire_time=now,
                renew_time=now,
            ),
        )

    def acquire(self) -> None:
        """Hold the Lease, or raise RolloutLocked naming who does."""
        for _ in range(2):
            try:
                self._coordination.create_namespaced_lease(self._namespace, self._lease())
                return
            except ApiException as err:
                if err.status != 409:
                    raise _failed("taking the rollout Lease", err) from err
            current = self._coordination.read_namespaced_lease(self._name, self._namespace)
            spec = current.spec or client.V1LeaseSpec()
            renewed = spec.renew_time or spec.acquire_time
            duration = datetime.timedelta(seconds=spec.lease_duration_seconds or 0)
            if renewed is not None and renewed + duration > _now():
                raise RolloutLocked(
                    f"another model rollout holds Lease {self._name}: {spec.holder_identity} "
                    f"(renewed {renewed:%Y-%m-%d %H:%M:%S} UTC, for {duration.seconds} s); "
                    "wait for it to finish or for the Lease to expire"
                )
            try:  # expired: its holder died without a word; take it over
                self._coordination.delete_namespaced_lease(self._name, self._namespace)
            except ApiException as err:
                if err.status != 404:
                    raise _failed("taking over an expired rollout Lease", err) from err
        raise RolloutLocked(f"Lease {self._name} was taken by another rollout meanwhile")

    def renew(self) -> None:
        body = {"spec": {"renewTime": _now().isoformat()}}
        try:
            self._coordination.patch_namespaced_lease(self._name, self._namespace, body)
        except ApiException as err:
            raise _failed("renewing the rollout Lease", err) from err

    def release(self) -> None:
        try:
            self._coordination.delete_namespaced_lease(self._name, self._namespace)
        except ApiException as err:
            if err.status != 404:
                raise _failed("releasing the rollout Lease", err) from err

    def record(self, plan: dict[str, Any]) -> None:
        """Write the plan and progress (and renew the Lease: the holder is alive)."""
        data = {"plan": json.dumps(plan, sort_keys=True)}
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=self._name, namespace=self._namespace), data=data
        )
        try:
            self._core.patch_namespaced_config_map(self._name, self._namespace, {"data": data})
        except ApiException as err:
            if err.status != 404:
                raise _failed("recording the rollout", err) from err
            try:
                self._core.create_namespaced_config_map(self._namespace, body)
            except ApiException as created:
                raise _failed("recording the rollout", created) from created
        self.renew()

    def recorded(self) -> dict[str, Any] | None:
        """The plan an interrupted run left, None when the last one finished."""
        try:
            found = self._core.read_namespaced_config_map(self._name, self._namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _failed("reading the rollout record", err) from err
        text = (found.data or {}).get("plan")
        return json.loads(text) if text else None

    def clear(self) -> None:
        try:
            self._core.delete_namespaced_config_map(self._name, self._namespace)
        except ApiException as err:
            if err.status != 404:
                raise _failed("clearing the rollout record", err) from err
