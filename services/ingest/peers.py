"""Who may send studies: calling AE titles, the addresses each may call from, its quiet period.

``IMAGING_DICOM_PEERS_FILE`` (YAML)::

    peers:
      - ae_title: CT_SCANNER_1
        addresses: [10.20.0.0/16, 192.168.1.7]   # networks or single addresses
        quiet_seconds: 60                          # optional; default IMAGING_QUIET_SECONDS
      - ae_title: PACS_ROUTER
        addresses: [10.30.4.12]

An association from an AE title not listed, or from an address not listed for it, is rejected
at A-ASSOCIATE (PS3.8 9.3.4: "calling-AE-title-not-recognized", permanent), before any data.
Without a file, only loopback callers are admitted, under any AE title: a local stack accepts
the machine's own tools and nothing from the network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.dicom import checked_ae_title

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class Peer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: str
    addresses: list[str] = Field(min_length=1)
    quiet_seconds: float | None = Field(None, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return checked_ae_title(value)

    @field_validator("addresses")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    def networks(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(a, strict=False) for a in self.addresses)


class PeersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    peers: list[Peer] = []


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str  # why not, for the log (never the AE title or address themselves)
    quiet_seconds: float | None = None


class Peers:
    def __init__(self, peers: list[Peer] | None) -> None:
        # None: no file, loopback only
        self._peers = None if peers is None else {p.ae_title: p for p in peers}
        if peers is not None and len(self._peers or {}) != len(peers):
            raise ValueError("an AE title is listed twice in the peers file")

    @classmethod
    def load(cls, path: Path | None) -> Peers:
        if path is None:
            return cls(None)
        parsed = PeersFile.model_validate(yaml.safe_load(path.read_text()) or {})
        return cls(parsed.peers)

    @property
    def loopback_only(self) -> bool:
        return self._peers is None

    def admit(self, ae_title: str, address: str) -> Admission:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return Admission(False, "the peer's address is not an IP address")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self._peers is None:
            if any(ip in net for net in LOOPBACK):
                return Admission(True, "")
            return Admission(False, "no peers file: only loopback callers are admitted")
        peer = self._peers.get(ae_title.strip(" "))
        if peer is None:
            return Admission(False, "calling AE title not in the peers file")
        if not any(ip in net for net in peer.networks()):
            return Admission(False, "source address not listed for this calling AE title")
        return Admission(True, "", peer.quiet_seconds)
