"""Errors of fleet operations, as members of the platform's one exception tree.

Each class names its own ``kind`` (unique across the tree, checked by
tests/unit/test_error_kinds.py): a subclass that inherited its parent's would be re-raised as
the parent by :func:`services.common.errors.from_kind`.
"""

from __future__ import annotations

from services.common.errors import DependencyUnavailable, NotFound, PlatformError, Status


class NoTritonPods(NotFound):
    """The release has no Triton pod at all (wrong release, namespace or context)."""

    kind = "NO_TRITON_PODS"


class NoReadyPods(DependencyUnavailable):
    """Triton pods exist but none is ready, so there is nothing to roll out to."""

    kind = "NO_READY_PODS"


class ClusterUnavailable(DependencyUnavailable):
    """The Kubernetes API cannot be reached or refuses the request."""

    kind = "CLUSTER_UNAVAILABLE"


class PodCallFailed(DependencyUnavailable):
    """One Triton pod did not do what was asked: unreachable, load refused, not ready.

    ``detail`` is Triton's side of it alone, for a table row that already names the pod.
    """

    kind = "POD_CALL_FAILED"

    def __init__(self, what: str, address: str, detail: str) -> None:
        super().__init__(f"{what} on {address}: {detail}")
        self.what = what
        self.detail = detail


class RolloutFailed(PlatformError):
    """The rollout stopped on a pod; every touched pod is back on its previous versions."""

    code = Status.ABORTED
    kind = "ROLLOUT_FAILED"
    exit_code = 1


class RollbackIncomplete(RolloutFailed):
    """The rollout failed and some pods could not be restored: the fleet is inconsistent."""

    code = Status.INTERNAL
    kind = "ROLLBACK_INCOMPLETE"
    exit_code = 3


class ModelControlOff(PlatformError):
    """Triton runs without explicit model control, so it would refuse every load: said before
    anything is touched, naming the chart value that turns it on."""

    code = Status.FAILED_PRECONDITION
    kind = "MODEL_CONTROL_OFF"


class RolloutLocked(PlatformError):
    """Another rollout holds the release's Lease: two would interleave their loads."""

    code = Status.FAILED_PRECONDITION
    kind = "ROLLOUT_LOCKED"
