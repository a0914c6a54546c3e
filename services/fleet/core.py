"""Pure decisions of a fleet rollout: which pods, what to load on each, how to undo it.

Nothing here talks to Kubernetes or Triton. The adapters (kube.py, triton.py) observe; the
driver (rollout.py) feeds their observations in and carries out the steps decided here, so
every decision is unit-tested without a cluster or a server.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from services.common.listeners import TRITON
from services.fleet.errors import (
    ModelControlOff,
    NoReadyPods,
    NoTritonPods,
    RollbackIncomplete,
    RolloutFailed,
)

DEFAULT_GRPC_PORT = TRITON.grpc
GRPC_PORT_NAME = "grpc"  # the containerPort name that overrides DEFAULT_GRPC_PORT per pod
RESULT_WIDTH = 100  # longer reasons are cut in the table; the final error has them in full


# --- discovery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodInfo:
    """What the Kubernetes API says about one Triton pod of the release."""

    name: str
    ip: str | None
    ready: bool
    terminating: bool = False
    grpc_port: int | None = None
    # Triton's --model-control-mode from the pod spec ("none" when absent, Triton's default);
    # None: not known (a PodInfo not read from Kubernetes).
    model_control: str | None = None


@dataclass(frozen=True)
class Target:
    """One pod as the rollout sees it: its gRPC address, or why it is left alone."""

    pod: str
    address: str | None
    skip_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.skip_reason is None


def grpc_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def select_targets(
    pods: Iterable[PodInfo],
    endpoints_ready: Mapping[str, bool],
    default_port: int,
    where: str,
) -> list[Target]:
    """Every pod, sorted by name; those not ready are skipped with a reason.

    ``endpoints_ready`` is the Service's view (EndpointSlices): it can say a pod whose Ready
    condition is still True is terminating. A pod absent from it is judged by its own Ready
    condition only, so a Service with another selector cannot hide the whole fleet.
    Raises when there is no pod, or no pod to roll out to: a rollout to nobody is a mistake.
    """
    targets = []
    pods_by_name = {p.name: p for p in pods}
    for pod in sorted(pods_by_name.values(), key=lambda p: p.name):
        address = grpc_address(pod.ip, pod.grpc_port or default_port) if pod.ip else None
        if pod.terminating:
            reason: str | None = "terminating"
        elif not pod.ready:
            reason = "not ready"
        elif not endpoints_ready.get(pod.name, True):
            reason = "endpoint not ready"
        elif address is None:
            reason = "no pod IP"
        else:
            reason = None
        targets.append(Target(pod.name, address, reason))
    if not targets:
        raise NoTritonPods(f"no Triton pod found {where}")
    fixed = sorted(
        p.name for p in pods_by_name.values() if p.model_control not in (None, "explicit")
    )
    if fixed:
        raise ModelControlOff(
            f"Triton runs without explicit model control {where} ({', '.join(fixed)}), so it "
            "would refuse every load and unload: set the chart value "
            "triton.modelControlMode=explicit (helm upgrade) and run this again"
        )
    if not any(t.active for t in targets):
        skipped = ", ".join(f"{t.pod} ({t.skip_reason})" for t in targets)
        raise NoReadyPods(f"no ready Triton pod {where}: {skipped}")
    return targets


# --- model state and the steps on one pod ----------------------------------------------------


@dataclass(frozen=True)
class ModelState:
    """What one Triton server serves of the model: READY versions and the config behind them."""

    versions: tuple[int, ...] = ()
    config: Mapping[str, Any] | None = None
    reasons: Mapping[int, str] = field(default_factory=dict)  # why a version is not READY
    known: bool = True  # listed in the server's model repository at all

    @property
    def loaded(self) -> bool:
        return bool(self.versions)


def versions_label(versions: Iterable[int]) -> str:
    listed = sorted(versions)
    return ",".join(f"v{v}" for v in listed) if listed else "none"


def model_label(model: str, version: int | None) -> str:
    return f"{model} v{version}" if version is not None else model


def with_versions(config: Mapping[str, Any], versions: Iterable[int]) -> dict[str, Any]:
    """The same model config serving exactly ``versions`` (Triton's load-time override)."""
    pinned = copy.deepcopy(dict(config))
    pinned["version_policy"] = {"specific": {"versions": sorted(set(versions))}}
    return pinned


def alongside(served: Iterable[int], version: int) -> tuple[int, ...]:
    """What a pod serves once ``version`` is rolled out: the new version *beside* the ones it
    serves, never instead of them. Pipelines pin a version (pipelines/*.yaml model.version) and
    live traffic asks Triton for exactly that one; replacing the set once unloaded the version
    every chest study asked for. Only ``models retire`` takes a version away."""
    return tuple(sorted({*served, version}))


class LoadKind(enum.Enum):
    UNCHANGED = "nothing to do: the pod already serves what is wanted"
    REPOSITORY = "load with the repository's config"
    OVERRIDE = "load with a version-pinned config"
    BOOTSTRAP = "load from the repository, then pin the version"


@dataclass(frozen=True)
class LoadStep:
    """How to bring one pod to the target, and which versions must then be READY."""

    kind: LoadKind
    config: Mapping[str, Any] | None
    expect: tuple[int, ...]  # () means "some version is READY"


def plan_retire(version: int, previous: ModelState) -> LoadStep:
    """Serve every version the pod serves but ``version`` (the only way one is unloaded)."""
    if version not in previous.versions or previous.config is None:
        return LoadStep(LoadKind.UNCHANGED, None, previous.versions)
    remaining = tuple(v for v in previous.versions if v != version)
    return LoadStep(LoadKind.OVERRIDE, with_versions(previous.config, remaining), remaining)


def plan_load(
    version: int | None, previous: ModelState, template: Mapping[str, Any] | None
) -> LoadStep:
    """Add ``version`` to the versions the pod serves, on the config it serves now, else on a
    sibling pod's config.

    Triton takes a load-time config as the whole config, so the override must start from a
    complete one. Only when no pod has the model loaded is there none to start from: then the
    repository's own config is loaded first and pinned afterwards (BOOTSTRAP).
    """
    if version is None:
        return LoadStep(LoadKind.REPOSITORY, None, ())
    base = previous.config if previous.config is not None else template
    if base is None:
        return LoadStep(LoadKind.BOOTSTRAP, None, (version,))
    versions = alongside(previous.versions, version)
    return LoadStep(LoadKind.OVERRIDE, with_versions(base, versions), versions)


class RollbackKind(enum.Enum):
    KEEP = "already on its previous versions"
    RELOAD = "reload the previous config"
    UNLOAD = "unload (it was not loaded before)"


@dataclass(frozen=True)
class RollbackStep:
    kind: RollbackKind
    config: Mapping[str, Any] | None = None
    expect: tuple[int, ...] = ()


def plan_rollback(previous: ModelState, current: ModelState) -> RollbackStep:
    """Restore the set of READY versions the pod had before the rollout touched it.

    A pod already serving exactly that set is left alone: Triton keeps the old versions
    serving when a load fails, and reloading them would only interrupt them again.
    """
    if previous.loaded:
        if current.versions == previous.versions:
            return RollbackStep(RollbackKind.KEEP, None, previous.versions)
        return RollbackStep(RollbackKind.RELOAD, previous.config, previous.versions)
    if current.loaded:
        return RollbackStep(RollbackKind.UNLOAD)
    return RollbackStep(RollbackKind.KEEP)


# --- the rollout state machine ---------------------------------------------------------------


class Status(enum.Enum):
    SKIPPED = "skipped"
    PENDING = "pending"
    INSPECTED = "inspected"
    READY = "ready"
    FAILED = "failed"
    NOT_ATTEMPTED = "not attempted"
    ROLLED_BACK = "rolled back"
    ROLLBACK_FAILED = "rollback failed"


@dataclass
class PodRollout:
    target: Target
    status: Status = Status.PENDING
    previous: ModelState | None = None
    touched: bool = False  # a load was sent: the pod may have changed and must be rolled back
    detail: str = ""  # skip reason, load result or load failure
    rollback_error: str | None = None


class Rollout:
    """One rollout: inspect every ready pod, load one pod at a time, on failure undo all.

    Inspecting first means an unreachable pod stops the rollout before anything changes, and
    gives a complete config to pin versions on for pods that do not serve the model yet.
    Loading one pod at a time keeps the rest of the fleet serving if the new version is bad.
    """

    def __init__(
        self,
        model: str,
        version: int | None,
        targets: Iterable[Target],
        retire: bool = False,
    ) -> None:
        if retire and version is None:
            raise ValueError("retiring needs a version")
        self.model = model
        self.version = version
        self.retire = retire  # take ``version`` away instead of adding it
        self.pods = [
            PodRollout(t, Status.PENDING, detail="")
            if t.active
            else PodRollout(t, Status.SKIPPED, detail=t.skip_reason or "")
            for t in targets
        ]
        self.failure: PodRollout | None = None

    def record(self) -> dict[str, Any]:
        """The plan and progress as JSON-able data (services/fleet/journal.py): enough for a
        later run to restore every pod a load was sent to."""
        return {
            "model": self.model,
            "version": self.version,
            "retire": self.retire,
            "pods": [
                {
                    "pod": p.target.pod,
                    "address": p.target.address,
                    "versions": list(p.previous.versions),
                    "config": p.previous.config,
                    "touched": p.touched,
                }
                for p in self.pods
                if p.previous is not None
            ],
        }

    @classmethod
    def recorded(cls, plan: Mapping[str, Any]) -> Rollout:
        """A rollout as :meth:`record` left it, to roll its touched pods back."""
        pods = plan["pods"]
        rollout = cls(
            plan["model"],
            plan["version"],
            [Target(p["pod"], p["address"]) for p in pods],
            bool(plan["retire"]),
        )
        for entry, saved in zip(rollout.pods, pods, strict=True):
            entry.previous = ModelState(tuple(saved["versions"]), saved["config"])
            entry.touched = bool(saved["touched"])
            entry.status = Status.FAILED if entry.touched else Status.INSPECTED
        return rollout

    @property
    def target_label(self) -> str:
        return model_label(self.model, self.version)

    @property
    def skipped(self) -> list[PodRollout]:
        return [p for p in self.pods if p.status is Status.SKIPPED]

    def to_inspect(self) -> list[PodRollout]:
        return [p for p in self.pods if p.status is Status.PENDING]

    def inspected(self, pod: PodRollout, state: ModelState) -> bool:
        """Record what the pod serves; a model missing from its repository stops the rollout
        before anything changes (a typo, or a pod on another repository)."""
        pod.previous = state
        pod.status = Status.INSPECTED
        if not state.known:
            self.failed(pod, f"model {self.model} is not in this pod's model repository")
            return False
        if self.retire and state.versions == (self.version,):
            self.failed(
                pod,
                f"v{self.version} is the only version of {self.model} this pod serves: "
                "roll out the version that replaces it first",
            )
            return False
        return True

    def template(self) -> Mapping[str, Any] | None:
        """A complete config of the model as some pod serves it, to pin versions on."""
        for pod in self.pods:
            if pod.previous is not None and pod.previous.config is not None:
                return pod.previous.config
        return None

    def next_load(self) -> tuple[PodRollout, LoadStep] | None:
        """The next pod to load and how; None when done or stopped by a failure."""
        if self.failure is not None:
            return None
        for pod in self.pods:
            if pod.status is Status.INSPECTED:
                assert pod.previous is not None
                if self.retire:
                    assert self.version is not None  # checked in __init__
                    return pod, plan_retire(self.version, pod.previous)
                return pod, plan_load(self.version, pod.previous, self.template())
        return None

    def started(self, pod: PodRollout) -> None:
        pod.touched = True

    def succeeded(self, pod: PodRollout, state: ModelState) -> None:
        pod.status = Status.READY
        pod.detail = f"READY {versions_label(state.versions)}"

    def failed(self, pod: PodRollout, reason: str) -> None:
        """Stop: this pod failed, nobody else is attempted."""
        pod.status = Status.FAILED
        pod.detail = reason
        self.failure = pod
        for other in self.pods:
            if other.status in (Status.PENDING, Status.INSPECTED):
                other.status = Status.NOT_ATTEMPTED

    def to_roll_back(self) -> list[PodRollout]:
        """After a failure, every pod a load was sent to, the most recent first."""
        if self.failure is None:
            return []
        return [p for p in reversed(self.pods) if p.touched]

    def rolled_back(self, pod: PodRollout, error: str | None) -> None:
        pod.status = Status.ROLLED_BACK if error is None else Status.ROLLBACK_FAILED
        pod.rollback_error = error

    def failed_rollbacks(self) -> str:
        """Each pod whose rollback failed, with why ("" when none did)."""
        broken = [p for p in self.pods if p.status is Status.ROLLBACK_FAILED]
        return "; ".join(f"{p.target.pod}: {p.rollback_error}" for p in broken)

    def error(self) -> RolloutFailed | None:
        """The error to report once the rollout (and any rollback) has finished."""
        if self.failure is None:
            return None
        failed = self.failure
        where = f"{failed.target.pod} ({failed.target.address})"
        reason = failed.detail.rstrip(".")
        what = "retiring" if self.retire else "rollout of"
        head = f"{what} {self.target_label} stopped at pod {where}: {reason}"
        touched = self.to_roll_back()
        listed = self.failed_rollbacks()
        if listed:
            return RollbackIncomplete(
                f"{head}. Rollback FAILED on {listed}. The fleet is inconsistent: check those "
                f"pods and load the model there by hand."
            )
        if not touched:
            return RolloutFailed(f"{head}. Nothing was changed.")
        restored = ", ".join(
            f"{p.target.pod}: {versions_label(p.previous.versions if p.previous else ())}"
            for p in touched
        )
        return RolloutFailed(
            f"{head}. Rolled back {len(touched)} pod(s) to their previous versions ({restored})."
        )

    def summary(self) -> str:
        """One line for a successful rollout."""
        ready = [p for p in self.pods if p.status is Status.READY]
        if self.retire:
            text = f"{self.target_label} is retired on {len(ready)} pod(s)"
        else:
            text = f"{self.target_label} is READY on {len(ready)} pod(s)"
        if self.skipped:
            reasons = ", ".join(f"{p.target.pod}: {p.detail}" for p in self.skipped)
            text += f"; {len(self.skipped)} skipped ({reasons})"
        return text


# --- the progress table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    pod: str
    address: str
    previous: str
    action: str
    result: str


class ProgressTable:
    """Prints one row per step as it finishes, so a slow load shows where it is."""

    HEADER = Row("POD", "ADDRESS", "PREVIOUS", "ACTION", "RESULT")

    def __init__(self, targets: Iterable[Target], out: TextIO) -> None:
        listed = list(targets)
        self._out = out
        self._widths = (
            max([len(self.HEADER.pod), *(len(t.pod) for t in listed)]),
            max([len(self.HEADER.address), *(len(t.address or "-") for t in listed)]),
            10,
            16,
        )
        self._print(self.HEADER)

    def _print(self, row: Row) -> None:
        cells = (row.pod, row.address, row.previous, row.action)
        line = "  ".join(f"{c:<{w}}" for c, w in zip(cells, self._widths, strict=True))
        print(f"{line}  {row.result}".rstrip(), file=self._out, flush=True)

    def __call__(self, row: Row) -> None:
        result = " ".join(row.result.split())  # Triton reasons carry newlines and tracebacks
        if len(result) > RESULT_WIDTH:
            result = result[: RESULT_WIDTH - 3] + "..."
        self._print(Row(row.pod, row.address, row.previous, row.action, result))
