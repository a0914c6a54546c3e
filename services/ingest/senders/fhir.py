"""FHIR: a result's report to a FHIR server as one transaction that a re-send repeats harmlessly.

The gateway's FHIR document is an R4 collection Bundle (services/gateway/reports/fhir.py: a
DiagnosticReport, its Observations, the Device that made them; written with the R4B models of
fhir.resources, whose JSON for these resources is R4 JSON). A collection is not something a
server acts on, so it is turned into a **transaction** Bundle POSTed to the server's base URL:

- Every resource gets a stable identifier, system ``urn:imaging-platform:result``, value
  ``<result key>/<resource type>/<n>`` (n: its place among the resources of its type in the
  document, which the gateway builds in a fixed order), beside any identifier it already has.
  The DiagnosticReport is always ``<result key>/DiagnosticReport/0``.
- Every entry is a conditional create, ``request: {method: POST, url: <type>, ifNoneExist:
  identifier=<system>|<value>}``: the server creates the resource the first time and finds
  it (200, nothing new) every time after, so a retried or re-sent delivery creates nothing.
  The Device is shared by every result of the same model version: it is keyed by its own
  identifier (the DICOM Device UID) instead, so a server holds one Device per model version.
- Entries keep the document's ``urn:uuid:`` fullUrls and references between them: a server
  resolves those to the resources it created or found (FHIR R4 3.1.0.11.2 and 3.1.0.11.4).

A result that supersedes an earlier one of the same study (``Delivery.supersedes``: late
instances were analysed again) replaces the earlier report instead of adding a second one: its
DiagnosticReport is a conditional update, ``PUT DiagnosticReport?identifier=<system>|<earlier
result key>/DiagnosticReport/0``, with status ``amended`` (R4: "subsequent to being final, the
report has been modified"; the AI report was preliminary, but ``amended`` is the one status
that tells a reader the content changed after it was first sent, and ``corrected`` would claim
an error was fixed). The same resource, same id, is updated in place, so anything in the EHR
that points at it now sees the new content; it carries both results' identifiers, so a late
re-send of the earlier result finds it (and creates no second report) and a result that
supersedes this one finds it too. A cancelled report (a refused study) stays ``cancelled``.
If the server holds no earlier report (it never got it), the update creates one (R4 conditional
update, no match). The earlier result's Observations are left as they were; the amended report
references only the new ones.

The transaction Bundle is validated with fhir.resources before it is sent; a document that
does not make a valid one is a permanent failure (no retry would change it).
"""

from __future__ import annotations

import copy
import json
import urllib.parse
import uuid
from collections import Counter
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from services.ingest.delivery import Delivery, PermanentFailure
from services.ingest.destinations import FhirDestination
from services.ingest.senders.http import exchange

FHIR_JSON = "application/fhir+json"
SYSTEM = "urn:imaging-platform:result"
REPORT = "DiagnosticReport"
SHARED = "Device"  # keyed by its own identifier: one per model version, not one per result
KEEP_STATUS = {"cancelled", "entered-in-error"}


def identifier_value(result_key: str, resource_type: str, ordinal: int) -> str:
    """The ``urn:imaging-platform:result`` identifier of a result's ``ordinal``-th resource of
    ``resource_type``."""
    return f"{result_key}/{resource_type}/{ordinal}"


def report_identifier(result_key: str) -> str:
    """The identifier value of a result's DiagnosticReport (there is one per document)."""
    return identifier_value(result_key, REPORT, 0)


def search(system: str, value: str) -> str:
    """``identifier=<system>|<value>`` as a URL query (FHIR token search)."""
    token = f"{_escaped(system)}|{_escaped(value)}"
    return "identifier=" + urllib.parse.quote(token, safe=":/|")


def _escaped(text: str) -> str:
    # FHIR search escapes its separators with a backslash (R4 3.1.1.5.7).
    for ch in "\\|,$":
        text = text.replace(ch, "\\" + ch)
    return text


def _invalid(reason: str) -> PermanentFailure:
    return PermanentFailure(f"the FHIR document {reason}", "invalid FHIR document")


def _collection(data: bytes) -> list[dict[str, Any]]:
    """The entries of the gateway's collection Bundle, checked."""
    try:
        document = json.loads(data)
        Bundle.model_validate(document)
    except ValueError as err:  # JSON or pydantic (a ValidationError is a ValueError)
        raise _invalid(f"is not a valid FHIR R4 Bundle ({type(err).__name__})") from err
    if document.get("type") != "collection":
        raise _invalid(f"is a {document.get('type')!r} Bundle, not a collection")
    entries = document.get("entry") or []
    if not all(isinstance(e.get("resource"), dict) for e in entries):
        raise _invalid("has an entry without a resource")
    if not any(e["resource"].get("resourceType") == REPORT for e in entries):
        raise _invalid("has no DiagnosticReport")
    return [copy.deepcopy(e) for e in entries]


def _subject(labels: dict[str, str]) -> dict[str, Any] | None:
    """A Patient reference by identifier, where the destination's rule allows identity."""
    patient = labels.get("patient_id", "")
    if not patient:
        return None
    identifier: dict[str, Any] = {"value": patient}
    if labels.get("patient_issuer"):
        identifier["assigner"] = {"display": labels["patient_issuer"]}
    return {"type": "Patient", "identifier": identifier}


def transaction(
    data: bytes, result_key: str, supersedes: str = "", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The transaction Bundle for the gateway's collection Bundle ``data`` of result
    ``result_key`` (see the module's docstring), validated. ``labels`` with a ``patient_id``
    (a rule allowing identity): the report and observations name the patient by identifier."""
    subject = _subject(labels or {})
    entries = []
    seen: Counter[str] = Counter()
    for entry in _collection(data):
        resource = entry["resource"]
        kind = str(resource["resourceType"])
        if subject is not None and kind in (REPORT, "Observation"):
            resource["subject"] = subject
        ordinal = seen[kind]
        seen[kind] += 1
        identifiers = resource.setdefault("identifier", [])
        own = [i for i in identifiers if i.get("system") and i.get("value")]
        if kind == SHARED and own:
            key = (own[0]["system"], own[0]["value"])
        else:
            key = (SYSTEM, identifier_value(result_key, kind, ordinal))
            if {"system": key[0], "value": key[1]} not in identifiers:
                identifiers.append({"system": key[0], "value": key[1]})
        request: dict[str, str] = {"method": "POST", "url": kind, "ifNoneExist": search(*key)}
        if kind == REPORT and supersedes:
            earlier = report_identifier(supersedes)
            if {"system": SYSTEM, "value": earlier} not in identifiers:
                identifiers.append({"system": SYSTEM, "value": earlier})
            if resource.get("status") not in KEEP_STATUS:
                resource["status"] = "amended"
            request = {"method": "PUT", "url": f"{REPORT}?{search(SYSTEM, earlier)}"}
        full_url = entry.get("fullUrl") or f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, key[1])}"
        entries.append({"fullUrl": full_url, "resource": resource, "request": request})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    try:
        Bundle.model_validate(bundle)
    except ValidationError as err:
        raise _invalid(f"makes no valid transaction Bundle ({err.error_count()} errors)") from err
    return bundle


def _names(entries: list[dict[str, Any]]) -> str:
    counts = Counter(str(e["resource"]["resourceType"]) for e in entries)
    order = sorted(counts, key=lambda kind: (kind != REPORT, list(counts).index(kind)))
    names = [kind if counts[kind] == 1 else f"{counts[kind]} {kind}s" for kind in order]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def receipt(sent: dict[str, Any], answer: Any) -> str:
    """E.g. "DiagnosticReport, Device and 2 Observations: 0 created, 4 already there", from the
    transaction-response Bundle (its entries answer the request's, in order)."""
    entries = sent["entry"]
    names = _names(entries)
    answered = answer.get("entry") if isinstance(answer, dict) else None
    if (
        not isinstance(answered, list)
        or answer.get("type") != "transaction-response"
        or len(answered) != len(entries)
    ):
        return f"{names}: sent (the answer is not a transaction-response Bundle)"
    created = existing = updated = 0
    for request, response in zip(entries, answered, strict=True):
        status = str((response or {}).get("response", {}).get("status", ""))
        if status.startswith("201"):
            created += 1
        elif request["request"]["method"] == "PUT":
            updated += 1
        else:
            existing += 1
    text = f"{names}: {created} created, {existing} already there"
    return text + (f", {updated} updated" if updated else "")


class FhirSender:
    """Transactions to one :class:`FhirDestination`; blocking, never retrying by itself."""

    def __init__(self, destination: FhirDestination) -> None:
        self.destination = destination

    def send(self, delivery: Delivery) -> str:
        documents = [d for d in delivery.documents if d.kind == "fhir"]
        if not documents:
            return "no FHIR document to send"
        if len(documents) > 1:
            raise PermanentFailure(
                f"{len(documents)} FHIR documents in one result; one is expected",
                "invalid FHIR document",
            )
        bundle = transaction(
            documents[0].data, delivery.result_key, delivery.supersedes, delivery.labels
        )
        reply = exchange(
            "POST",
            self.destination.url.rstrip("/"),
            body=json.dumps(bundle).encode(),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            auth=self.destination.auth,
            ca_file=self.destination.ca_file,
            timeout=self.destination.timeout_seconds,
            table=self.destination.failures,
            what="FHIR transaction",
        )
        return receipt(bundle, reply.json())
