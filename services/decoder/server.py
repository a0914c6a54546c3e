"""Entry point of the DICOM decoder service."""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from dataclasses import dataclass

import grpc

from services.api.imaging.v1 import decoder_pb2, decoder_pb2_grpc
from services.common import logs, server
from services.common.exchange import PixelExchange
from services.common.listeners import Service
from services.common.settings import DecoderSettings
from services.decoder.dispatch import Decoding
from services.decoder.header import quiet_pydicom
from services.decoder.pool import DecoderPool
from services.decoder.servicer import STAGE, DecoderServicer

SERVICE_NAME = decoder_pb2.DESCRIPTOR.services_by_name["DicomDecoder"].full_name
log = logging.getLogger(__name__)


class _Sweeper(threading.Thread):
    """Deletes pixels in the exchange that no preprocessor took (e.g. a refused study)."""

    def __init__(self, exchange: PixelExchange) -> None:
        super().__init__(name="pixel-exchange-sweeper", daemon=True)
        self._exchange = exchange
        self._stopped = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stopped.wait(min(10.0, self._exchange.ttl_seconds / 2)):
            if removed := self._exchange.sweep():
                log.info("pixel exchange: deleted %d handle(s) nobody took", removed)

    def stop(self) -> None:
        self._stopped.set()


@dataclass
class RunningDecoder(server.RunningServer):
    """The gRPC server plus the worker pool it decodes in; stop() drains, then stops both."""

    pool: DecoderPool | None = None
    sweeper: _Sweeper | None = None

    def stop(self, grace: float) -> None:
        super().stop(grace)
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.pool is not None:
            self.pool.close()  # in-flight RPCs had their grace; cancel what is left


def start(settings: DecoderSettings, pool: DecoderPool | None = None) -> RunningDecoder:
    """Start the worker pool and serve (tests call this in-process, optionally with a pool)."""
    pool = pool or DecoderPool.from_settings(settings)
    limits = settings.limits()
    # Native syntaxes are decoded in this process too: pydicom must not quote values here
    # either (services/decoder/header.py checks them instead).
    quiet_pydicom()
    warnings.filterwarnings("ignore", module=r"pydicom\.")
    exchange = PixelExchange.configured(settings)

    def register(srv: grpc.Server) -> None:
        servicer = DecoderServicer(Decoding(pool, limits, exchange))
        decoder_pb2_grpc.add_DicomDecoderServicer_to_server(servicer, srv)

    try:
        pool.start()  # workers that cannot start fail the service now, not its first request
        running = server.start(Service.DECODER, settings, register, [SERVICE_NAME], (STAGE,))
    except BaseException:
        pool.close()
        raise
    fields = {f.name: getattr(running, f.name) for f in dataclasses.fields(running)}
    sweeper = _Sweeper(exchange) if exchange is not None else None
    return RunningDecoder(**fields, pool=pool, sweeper=sweeper)


def main() -> None:
    settings = DecoderSettings()
    logs.configure(settings.log_level)
    server.serve_forever(start(settings), settings.grace_seconds)


if __name__ == "__main__":
    main()
