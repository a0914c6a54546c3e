"""Fixtures of the fleet tests: two real tritonservers and an emulated Kubernetes API.

A plugin the test modules name in ``pytest_plugins`` rather than a conftest.py: other test
folders import tests/conftest.py as ``conftest``, which a second conftest.py would shadow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_kube import KubeApi
from fleet_tritons import LocalTriton, start_tritonservers, write_source_repository


@pytest.fixture(scope="module")
def fleet_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalTriton]]:
    """Two explicit-mode tritonservers, "triton-a" and "triton-b", started in parallel."""
    source = write_source_repository(tmp_path_factory.mktemp("fleet-source"))
    names = ("triton-a", "triton-b")
    servers = start_tritonservers({n: tmp_path_factory.mktemp(n) for n in names}, source)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def fleet(fleet_servers: list[LocalTriton]) -> list[LocalTriton]:
    """The two servers back on the repository's state (v1 loaded) before each test."""
    for server in fleet_servers:
        server.reset()
    return fleet_servers


@pytest.fixture
def kube_api() -> Iterator[KubeApi]:
    with KubeApi() as api:
        yield api


@pytest.fixture
def kube_env(kube_api: KubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KUBECONFIG pointing at the emulator, as a user's would point at a cluster."""
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path
