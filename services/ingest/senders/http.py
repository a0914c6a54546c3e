"""HTTP plumbing shared by the DICOMweb and FHIR senders (standard library only).

One seam, :func:`exchange`, sends one request and turns everything that can go wrong on the way
into a :class:`~services.ingest.delivery.DeliveryFailure` classified by the destination's
failure table: an HTTP error status becomes ``http:<code>``, a timeout ``timeout``, anything
else on the connection (refused, reset, DNS, TLS handshake, a malformed answer) ``connection``.
A status the caller wants to read itself (STOW-RS 409, whose body says why) is passed back.

Secrets are read from their files at every send, so a rotated token or password is used
without a restart; the TLS context trusts the destination's ``ca_file`` (the system's
certificates without one). Redirects are not followed: the credentials must never travel to a
host the destination does not name, and a redirect is a misconfigured URL (``http:3xx``).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.ingest.delivery import DeliveryFailure, PermanentFailure, TransientFailure
from services.ingest.destinations import FailureTable, HttpAuth

# Reasons quote at most this much of an answer (a peer's error text, never document data).
_REASON_CHARS = 200


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; None where it is empty or not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def failure(table: FailureTable, failure: str, reason: str, status: str = "") -> DeliveryFailure:
    """``failure`` (``http:503``, ``dimse:0xA700``, ``timeout``, ...) as the exception the table
    says: permanent (dead letter now) or transient (retry later)."""
    kind = PermanentFailure if table.is_permanent(failure) else TransientFailure
    return kind(reason, status or failure)


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificate and host name checked; against ``ca_file`` where given."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def auth_headers(auth: HttpAuth | None, table: FailureTable) -> dict[str, str]:
    """The Authorization header, its secret read from its file now. An unreadable file is the
    ``credentials`` failure (transient unless the table lists it: a secret being rotated)."""
    if auth is None:
        return {}
    path = auth.bearer_token_file or auth.password_file
    if path is None:
        return {}
    try:
        secret = path.read_text().strip()
    except OSError as err:
        raise failure(
            table, "credentials", f"cannot read the secret file {path}: {err.strerror}"
        ) from err
    if not secret:
        raise failure(table, "credentials", f"the secret file {path} is empty")
    if auth.bearer_token_file is not None:
        return {"Authorization": f"Bearer {secret}"}
    token = base64.b64encode(f"{auth.username}:{secret}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError


def _opener(ca_file: Path | None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl_context(ca_file)), _NoRedirect()
    )


def _peer_text(body: bytes) -> str:
    """What a peer's error answer says, briefly: an OperationOutcome's issue codes, or the
    start of a text body (never binary, never long)."""
    try:
        answer = json.loads(body)
    except ValueError:
        text = " ".join(body[:_REASON_CHARS].decode("utf-8", "replace").split())
        return text if text.isprintable() else ""
    if isinstance(answer, dict) and answer.get("resourceType") == "OperationOutcome":
        issues = [i for i in answer.get("issue", []) if isinstance(i, dict)]
        codes = sorted({str(i.get("code", "?")) for i in issues})
        return f"OperationOutcome: {', '.join(codes)}" if codes else ""
    return ""


def exchange(
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
    auth: HttpAuth | None,
    ca_file: Path | None,
    timeout: float,
    table: FailureTable,
    what: str,
    accept: Collection[int] = (),
) -> Reply:
    """Send one request; its 2xx reply (or one with a status in ``accept``), else the
    classified failure. ``what`` names the request in reasons (e.g. "STOW-RS")."""
    request = urllib.request.Request(
        url, data=body, method=method, headers={**headers, **auth_headers(auth, table)}
    )
    try:
        with _opener(ca_file).open(request, timeout=timeout) as reply:
            return Reply(reply.status, dict(reply.headers.items()), reply.read())
    except urllib.error.HTTPError as err:
        data = _read(err)
        if err.code in accept:
            return Reply(err.code, dict(err.headers.items()) if err.headers else {}, data)
        said = _peer_text(data)
        reason = f"{what} to {url}: HTTP {err.code} {err.reason}" + (f" ({said})" if said else "")
        raise failure(table, f"http:{err.code}", reason, f"HTTP {err.code}") from err
    except urllib.error.URLError as err:
        cause = err.reason
        if isinstance(cause, TimeoutError):
            raise _timeout(table, what, url, timeout) from err
        raise failure(table, "connection", f"{what} to {url}: {_describe(cause)}") from err
    except TimeoutError as err:  # the answer was slower than the timeout
        raise _timeout(table, what, url, timeout) from err
    except (OSError, http.client.HTTPException) as err:
        # reset, a TLS error while reading, a malformed status line, a body cut short
        raise failure(table, "connection", f"{what} to {url}: {_describe(err)}") from err


def _read(err: urllib.error.HTTPError) -> bytes:
    try:
        return err.read()
    except (OSError, http.client.HTTPException):
        return b""


def _timeout(table: FailureTable, what: str, url: str, timeout: float) -> DeliveryFailure:
    return failure(table, "timeout", f"{what} to {url}: no answer within {timeout:g} s")


def _describe(cause: object) -> str:
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or cause}"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
