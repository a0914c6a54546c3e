"""What each authenticated client may do: pipelines, the highest priority, a rate limit, and
whether it may say on whose behalf it sends a study (assert an origin).

``IMAGING_CLIENT_POLICY_FILE`` is YAML, one entry per client name (the names of the API-keys
file or the certificates' common names; ``"*"`` for everyone else, ``""`` is the anonymous
caller of a gateway without keys; ``"dicom:<calling AE title>"`` for the studies a relay
received from that DICOM sender)::

    reading-room:
      pipelines: [cxr_pneumonia, mri_brain_extraction]  # absent: every pipeline
      max_priority: DEFAULT                             # ROUTINE < DEFAULT < URGENT
      rate: {per_second: 2, burst: 10}                  # absent: no limit
    ingest:                                             # the DICOM ingest service
      assert_origin: true                               # may send AnalyzeRequest.origin
      rate: {per_second: 5, burst: 20}
    "dicom:CT_SCANNER_1":                               # studies it received from this AE
      pipelines: [mri_brain_extraction]

With a policy file a client that has no entry (and no ``"*"``) is refused: a new key does not
silently get every right. Without one, every authenticated caller may do everything except
assert an origin.

Origin: a relay that receives studies from others (the ingest service, over DICOM C-STORE)
names their sender in the request's ``origin``. The origin decides whose rights the study runs
under, so only a client whose entry says ``assert_origin: true`` may send one; any other
client, and every client of a gateway without a policy file, is refused (PERMISSION_DENIED)
before the origin is even read. An accepted origin is checked (InvalidInput where it is not a
DICOM AE title and an IP address; the value is never quoted); its study is then judged by the
entry ``dicom:<calling AE title>`` where the file has one, else by the relay's own entry, and
its rate limit counts per origin either way, so that one busy sender does not use up
another's. Entry names starting ``dicom:`` are meant for origins: give no client such a name.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from services.common.errors import InvalidInput, PermissionDenied, RateLimited, quote_prefix
from services.common.results import Origin, RequestPriority

# The policy entry of an origin's studies: ``dicom:`` and its calling AE title.
ORIGIN_PREFIX = "dicom:"
# An AE title once its leading and trailing spaces (padding) are stripped (PS3.5 6.2, VR AE):
# 1 to 16 characters of the default repertoire (printable ASCII) without backslash.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
# Longest textual IPv6 address (with an embedded IPv4 one): 45 characters.
_MAX_ADDRESS = 45


class Rate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class ClientPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pipelines: list[str] | None = None
    max_priority: RequestPriority = RequestPriority.URGENT
    rate: Rate | None = None
    # A relay that may say on whose behalf it sends a study (AnalyzeRequest.origin).
    assert_origin: bool = False


def checked_origin(origin: Origin) -> Origin:
    """``origin`` with its AE title's padding stripped; InvalidInput where it is not a DICOM AE
    title and an IP address. The reasons never quote the values: they name a site's device
    and address, and may be anything a caller sent."""
    title = origin.calling_ae_title.strip(" ")
    if not _AE_TITLE.fullmatch(title):
        raise InvalidInput(
            "origin.calling_ae_title is not a DICOM AE title: 1 to 16 characters besides "
            "leading and trailing spaces, printable ASCII without backslash, not only spaces"
        )
    address = origin.source_address
    try:
        parsed = ipaddress.ip_address(address) if len(address) <= _MAX_ADDRESS else None
    except ValueError:
        parsed = None
    # A zone (fe80::1%eth0) means nothing beyond the relay's host, and may hold any text.
    if parsed is None or getattr(parsed, "scope_id", None) is not None:
        raise InvalidInput(
            "origin.source_address is not an IP address (IPv4, or IPv6 without a zone)"
        )
    return Origin(title, address)


def origin_name(origin: Origin) -> str:
    """The policy entry (and rate-limit bucket) of an accepted origin's studies."""
    return ORIGIN_PREFIX + origin.calling_ae_title


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
        # (policy entry, the client or origin it stands for) -> bucket
        self._buckets: dict[tuple[str, str], _Bucket] = {}
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

    def _relay(self, client: str) -> ClientPolicy:
        """The policy of a client that asserts an origin; PermissionDenied unless it may."""
        if self._policies is None:
            raise PermissionDenied(
                "this gateway has no client policy file, so no client may assert a study's "
                "origin (that takes assert_origin: true in IMAGING_CLIENT_POLICY_FILE)"
            )
        _, policy = self._policy(client)
        if not policy.assert_origin:
            raise PermissionDenied(
                "this client may not assert a study's origin (its policy lacks assert_origin: true)"
            )
        return policy

    def accept_origin(self, client: str, origin: Origin) -> Origin:
        """The origin ``client`` asserts, checked (:func:`checked_origin`) once the client is
        known to be allowed to: anyone else learns nothing about what a valid one is."""
        self._relay(client)
        return checked_origin(origin)

    def _judged(
        self, client: str, origin: Origin | None
    ) -> tuple[tuple[str, str], ClientPolicy, str]:
        """(rate-limit bucket, policy, who the reasons name) of a call: the client's own, or
        an accepted origin's (its entry where there is one, else the relay's)."""
        if origin is None:
            name, policy = self._policy(client)
            # A "*" entry limits each client it stands for on its own.
            return (name, client), policy, "this client"
        relay = self._relay(client)
        who = origin_name(origin)
        own = (self._policies or {}).get(who)
        if own is not None:
            return (who, who), own, "studies from this origin"
        # The relay's entry stands for each origin on its own, as "*" does for clients.
        return (client, who), relay, "studies from this origin"

    def admit(
        self,
        client: str,
        priority: RequestPriority,
        pipeline: str = "",
        origin: Origin | None = None,
    ) -> None:
        """A call's rate and priority (and its pipeline, when named up front); ``origin``: one
        :meth:`accept_origin` accepted, whose rights then apply."""
        bucket_key, policy, who = self._judged(client, origin)
        if priority.rank > policy.max_priority.rank:
            raise PermissionDenied(f"{who} may ask for priority {policy.max_priority.name} at most")
        if pipeline:
            self.allow_pipeline(client, pipeline, origin)
        if policy.rate is not None:
            with self._lock:
                bucket = self._buckets.setdefault(bucket_key, _Bucket(policy.rate))
                allowed = bucket.take()
            if not allowed:
                raise RateLimited(
                    f"rate limit of {policy.rate.per_second:g} studies/s (burst "
                    f"{policy.rate.burst}) reached; retry later"
                )

    def allow_pipeline(self, client: str, pipeline: str, origin: Origin | None = None) -> None:
        """Whether the client (or the origin it speaks for) may run ``pipeline`` (checked
        again after routing)."""
        _, policy, who = self._judged(client, origin)
        if policy.pipelines is not None and pipeline not in policy.pipelines:
            raise PermissionDenied(f"{who} may not run pipeline {quote_prefix(pipeline)}")
