"""Senders: each delivers one :class:`~services.ingest.delivery.Delivery` to one destination."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.ingest.delivery import Sender
from services.ingest.destinations import (
    Destinations,
    DicomDestination,
    DicomWebDestination,
    FhirDestination,
)

if TYPE_CHECKING:
    from services.ingest.senders.dicom import Commitments


def senders_for(destinations: Destinations, commitments: Commitments) -> dict[str, Sender]:
    """One sender per destination of the file, by its type."""
    from services.ingest.senders.dicom import DicomSender
    from services.ingest.senders.dicomweb import DicomWebSender
    from services.ingest.senders.fhir import FhirSender

    senders: dict[str, Sender] = {}
    for name, destination in destinations.destinations.items():
        if isinstance(destination, DicomDestination):
            senders[name] = DicomSender(destination, commitments)
        elif isinstance(destination, DicomWebDestination):
            senders[name] = DicomWebSender(destination)
        elif isinstance(destination, FhirDestination):
            senders[name] = FhirSender(destination)
    return senders
