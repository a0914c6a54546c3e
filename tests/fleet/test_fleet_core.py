"""The rollout's decisions and its driver, without servers: Triton pods are in-memory fakes."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes import client

from services.fleet.core import (
    LoadKind,
    ModelState,
    PodInfo,
    ProgressTable,
    RollbackKind,
    Rollout,
    Row,
    Status,
    Target,
    alongside,
    plan_load,
    plan_rollback,
    select_targets,
    with_versions,
)
from services.fleet.errors import (
    ModelControlOff,
    NoReadyPods,
    NoTritonPods,
    PodCallFailed,
    RollbackIncomplete,
    RolloutFailed,
)
from services.fleet.kube import _pod_info, service_name
from services.fleet.rollout import execute, roll_out

MODEL = "m"
REPOSITORY_CONFIG: dict[str, Any] = {
    "name": MODEL,
    "version_policy": {"specific": {"versions": [1]}},
}


class FakePod:
    """A Triton server in memory: which versions are READY, which config serves them."""

    def __init__(
        self,
        address: str,
        versions: tuple[int, ...] = (1,),
        loadable: frozenset[int] = frozenset({1, 2}),
        unreachable: bool = False,
        loads_before_breaking: int | None = None,
        known: bool = True,
    ) -> None:
        self.address = address
        self.versions = versions
        self.config: Mapping[str, Any] | None = REPOSITORY_CONFIG if versions else None
        self.loadable = loadable
        self.unreachable = unreachable
        self.loads_left = loads_before_breaking
        self.known = known
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def state(self, model: str) -> ModelState:
        if self.unreachable:
            raise PodCallFailed("reading the index", self.address, "unreachable (refused)")
        return ModelState(self.versions, self.config if self.versions else None, {}, self.known)

    def load(self, model: str, config: Mapping[str, Any] | None, timeout: float) -> None:
        self.calls.append(("load", config))
        if self.loads_left is not None:
            if self.loads_left == 0:
                raise PodCallFailed(f"loading {model}", self.address, "connection reset")
            self.loads_left -= 1
        effective = config if config is not None else REPOSITORY_CONFIG
        wanted = tuple(effective["version_policy"]["specific"]["versions"])
        broken = [v for v in wanted if v not in self.loadable]
        if broken:  # like Triton: the failed load leaves the old versions serving
            raise PodCallFailed(f"loading {model}", self.address, f"version {broken[0]} broken")
        self.versions, self.config = wanted, effective

    def unload(self, model: str) -> None:
        self.calls.append(("unload", None))
        self.versions, self.config = (), None

    def wait_ready(self, model: str, versions: tuple[int, ...], timeout: float) -> ModelState:
        if not set(versions or self.versions[:1] or {0}) <= set(self.versions):
            raise PodCallFailed("waiting", self.address, "not READY after 1 s")
        return self.state(model)

    def wait_unloaded(self, model: str, timeout: float) -> None:
        assert not self.versions

    def close(self) -> None:
        self.closed = True


def _fleet(*pods: FakePod) -> tuple[list[Target], dict[str, FakePod]]:
    targets = [Target(f"triton-{i}", pod.address) for i, pod in enumerate(pods)]
    return targets, {pod.address: pod for pod in pods}


def _run(
    targets: list[Target], pods: dict[str, FakePod], version: int | None = 2
) -> tuple[Rollout, list[Row]]:
    rows: list[Row] = []
    rollout = Rollout(MODEL, version, targets)
    try:
        execute(rollout, pods.__getitem__, rows.append, timeout=5)
    finally:
        assert all(p.closed for p in pods.values())  # every connected pod, even on failure
    return rollout, rows


# --- discovery -------------------------------------------------------------------------------


def test_targets_skip_pods_that_are_not_ready_and_use_their_grpc_port() -> None:
    pods = [
        PodInfo("d", "10.0.0.4", ready=True, terminating=True),
        PodInfo("a", "10.0.0.1", ready=True, grpc_port=9001),
        PodInfo("c", "10.0.0.3", ready=False),
        PodInfo("b", "10.0.0.2", ready=True),
        PodInfo("e", None, ready=True),
        PodInfo("f", "fd00::6", ready=True),
    ]
    targets = select_targets(pods, {"b": False}, 8001, "for release r")
    assert targets == [
        Target("a", "10.0.0.1:9001"),
        Target("b", "10.0.0.2:8001", "endpoint not ready"),
        Target("c", "10.0.0.3:8001", "not ready"),
        Target("d", "10.0.0.4:8001", "terminating"),
        Target("e", None, "no pod IP"),
        Target("f", "[fd00::6]:8001"),
    ]


def test_no_pod_and_no_ready_pod_are_errors_that_say_where() -> None:
    with pytest.raises(NoTritonPods, match="found for release r"):
        select_targets([], {}, 8001, "for release r")
    with pytest.raises(NoReadyPods, match=r"a \(not ready\), b \(terminating\)"):
        select_targets(
            [PodInfo("a", "1.1.1.1", False), PodInfo("b", "1.1.1.2", True, True)],
            {},
            8001,
            "for release r",
        )


def test_pod_info_reads_readiness_deletion_and_the_grpc_container_port() -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", deletion_timestamp="2026-01-01T00:00:00Z"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="tritonserver",
                    ports=[
                        client.V1ContainerPort(name="http", container_port=8000),
                        client.V1ContainerPort(name="grpc", container_port=9001),
                    ],
                )
            ]
        ),
        status=client.V1PodStatus(
            pod_ip="10.1.2.3", conditions=[client.V1PodCondition(type="Ready", status="True")]
        ),
    )
    # No --model-control-mode flag: Triton's default, none.
    assert _pod_info(pod) == PodInfo("p", "10.1.2.3", True, True, 9001, "none")
    assert _pod_info(client.V1Pod()) == PodInfo("", None, False, False, None)
    assert pod.spec is not None
    pod.spec.containers[0].args = ["--model-control-mode=poll", "--model-control-mode=explicit"]
    assert _pod_info(pod).model_control == "explicit"  # the last flag wins, as in Triton


def test_pods_without_explicit_model_control_stop_the_rollout_before_it_starts() -> None:
    pods = [PodInfo("a", "10.0.0.1", True, model_control="explicit")]
    pods.append(PodInfo("b", "10.0.0.2", True, model_control="none"))
    with pytest.raises(ModelControlOff, match=r"\(b\).*triton\.modelControlMode=explicit"):
        select_targets(pods, {}, 8001, "in release r")
    assert select_targets(pods[:1], {}, 8001, "in release r")[0].active


def test_service_name_follows_the_chart_helpers() -> None:
    assert service_name("prod") == "prod-imaging-platform-triton"
    long = "a-very-long-release-name-for-the-imaging"
    assert service_name(long) == f"{(long + '-imaging-platform')[:40]}-triton"


# --- pure planning ---------------------------------------------------------------------------


def test_load_adds_the_version_beside_the_served_ones_on_the_pods_own_config() -> None:
    own = ModelState((1,), {"name": MODEL, "max_batch_size": 8})
    step = plan_load(2, own, template={"name": "other"})
    assert step.kind is LoadKind.OVERRIDE and step.expect == (1, 2)  # alongside, never instead
    assert step.config == {
        "name": MODEL,
        "max_batch_size": 8,
        "version_policy": {"specific": {"versions": [1, 2]}},
    }
    assert own.config == {"name": MODEL, "max_batch_size": 8}  # not mutated

    from_sibling = plan_load(2, ModelState(), template=REPOSITORY_CONFIG)
    assert from_sibling.config == with_versions(REPOSITORY_CONFIG, [2])
    assert plan_load(1, own, None).expect == (1,)  # already served: the set is unchanged
    assert alongside((3, 1), 2) == (1, 2, 3)
    assert plan_load(2, ModelState(), template=None).kind is LoadKind.BOOTSTRAP
    assert plan_load(None, own, None) == plan_load(None, ModelState(), None)
    assert plan_load(None, own, None).kind is LoadKind.REPOSITORY


def test_rollback_restores_the_previous_versions() -> None:
    before = ModelState((1,), REPOSITORY_CONFIG)
    assert plan_rollback(before, ModelState((2,), {})).kind is RollbackKind.RELOAD
    assert plan_rollback(before, ModelState((2,), {})).config == REPOSITORY_CONFIG
    assert plan_rollback(before, ModelState((1,), {})).kind is RollbackKind.KEEP
    assert plan_rollback(ModelState(), ModelState((2,), {})).kind is RollbackKind.UNLOAD
    assert plan_rollback(ModelState(), ModelState()).kind is RollbackKind.KEEP


# --- the driver with fake pods ---------------------------------------------------------------


def test_success_loads_every_ready_pod_and_leaves_skipped_ones_alone() -> None:
    targets, pods = _fleet(FakePod("a:1"), FakePod("b:1"))
    targets.append(Target("triton-x", None, "not ready"))

    rollout, rows = _run(targets, pods)

    assert [p.versions for p in pods.values()] == [(1, 2), (1, 2)]  # v1 still served
    for pod in pods.values():
        assert pod.calls == [("load", with_versions(REPOSITORY_CONFIG, [1, 2]))]
    assert [(r.pod, r.action, r.result.split(" (")[0]) for r in rows] == [
        ("triton-x", "skip", "not ready"),
        ("triton-0", "load v2", "READY v1,v2"),
        ("triton-1", "load v2", "READY v1,v2"),
    ]
    assert rollout.error() is None
    assert rollout.summary() == "m v2 is READY on 2 pod(s); 1 skipped (triton-x: not ready)"


def test_a_failed_pod_rolls_back_every_touched_pod_and_stops_the_rest() -> None:
    targets, pods = _fleet(FakePod("a:1"), FakePod("b:1", loadable=frozenset({1})), FakePod("c:1"))

    with pytest.raises(RolloutFailed) as failure:
        _run(targets, pods)

    a, b, c = pods.values()
    assert a.versions == b.versions == c.versions == (1,)
    alongside_v2 = with_versions(REPOSITORY_CONFIG, [1, 2])
    assert a.calls == [("load", alongside_v2), ("load", REPOSITORY_CONFIG)]
    assert b.calls == [("load", alongside_v2)]  # Triton kept v1
    assert c.calls == []
    assert failure.value.exit_code == 1
    assert failure.value.reason == (
        "rollout of m v2 stopped at pod triton-1 (b:1): loading m: version 2 broken. "
        "Rolled back 2 pod(s) to their previous versions (triton-1: v1, triton-0: v1)."
    )


def test_failure_rows_show_rollback_newest_first_and_not_attempted_pods() -> None:
    targets, pods = _fleet(FakePod("a:1"), FakePod("b:1", loadable=frozenset({1})), FakePod("c:1"))
    rows: list[Row] = []
    rollout = Rollout(MODEL, 2, targets)
    with pytest.raises(RolloutFailed):
        execute(rollout, pods.__getitem__, rows.append, timeout=5)
    assert [(r.pod, r.action, r.result.split(" (")[0]) for r in rows] == [
        ("triton-0", "load v2", "READY v1,v2"),
        ("triton-1", "load v2", "FAILED: version 2 broken"),
        ("triton-2", "load v2", "not attempted"),
        ("triton-1", "rollback to v1", "unchanged: still v1"),
        ("triton-0", "rollback to v1", "READY v1"),
    ]
    assert [p.status for p in rollout.pods] == [
        Status.ROLLED_BACK,
        Status.ROLLED_BACK,
        Status.NOT_ATTEMPTED,
    ]


def test_an_unreachable_pod_stops_the_rollout_before_anything_changes() -> None:
    targets, pods = _fleet(FakePod("a:1"), FakePod("b:1", unreachable=True))

    with pytest.raises(RolloutFailed, match=r"unreachable \(refused\)\. Nothing was changed"):
        _run(targets, pods)

    assert all(not p.calls for p in pods.values())


def test_a_model_missing_from_a_pods_repository_stops_before_anything_changes() -> None:
    targets, pods = _fleet(FakePod("a:1"), FakePod("b:1", versions=(), known=False))

    with pytest.raises(RolloutFailed, match=r"not in this pod's model repository\. Nothing"):
        _run(targets, pods)

    assert all(not p.calls for p in pods.values())


class InterruptedPod(FakePod):
    def load(self, model: str, config: Mapping[str, Any] | None, timeout: float) -> None:
        self.calls.append(("load", config))
        raise KeyboardInterrupt


def test_interrupting_a_load_rolls_back_what_was_done() -> None:
    targets, pods = _fleet(FakePod("a:1"), InterruptedPod("b:1"), FakePod("c:1"))

    with pytest.raises(RolloutFailed, match=r"stopped at pod triton-1 .*: interrupted"):
        _run(targets, pods)

    assert [p.versions for p in pods.values()] == [(1,), (1,), (1,)]
    assert pods["c:1"].calls == []


def test_a_failed_rollback_says_the_fleet_is_inconsistent() -> None:
    targets, pods = _fleet(
        FakePod("a:1", loads_before_breaking=1), FakePod("b:1", loadable=frozenset({1}))
    )

    with pytest.raises(RollbackIncomplete) as failure:
        _run(targets, pods)

    assert failure.value.exit_code == 3
    assert "Rollback FAILED on triton-0: loading m: connection reset" in failure.value.reason
    assert "inconsistent" in failure.value.reason


def test_pods_without_the_model_get_a_siblings_config_and_are_unloaded_on_rollback() -> None:
    targets, pods = _fleet(FakePod("a:1", versions=()), FakePod("b:1", loadable=frozenset({1})))

    with pytest.raises(RolloutFailed, match="triton-0: none"):
        _run(targets, pods)

    a = pods["a:1"]
    assert a.calls == [("load", with_versions(REPOSITORY_CONFIG, [2])), ("unload", None)]
    assert a.versions == ()


def test_when_no_pod_serves_the_model_the_repository_config_is_loaded_then_pinned() -> None:
    targets, pods = _fleet(FakePod("a:1", versions=()))

    _run(targets, pods)

    pinned = with_versions(REPOSITORY_CONFIG, [1, 2])  # the repository's v1, and v2 beside it
    assert pods["a:1"].calls == [("load", None), ("load", pinned)]
    assert pods["a:1"].versions == (1, 2)


def test_without_a_version_the_repository_config_is_loaded() -> None:
    targets, pods = _fleet(FakePod("a:1", versions=()), FakePod("b:1"))

    rollout, _ = _run(targets, pods, version=None)

    assert [p.calls for p in pods.values()] == [[("load", None)], [("load", None)]]
    assert rollout.summary() == "m is READY on 2 pod(s)"


def test_progress_table_aligns_columns_and_keeps_rows_on_one_line() -> None:
    out = io.StringIO()
    targets, pods = _fleet(FakePod("10.0.0.1:8001"))
    roll_out(targets, MODEL, 2, out, timeout=5, connect=pods.__getitem__)
    table = ProgressTable(targets, out)
    table(Row("triton-0", "10.0.0.1:8001", "v1", "load v2", "FAILED: " + "x\n" * 200))
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["POD", "ADDRESS", "PREVIOUS", "ACTION", "RESULT"]
    assert lines[1].index("10.0.0.1:8001") == lines[0].index("ADDRESS")
    assert lines[1].index("READY v1,v2") == lines[0].index("RESULT")
    assert len(lines) == 4 and lines[3].endswith("...") and len(lines[3]) < 200


# --- retire ----------------------------------------------------------------------------------


def test_retire_takes_one_version_away_and_leaves_pods_without_it_alone() -> None:
    targets, pods = _fleet(FakePod("a:1", versions=(1, 2)), FakePod("b:1", versions=(2,)))
    rollout = Rollout(MODEL, 1, targets, retire=True)
    rows: list[Row] = []
    execute(rollout, pods.__getitem__, rows.append, timeout=5)
    a, b = pods.values()
    assert a.versions == (2,) and a.calls == [("load", with_versions(REPOSITORY_CONFIG, [2]))]
    assert b.versions == (2,) and b.calls == []  # it never served v1
    assert [r.action for r in rows] == ["retire v1", "retire v1"]
    assert rollout.summary() == "m v1 is retired on 2 pod(s)"


def test_retiring_the_only_version_a_pod_serves_is_refused_before_anything_changes() -> None:
    targets, pods = _fleet(FakePod("a:1", versions=(1, 2)), FakePod("b:1", versions=(1,)))
    with pytest.raises(RolloutFailed, match="v1 is the only version of m this pod serves"):
        execute(Rollout(MODEL, 1, targets, retire=True), pods.__getitem__, lambda _: None, 5)
    assert [p.calls for p in pods.values()] == [[], []]
