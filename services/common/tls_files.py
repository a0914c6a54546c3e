"""Which TLS files a process serves and dials with: a contract (paths only; settings hold one).

The gRPC credentials made from them are RPC plumbing (services/common/tls.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None and self.key is not None

    @property
    def dials_tls(self) -> bool:
        return self.ca is not None

    def check(self) -> None:
        """Refuse half a configuration at start-up rather than serve plaintext by mistake."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("IMAGING_TLS_CERT and IMAGING_TLS_KEY must be set together")
        for path in (self.cert, self.key, self.ca):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")


PLAINTEXT = TlsFiles()
