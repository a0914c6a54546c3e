"""A stand-in FHIR server for the tests, not a real one: no FHIR server is packaged on this
machine (HAPI and the like need a JVM and a download), so the FHIR sender's tests talk to this.

It does what a real server does with the requests the sender makes (FHIR R4 3.1.0.11 and the
conditional interactions): http.server on 127.0.0.1, port 0, in a thread, answering POST
transaction Bundles at its base URL. Every Bundle and every resource in it is validated with
fhir.resources (R4B, as the gateway writes; 400 and an OperationOutcome when invalid). In a
transaction, POST entries are processed before PUT entries (R4 3.1.0.11.2); a POST with
``ifNoneExist: identifier=<system>|<value>`` finds a resource with that identifier (200, nothing
created) or creates one (201); a PUT ``<Type>?identifier=<system>|<value>`` updates the one
matching resource in place (200) or creates one (201); more than one match is 412. References
to an entry's ``urn:uuid:`` fullUrl are rewritten to the resource created or found, and one
left unresolved fails the transaction (400). A transaction is all or nothing. Resources live in
memory, readable through :meth:`FhirStandIn.resources`; :meth:`FhirStandIn.fail_next` makes
the next requests answer an error status (a server down, a refusal).
"""

from __future__ import annotations

import copy
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

FHIR_JSON = "application/fhir+json"
BASE_PATH = "/fhir"
Store = dict[str, dict[str, dict[str, Any]]]  # type -> id -> resource


class Rejected(Exception):
    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics


def outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


def _token(query: str) -> tuple[str, str]:
    """``identifier=<system>|<value>`` -> (system, value)."""
    params = urllib.parse.parse_qs(query, strict_parsing=True)
    if list(params) != ["identifier"] or len(params["identifier"]) != 1:
        raise Rejected(400, "not-supported", f"only identifier searches: {query!r}")
    system, bar, value = params["identifier"][0].partition("|")
    if not bar:
        raise Rejected(400, "invalid", f"identifier search without a system: {query!r}")
    return system.replace("\\|", "|"), value.replace("\\|", "|")


def _matching(store: Store, kind: str, system: str, value: str) -> list[str]:
    return [
        rid
        for rid, resource in store.get(kind, {}).items()
        if any(
            i.get("system") == system and i.get("value") == value
            for i in resource.get("identifier", [])
        )
    ]


def _rewrite(node: Any, resolved: dict[str, str]) -> None:
    """Every ``reference`` to a resolved fullUrl, as ``Type/id``; an unresolved urn:uuid one
    fails the transaction."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value.startswith("urn:"):
                if value not in resolved:
                    raise Rejected(400, "not-found", f"unresolved reference {value}")
                node[key] = resolved[value]
            else:
                _rewrite(value, resolved)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item, resolved)


@dataclass
class FhirStandIn:
    url: str = ""
    _store: Store = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failures: list[int] = field(default_factory=list)
    _next_id: int = 1
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status
    headers: list[dict[str, str]] = field(default_factory=list)

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` and an OperationOutcome."""
        with self._lock:
            self._failures.extend([status] * count)

    def resources(self, kind: str) -> list[dict[str, Any]]:
        """Copies of every resource of ``kind`` held, oldest first."""
        with self._lock:
            return copy.deepcopy(list(self._store.get(kind, {}).values()))

    def count(self) -> int:
        with self._lock:
            return sum(len(by_id) for by_id in self._store.values())

    def with_identifier(self, kind: str, system: str, value: str) -> list[dict[str, Any]]:
        with self._lock:
            ids = _matching(self._store, kind, system, value)
            return [copy.deepcopy(self._store[kind][rid]) for rid in ids]

    # -- what the handler calls --

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            status, answer = self._answer(method, path, body)
            self.requests.append((method, path, status))
            return status, answer

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if self._failures:
            status = self._failures.pop(0)
            return status, outcome("transient" if status >= 500 else "invalid", "told to fail")
        if method != "POST" or path.rstrip("/") != BASE_PATH:
            return 404, outcome("not-supported", f"only transactions at the base: {path}")
        try:
            return 200, self._transaction(body)
        except Rejected as err:
            return err.status, outcome(err.code, err.diagnostics)

    def _transaction(self, body: bytes) -> dict[str, Any]:
        try:
            bundle = json.loads(body)
            Bundle.model_validate(bundle)
            for entry in bundle.get("entry", []):
                resource = entry["resource"]
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except (ValueError, KeyError, TypeError) as err:  # ValidationError is a ValueError
            detail = str(err) if isinstance(err, ValidationError) else repr(err)
            raise Rejected(400, "invalid", f"invalid Bundle: {detail}") from err
        if bundle.get("type") != "transaction":
            raise Rejected(
                400, "not-supported", f"a {bundle.get('type')} Bundle, not a transaction"
            )
        entries = bundle.get("entry", [])
        store = copy.deepcopy(self._store)
        resolved: dict[str, str] = {}
        responses: list[dict[str, Any] | None] = [None] * len(entries)
        written: list[tuple[str, str]] = []
        order = sorted(range(len(entries)), key=lambda i: entries[i]["request"]["method"] != "POST")
        for index in order:
            entry = entries[index]
            request = entry["request"]
            resource = copy.deepcopy(entry["resource"])
            kind = resource["resourceType"]
            url, _, query = request["url"].partition("?")
            if url != kind:
                raise Rejected(400, "invalid", f"{request['url']} for a {kind}")
            if request["method"] == "POST":
                matches = (
                    _matching(store, kind, *_token(request["ifNoneExist"]))
                    if request.get("ifNoneExist")
                    else []
                )
            elif request["method"] == "PUT" and query:
                matches = _matching(store, kind, *_token(query))
            else:
                raise Rejected(400, "not-supported", f"{request['method']} {request['url']}")
            if len(matches) > 1:
                raise Rejected(412, "multiple-matches", f"{len(matches)} {kind}s match")
            if matches and request["method"] == "POST":
                rid, status = matches[0], "200 OK"
            else:
                if matches:
                    rid, status = matches[0], "200 OK"
                else:
                    rid, status = str(self._next_id), "201 Created"
                    self._next_id += 1
                resource["id"] = rid
                store.setdefault(kind, {})[rid] = resource
                written.append((kind, rid))
            if entry.get("fullUrl"):
                resolved[entry["fullUrl"]] = f"{kind}/{rid}"
            responses[index] = {"response": {"status": status, "location": f"{kind}/{rid}"}}
        for kind, rid in written:
            _rewrite(store[kind][rid], resolved)
        self._store = store
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}


class _Handler(BaseHTTPRequestHandler):
    standin: FhirStandIn

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.standin.headers.append(dict(self.headers.items()))
        status, answer = self.standin.answer(self.command, self.path, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests read FhirStandIn.requests instead


@contextmanager
def running_fhir_standin(tls: ssl.SSLContext | None = None) -> Iterator[FhirStandIn]:
    """The stand-in, listening until the block ends (over TLS with ``tls``, a server
    context); its ``url`` is the FHIR base URL."""
    standin = FhirStandIn()
    handler = type("Handler", (_Handler,), {"standin": standin})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    scheme = "http"
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    standin.url = f"{scheme}://127.0.0.1:{server.server_address[1]}{BASE_PATH}"
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fhir-standin", daemon=True
    )
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
