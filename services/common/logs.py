"""Logging set-up: one line per event with the request id; never patient data or pixels."""

from __future__ import annotations

import contextvars
import logging
import re

from services.common.errors import InvalidInput

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# A caller's own request id is logged and forwarded: short, and nothing but safe characters.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def is_safe_request_id(value: str) -> bool:
    return bool(_CLIENT_REQUEST_ID.fullmatch(value))


def adopt_client_request_id(client_id: str) -> str:
    """Make the caller's id (when given) this call's request id, for logs, inner calls and the
    error the caller may get; the id in use otherwise."""
    if not client_id:
        return request_id.get()
    if not is_safe_request_id(client_id):
        raise InvalidInput(
            "client_request_id must be 1 to 128 letters, digits or . _ : - characters"
        )
    request_id.set(client_id)
    return client_id


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(level: str = "INFO") -> None:
    """Called once from main(); libraries only create named loggers."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pydicom warns with tag values (which may be identifying) on odd files.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
