"""What each authenticated client may do: pipelines, the highest priority, a rate limit.

``IMAGING_CLIENT_POLICY_FILE`` is YAML, one entry per client name (the names of the API-keys
file or the certificates' common names; ``"*"`` for everyone else, ``""`` is the anonymous
caller of a gateway without keys)::

    reading-room:
      pipelines: [cxr_pneumonia, mri_brain_extraction]  # absent: every pipeline
      max_priority: DEFAULT                             # ROUTINE < DEFAULT < URGENT
      rate: {per_second: 2, burst: 10}                  # absent: no limit

With a policy file a client that has no entry (and no ``"*"``) is refused: a new key does not
silently get every right. Without one, every authenticated caller may do everything.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from services.common.errors import PermissionDenied, RateLimited, quote_prefix
from services.common.results import RequestPriority


class Rate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class ClientPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipelines: list[str] | None = None
    max_priority: RequestPriority = RequestPriority.URGENT
    rate: Rate | None = None


class _Bucket:
    """A token bucket: ``burst`` calls at once, refilled at ``per_second``."""

    def __init__(self, rate: Rate) -> None:
        self._rate = rate
        self._tokens = float(rate.burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(
            self._rate.burst, self._tokens + (now - self._stamp) * self._rate.per_second
        )
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class PolicyBook:
    """The policy file's entries and each client's bucket."""

    def __init__(self, policies: dict[str, ClientPolicy] | None) -> None:
        self._policies = policies  # None: no policy file, everyone may do everything
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path | None) -> PolicyBook:
        if path is None:
            return cls(None)
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of client name to policy")
        return cls(
            {str(name): ClientPolicy.model_validate(entry or {}) for name, entry in raw.items()}
        )

    def _policy(self, client: str) -> tuple[str, ClientPolicy]:
        if self._policies is None:
            return client, ClientPolicy()
        for name in (client, "*"):
            if name in self._policies:
                return name, self._policies[name]
        raise PermissionDenied("this client has no policy on this gateway")

    def admit(self, client: str, priority: RequestPriority, pipeline: str = "") -> None:
        """A call's rate and priority (and its pipeline, when named up front)."""
        name, policy = self._policy(client)
        if priority.rank > policy.max_priority.rank:
            raise PermissionDenied(
                f"this client may ask for priority {policy.max_priority.name} at most"
            )
        if pipeline:
            self.allow_pipeline(client, pipeline)
        if policy.rate is not None:
            with self._lock:
                bucket = self._buckets.setdefault(
                    name if name != "*" else f"*{client}", _Bucket(policy.rate)
                )
                allowed = bucket.take()
            if not allowed:
                raise RateLimited(
                    f"rate limit of {policy.rate.per_second:g} studies/s (burst "
                    f"{policy.rate.burst}) reached; retry later"
                )

    def allow_pipeline(self, client: str, pipeline: str) -> None:
        """Whether the client may run ``pipeline`` (checked again after routing)."""
        _, policy = self._policy(client)
        if policy.pipelines is not None and pipeline not in policy.pipelines:
            raise PermissionDenied(f"this client may not run pipeline {quote_prefix(pipeline)}")
