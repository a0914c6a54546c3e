"""Fleet model rollout: a model version READY on every ready Triton pod of a release, or none.

An explicit-mode load sent through the Triton Service lands on one pod, so this finds the pods
through the Kubernetes API and loads on each directly, one at a time, verifying READY after
each. When any pod fails, every pod already touched is put back on its previous versions.
``imaging-platform models rollout NAME [--version V]`` calls ``rollout_command``.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from services.common.errors import InvalidInput, PlatformError
from services.common.pipelines import PipelineRegistry
from services.common.settings import DEFAULT_PIPELINES_DIR
from services.common.tls_files import PLAINTEXT, TlsFiles
from services.fleet.core import (
    DEFAULT_GRPC_PORT,
    LoadKind,
    LoadStep,
    ModelState,
    PodRollout,
    ProgressTable,
    RollbackKind,
    Rollout,
    Row,
    Status,
    Target,
    alongside,
    model_label,
    plan_rollback,
    versions_label,
    with_versions,
)
from services.fleet.errors import PodCallFailed, RollbackIncomplete, RolloutFailed
from services.fleet.golden import DEFAULT_REPOSITORY, GOLDEN_FILE, GoldenAnswer, answer
from services.fleet.journal import FleetLock
from services.fleet.triton import TritonPod

DEFAULT_RELEASE = "imaging-platform"
DEFAULT_TIMEOUT = 300.0  # a production load may build TensorRT engines


class Pod(Protocol):
    """What the rollout needs from one Triton server (services.fleet.triton.TritonPod)."""

    def state(self, model: str) -> ModelState: ...

    def load(self, model: str, config: Mapping[str, Any] | None, timeout: float) -> None: ...

    def unload(self, model: str) -> None: ...

    def wait_ready(self, model: str, versions: tuple[int, ...], timeout: float) -> ModelState: ...

    def wait_unloaded(self, model: str, timeout: float) -> None: ...

    def infer(
        self, model: str, version: int, inputs: Mapping[str, np.ndarray], timeout: float
    ) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


Connect = Callable[[str], Pod]
Report = Callable[[Row], None]


def _row(pod: PodRollout, action: str, result: str) -> Row:
    previous = versions_label(pod.previous.versions) if pod.previous is not None else "-"
    return Row(pod.target.pod, pod.target.address or "-", previous, action, result)


class _Deadline:
    """One time budget per pod, shared by its load call and the READY polling after it."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._start = time.monotonic()

    def left(self) -> float:
        return max(self._end - time.monotonic(), 1.0)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self._start:.1f} s"


def _load(pod: Pod, rollout: Rollout, step: LoadStep, deadline: _Deadline) -> ModelState:
    model = rollout.model
    if step.kind is LoadKind.UNCHANGED:
        return pod.state(model)
    if rollout.retire:
        pod.load(model, step.config, deadline.left())
        return _wait_retired(pod, rollout, step.expect, deadline)
    if step.kind is LoadKind.BOOTSTRAP:
        # No pod serves the model, so there is no complete config to pin the version on:
        # load the repository's, then pin if its version policy serves something else.
        pod.load(model, None, deadline.left())
        loaded = pod.wait_ready(model, (), deadline.left())
        if loaded.versions == step.expect or loaded.config is None:
            return pod.wait_ready(model, step.expect, deadline.left())
        assert rollout.version is not None  # BOOTSTRAP is only planned for a given version
        versions = alongside(loaded.versions, rollout.version)
        pod.load(model, with_versions(loaded.config, versions), deadline.left())
        return pod.wait_ready(model, versions, deadline.left())
    else:
        pod.load(model, step.config, deadline.left())
    return pod.wait_ready(model, step.expect, deadline.left())


def _wait_retired(
    pod: Pod, rollout: Rollout, remaining: tuple[int, ...], deadline: _Deadline
) -> ModelState:
    """The remaining versions READY and the retired one gone (Triton unloads it in the
    background once the new config is loaded)."""
    model = rollout.model
    state = pod.wait_ready(model, remaining, deadline.left())
    end = time.monotonic() + deadline.left()
    while rollout.version in state.versions:
        if time.monotonic() >= end:
            raise PodCallFailed(
                f"retiring {model} v{rollout.version}", "", "still READY after the load"
            )
        time.sleep(0.2)
        state = pod.state(model)
    return state


def _roll_back(
    pod: Pod, rollout: Rollout, entry: PodRollout, timeout: float, report: Report
) -> None:
    assert entry.previous is not None  # only inspected pods are touched
    model = rollout.model
    previous = entry.previous
    action = f"rollback to {versions_label(previous.versions)}" if previous.loaded else "unload"
    deadline = _Deadline(timeout)
    try:
        step = plan_rollback(previous, pod.state(model))
        if step.kind is RollbackKind.RELOAD:
            pod.load(model, step.config, deadline.left())
            state = pod.wait_ready(model, step.expect, deadline.left())
            result = f"READY {versions_label(state.versions)} ({deadline.elapsed()})"
        elif step.kind is RollbackKind.UNLOAD:
            pod.unload(model)
            pod.wait_unloaded(model, deadline.left())
            result = "unloaded"
        elif previous.loaded:
            result = f"unchanged: still {versions_label(previous.versions)}"
        else:
            result = "unchanged: not loaded"
    except PodCallFailed as err:
        rollout.rolled_back(entry, f"{err.what}: {err.detail}")
        report(_row(entry, action, f"ROLLBACK FAILED: {err.detail}"))
        return
    rollout.rolled_back(entry, None)
    report(_row(entry, action, result))


def _check_golden(
    pod: Pod, rollout: Rollout, golden: GoldenAnswer, deadline: _Deadline, address: str
) -> None:
    """The new version, as this pod serves it, must give the golden answer."""
    assert rollout.version is not None  # goldens are per version
    outputs = pod.infer(rollout.model, rollout.version, golden.input_arrays(), deadline.left())
    why = golden.mismatch(outputs)
    if why is not None:
        raise PodCallFailed(f"checking {rollout.target_label}", address, f"golden check: {why}")


def execute(
    rollout: Rollout,
    connect: Connect,
    report: Report,
    timeout: float,
    golden: GoldenAnswer | None = None,
    journal: Journal | None = None,
) -> None:
    """Carry out ``rollout``, reporting each step; raises RolloutFailed if it did not land.
    With ``golden``, a pod counts as done only when the new version answers it; ``journal``
    is given the plan and progress before anything changes and after every step."""

    def note() -> None:
        if journal is not None:
            journal(rollout.record())

    model = rollout.model
    verb = "retire" if rollout.retire else "load"
    action = f"{verb} {versions_label([rollout.version])}" if rollout.version is not None else verb
    clients: dict[str, Pod] = {}
    try:
        for entry in rollout.skipped:
            report(_row(entry, "skip", entry.detail))
        for entry in rollout.to_inspect():
            assert entry.target.address is not None  # active targets have one
            try:
                client = clients[entry.target.pod] = connect(entry.target.address)
                state = client.state(model)
            except PodCallFailed as err:
                rollout.failed(entry, f"{err.what}: {err.detail}")
                report(_row(entry, "inspect", f"FAILED: {err.detail}"))
                break
            if not rollout.inspected(entry, state):
                report(_row(entry, "inspect", f"FAILED: {entry.detail}"))
                break
        note()
        while (step := rollout.next_load()) is not None:
            entry, plan = step
            deadline = _Deadline(timeout)
            rollout.started(entry)
            note()  # touched from here on: a later run must be able to undo it
            try:
                state = _load(clients[entry.target.pod], rollout, plan, deadline)
                if golden is not None:
                    pod = clients[entry.target.pod]
                    _check_golden(pod, rollout, golden, deadline, entry.target.address or "")
            except PodCallFailed as err:
                rollout.failed(entry, f"{err.what}: {err.detail}")
                report(_row(entry, action, f"FAILED: {err.detail}"))
            except KeyboardInterrupt:  # a half-done rollout is worse than none: undo it
                rollout.failed(entry, "interrupted")
                report(_row(entry, action, "INTERRUPTED"))
            else:
                rollout.succeeded(entry, state)
                report(_row(entry, action, f"{entry.detail} ({deadline.elapsed()})"))
        for entry in rollout.pods:
            if entry.status is Status.NOT_ATTEMPTED:
                report(_row(entry, action, "not attempted"))
            note()
        for entry in rollout.to_roll_back():
            _roll_back(clients[entry.target.pod], rollout, entry, timeout, report)
            note()
    finally:
        for client in clients.values():
            client.close()
    error = rollout.error()
    if error is not None:
        raise error


Journal = Callable[[dict[str, Any]], None]


def recover(plan: dict[str, Any], connect: Connect, report: Report, timeout: float) -> int:
    """Put every pod an interrupted run touched back on what it served before; the number
    of pods restored. Raises RollbackIncomplete (the record stays) if one cannot be."""
    rollout = Rollout.recorded(plan)
    touched = [p for p in rollout.pods if p.touched]
    for entry in reversed(touched):
        assert entry.target.address is not None
        pod = connect(entry.target.address)
        try:
            _roll_back(pod, rollout, entry, timeout, report)
        finally:
            pod.close()
    listed = rollout.failed_rollbacks()
    if listed:
        raise RollbackIncomplete(
            f"an interrupted rollout of {rollout.target_label} could not be undone on "
            f"{listed}; the fleet is inconsistent until this succeeds (run again)"
        )
    return len(touched)


def pinned_by(pipelines_dir: Path, model: str, version: int) -> list[str]:
    """The pipelines of ``pipelines_dir`` (the live pipelines configuration) whose model is
    ``model`` at ``version``: live traffic asks Triton for exactly that version."""
    registry = PipelineRegistry.load(pipelines_dir)
    return sorted(
        p.name for p in registry.all() if p.model.name == model and p.model.version == str(version)
    )


def roll_out(
    targets: list[Target],
    model: str,
    version: int | None,
    out: TextIO,
    timeout: float = DEFAULT_TIMEOUT,
    connect: Connect | None = None,
    retire: bool = False,
    golden: GoldenAnswer | None = None,
    journal: Journal | None = None,
) -> Rollout:
    """Roll ``model`` out to ``targets`` (or retire ``version`` from them), printing the
    progress table to ``out``."""
    rollout = Rollout(model, version, targets, retire)
    execute(rollout, connect or TritonPod, ProgressTable(targets, out), timeout, golden, journal)
    return rollout


def rollout_command(
    model: str,
    version: int | None = None,
    namespace: str | None = None,
    release: str = DEFAULT_RELEASE,
    timeout: float = DEFAULT_TIMEOUT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    context: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    files: TlsFiles = PLAINTEXT,
    admin_key: str = "",
    server_name: str = "",
    retire: bool = False,
    pipelines_dir: Path = DEFAULT_PIPELINES_DIR,
    golden_repository: Path = DEFAULT_REPOSITORY,
) -> int:
    """The CLI commands `models rollout` and (``retire``) `models retire`: 0 when done
    everywhere, else the error's exit code (1, or 3 when the rollback itself failed and the
    fleet is left inconsistent)."""
    from services.fleet.kube import Cluster, connect

    out = out or sys.stdout  # looked up now, so redirection after import is honoured
    err = err or sys.stderr
    label = model_label(model, version)
    try:
        if version is not None and version < 1:
            raise InvalidInput(f"--version must be a positive model version, not {version}")
        if retire:
            assert version is not None  # the CLI requires it
            pinned = pinned_by(pipelines_dir, model, version)
            if pinned:
                raise InvalidInput(
                    f"{label} is what pipeline(s) {', '.join(pinned)} ask Triton for "
                    f"({pipelines_dir}): point them at another version before retiring it"
                )
        golden = None
        if version is not None and not retire:
            golden = answer(golden_repository, model, version)
            if golden is None:
                raise InvalidInput(
                    f"{label} has no golden answer in {golden_repository / model / GOLDEN_FILE} "
                    "(scripts/make_goldens.py): a version without one cannot be rolled out"
                )
        api, default_namespace = connect(context)
        namespace = namespace or default_namespace
        with api, _sigterm_interrupts():
            targets = Cluster(api).targets(namespace, release, grpc_port)
            ready = sum(t.active for t in targets)
            print(
                f"{'retiring' if retire else 'rolling out'} {label} "
                f"{'from' if retire else 'to'} release {release} in namespace {namespace}: "
                f"{ready} of {len(targets)} Triton pod(s) ready",
                file=out,
            )

            def pod_connect(address: str) -> Pod:
                return TritonPod(address, files=files, admin_key=admin_key, server_name=server_name)

            lock = FleetLock(api, namespace, release, lease_seconds=int(2 * timeout + 60))
            lock.acquire()
            try:
                rollout = _locked(
                    lock, targets, model, version, out, timeout, pod_connect, retire, golden
                )
            finally:
                lock.release()
    except RolloutFailed as error:
        print(f"error: {error.reason}", file=err)
        return error.exit_code
    except PlatformError as error:
        print(f"error: {error.reason}", file=err)
        return 1
    print(rollout.summary(), file=out)
    return 0


def _locked(
    lock: FleetLock,
    targets: list[Target],
    model: str,
    version: int | None,
    out: TextIO,
    timeout: float,
    connect: Connect,
    retire: bool,
    golden: GoldenAnswer | None,
) -> Rollout:
    """Under the Lease: undo what an interrupted run left, then do this one, recorded."""
    interrupted = lock.recorded()
    if interrupted is not None:
        print(
            f"an interrupted run left {interrupted['model']} half changed: restoring the pods "
            "it touched first",
            file=out,
        )
        recover(interrupted, connect, ProgressTable(targets, out), timeout)
        lock.clear()
    try:
        rollout = roll_out(
            targets, model, version, out, timeout, connect, retire, golden, lock.record
        )
    except RollbackIncomplete:
        raise  # the record stays: the next run finishes the rollback
    except RolloutFailed:
        lock.clear()  # rolled back cleanly: nothing to undo later
        raise
    lock.clear()
    return rollout


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a Job's deadline, an eviction) as Ctrl-C: a load in flight is rolled back
    everywhere; anywhere else the record lets the next run undo it."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
