"""`imaging-platform models rollout` end to end: two real tritonservers, an emulated cluster.

Every test runs the CLI against two local explicit-mode tritonservers standing in for the
Triton pods; the Pods and EndpointSlices describing them are served by kmock's in-memory
Kubernetes API emulator (no kube-apiserver can run here), reached through a kubeconfig.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fleet_kube import (
    NAMESPACE,
    PODS,
    RELEASE,
    KubeApi,
    endpoint_slice,
    triton_pod,
)
from fleet_tritons import MODEL, LocalTriton
from kubernetes import client
from waiting import wait_until

from services.cli.main import main
from services.fleet import journal
from services.fleet.kube import pod_labels, selector

pytest_plugins = ("fleet_fixtures",)


def _publish(kube_api: KubeApi, fleet: list[LocalTriton], ready: dict[str, bool]) -> None:
    """The two servers as Triton pods of the release, plus a pod that must be left alone."""
    for server in fleet:
        kube_api.add(triton_pod(server.name, server.grpc_port, ready=ready[server.name]))
    kube_api.add(endpoint_slice(f"{RELEASE}-triton-x1", ready))
    # Same release, another component: its port is a Triton's, so touching it would show.
    kube_api.add(triton_pod("gateway-0", fleet[0].grpc_port, component="gateway"))


def _rollout(fleet: list[LocalTriton], *extra: str) -> int:
    """`models rollout` of the fleet's model, its golden answers in the source repository."""
    golden_dir = str(fleet[0].source)
    command = ["models", "rollout", MODEL, "--release", RELEASE, "--timeout", "60"]
    return main([*command, "--golden-dir", golden_dir, *extra])


def test_rollout_serves_the_new_version_on_every_pod(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pods and EndpointSlices come from the kmock API emulator: both pods end on v2."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})

    assert _rollout(fleet, "--version", "2") == 0

    out = capsys.readouterr().out
    for server in fleet:
        assert server.ready_versions() == [1, 2], server.name  # beside v1, never instead
        assert server.infer_offset() == 2.0, server.name
        assert server.infer_offset("1") == 1.0, server.name
        row = next(line for line in out.splitlines() if line.startswith(server.name))
        assert server.address in row and "load v2" in row and "READY v1,v2" in row
    assert "gateway-0" not in out
    assert f"{MODEL} v2 is READY on 2 pod(s)" in out
    # Namespace from the kubeconfig context; pods found by the chart's labels.
    query = {"labelSelector": selector(pod_labels(RELEASE))}
    assert (f"/api/v1/namespaces/{NAMESPACE}/pods", query) in kube_api.requests(PODS)


def test_live_traffic_on_the_pinned_version_never_fails_during_a_rollout(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path
) -> None:
    """Eight clients call v1 (the version a pipeline pins) on both pods while v2 rolls out:
    not one call fails, because v2 is loaded beside v1 (it once replaced it)."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    stop = threading.Event()
    outcomes: list[str] = []

    def client(server: LocalTriton) -> None:
        while not stop.is_set():
            try:
                outcomes.append("v1" if server.infer_offset("1") == 1.0 else "other")
            except Exception as err:  # any failure of the pinned version counts
                outcomes.append(f"{type(err).__name__}: {str(err)[:80]}")

    threads = [threading.Thread(target=client, args=(fleet[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        assert _rollout(fleet, "--version", "2") == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert len(outcomes) > 8 and set(outcomes) == {"v1"}, sorted(set(outcomes))[:5]


def test_failed_load_rolls_every_pod_back(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pods come from the kmock API emulator; triton-b's version 2 is not a valid model.

    triton-a is loaded first and gets v2, triton-b refuses it: both must end on v1 again and
    the command must fail saying where and why.
    """
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    fleet[1].break_version(2)

    assert _rollout(fleet, "--version", "2", "--namespace", NAMESPACE) == 1

    captured = capsys.readouterr()
    for server in fleet:
        assert server.ready_versions() == [1], server.name
        assert server.infer_offset() == 1.0, server.name
    assert "stopped at pod triton-b" in captured.err
    assert "Rolled back 2 pod(s) to their previous versions" in captured.err
    rows = [line for line in captured.out.splitlines() if line.startswith("triton-")]
    assert [r.split()[0] for r in rows] == ["triton-a", "triton-b", "triton-b", "triton-a"]
    assert "READY v1,v2" in rows[0]
    assert "FAILED" in rows[1]
    assert "rollback to v1" in rows[2] and "unchanged: still v1" in rows[2]
    assert "rollback to v1" in rows[3] and "READY v1" in rows[3]


def test_pod_not_ready_in_the_api_is_skipped(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pods come from the kmock API emulator, which reports triton-b not Ready: only a loads."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": False})

    assert _rollout(fleet, "--version", "2") == 0

    out = capsys.readouterr().out
    assert fleet[0].ready_versions() == [1, 2]
    assert fleet[1].ready_versions() == [1]
    skipped = next(line for line in out.splitlines() if line.startswith("triton-b"))
    assert "skip" in skipped and "not ready" in skipped
    assert "1 skipped (triton-b: not ready)" in out


def test_rollback_unloads_where_the_model_was_not_loaded(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pods come from the kmock API emulator; triton-a does not serve the model at first.

    triton-a gets v2 pinned on the config triton-b serves; when triton-b fails, triton-a is
    unloaded again rather than left serving something it did not serve before.
    """
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    fleet[0].reset(loaded=False)
    fleet[1].break_version(2)

    assert _rollout(fleet, "--version", "2") == 1

    out = capsys.readouterr().out
    assert fleet[0].ready_versions() == []
    assert fleet[1].ready_versions() == [1]
    last = [line for line in out.splitlines() if line.startswith("triton-a")][-1]
    assert "unload" in last and "unloaded" in last


def test_unreachable_pod_stops_the_rollout_before_any_change(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pods come from the kmock API emulator; a third Ready pod points at a closed port."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    kube_api.add(triton_pod("triton-c", port=1))

    assert _rollout(fleet, "--version", "2") == 1

    captured = capsys.readouterr()
    for server in fleet:
        assert server.ready_versions() == [1], server.name
    assert "stopped at pod triton-c (127.0.0.1:1)" in captured.err
    assert "unreachable" in captured.err and "Nothing was changed" in captured.err


def test_a_model_missing_from_the_repositories_changes_nothing(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pods come from the kmock API emulator; the servers' repositories lack the model."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})

    assert main(["models", "rollout", "no_such_model", "--release", RELEASE]) == 1

    assert "no_such_model is not in this pod's model repository" in capsys.readouterr().err
    for server in fleet:
        assert server.ready_versions() == [1], server.name


def test_retire_unloads_one_version_everywhere_and_refuses_a_pinned_one(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After v2 is rolled out beside v1, `models retire` takes v1 away on both pods; a
    version a shipped pipeline pins (cxr_pneumonia v2) is refused before any pod is touched."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    assert _rollout(fleet, "--version", "2") == 0
    retire = ["models", "retire", MODEL, "1", "--release", RELEASE, "--timeout", "60"]
    assert main(retire) == 0
    out = capsys.readouterr().out
    for server in fleet:
        assert server.ready_versions() == [2], server.name
    assert f"{MODEL} v1 is retired on 2 pod(s)" in out
    requests_before = len(kube_api.requests(PODS))
    assert main(["models", "retire", "cxr_pneumonia", "2", "--release", RELEASE]) == 1
    err = capsys.readouterr().err
    assert "pipeline(s) cxr_pneumonia ask Triton for" in err
    assert len(kube_api.requests(PODS)) == requests_before  # refused before the cluster


def test_without_explicit_model_control_the_rollout_stops_before_touching_a_pod(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chart's default (triton.modelControlMode: none) refuses every load deep inside a
    rollout; the pod spec says so, and the tool stops at once naming the value to change."""
    for server in fleet:
        kube_api.add(triton_pod(server.name, server.grpc_port, model_control="none"))
    kube_api.add(endpoint_slice(f"{RELEASE}-triton-x1", {"triton-a": True, "triton-b": True}))

    assert _rollout(fleet, "--version", "2") == 1

    err = capsys.readouterr().err
    assert "triton.modelControlMode=explicit" in err and "triton-a, triton-b" in err
    for server in fleet:
        assert server.ready_versions() == [1], server.name


def test_a_version_whose_golden_answer_differs_is_rolled_back_on_the_first_pod(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """triton-a's v2 is a deliberately shifted copy (it loads and is READY, and answers
    x + 2.5): the golden check fails on that first pod, it goes back to v1, and triton-b is
    never touched."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    fleet[0].shift_version(2, by=0.5)

    assert _rollout(fleet, "--version", "2") == 1

    captured = capsys.readouterr()
    assert "golden check: output 'y' differs from the golden answer by up to 0.5" in captured.err
    for server in fleet:
        assert server.ready_versions() == [1], server.name
    rows = [line for line in captured.out.splitlines() if line.startswith("triton-")]
    assert [r.split()[0] for r in rows] == ["triton-a", "triton-b", "triton-a"]
    assert "not attempted" in rows[1] and "READY v1" in rows[2]


def test_a_version_without_a_golden_answer_is_not_rolled_out(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    assert _rollout(fleet, "--version", "3") == 1
    assert "v3 has no golden answer" in capsys.readouterr().err
    assert not kube_api.requests(PODS)  # refused before the cluster was asked anything


def _api(kube_api: KubeApi) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = kube_api.url
    return client.ApiClient(configuration)


def test_a_second_rollout_is_refused_by_the_lease_naming_its_holder(
    fleet: list[LocalTriton], kube_api: KubeApi, kube_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another rollout (a Job's pod) holds the release's Lease: this one changes nothing."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    other = journal.FleetLock(_api(kube_api), NAMESPACE, RELEASE, lease_seconds=600)
    other.holder = "rollout-job-7f9c/1"
    other.acquire()

    assert _rollout(fleet, "--version", "2") == 1

    err = capsys.readouterr().err
    assert "another model rollout holds Lease demo-model-rollout: rollout-job-7f9c/1" in err
    for server in fleet:
        assert server.ready_versions() == [1], server.name
    other.release()
    assert _rollout(fleet, "--version", "2") == 0  # free again


@pytest.mark.parametrize("steps", [2, 3, 4], ids=["after-a-started", "after-a-loaded", "after-b"])
def test_a_rollout_killed_between_steps_is_undone_by_the_next_run(
    steps: int,
    fleet: list[LocalTriton],
    kube_api: KubeApi,
    kube_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGTERM (turned into KeyboardInterrupt, as the tool's handler does) right after the
    ``steps``-th recorded step: the plan stays in the ConfigMap, and the next run first puts
    every touched pod back, then rolls out. Every pod ends on the old set or the new one."""
    _publish(kube_api, fleet, {"triton-a": True, "triton-b": True})
    record = journal.FleetLock.record
    calls = [0]

    def killed_after(lock: journal.FleetLock, plan: dict[str, object]) -> None:
        record(lock, plan)
        calls[0] += 1
        if calls[0] == steps:
            raise KeyboardInterrupt  # what SIGTERM becomes in the tool

    monkeypatch.setattr(journal.FleetLock, "record", killed_after)
    with pytest.raises(KeyboardInterrupt):
        _rollout(fleet, "--version", "2")
    lock = journal.FleetLock(_api(kube_api), NAMESPACE, RELEASE, lease_seconds=60)
    left = lock.recorded()
    assert left is not None and left["model"] == MODEL  # the record outlived the process
    sets = [server.ready_versions() for server in fleet]
    assert all(s in ([1], [1, 2]) for s in sets), sets

    monkeypatch.setattr(journal.FleetLock, "record", record)
    capsys.readouterr()
    assert _rollout(fleet, "--version", "2") == 0
    out = capsys.readouterr().out
    assert "an interrupted run left fleet_tiny half changed" in out
    for server in fleet:
        assert server.ready_versions() == [1, 2], server.name
    assert lock.recorded() is None  # finished: nothing left to undo


def test_sigterm_becomes_an_interrupt_while_the_tool_runs() -> None:
    import os
    import signal

    from services.fleet.rollout import _sigterm_interrupts

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), _sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        # Not reached: the handler raises as soon as the signal arrives.
        wait_until(lambda: False, 10, "SIGTERM did not interrupt")
    assert signal.getsignal(signal.SIGTERM) == before  # restored afterwards
