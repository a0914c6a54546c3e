"""The platform's version: pyproject.toml's, read from the installed package's metadata.

Declared once; the Dockerfile label and the chart's appVersion repeat it and a test compares
them (tests/supply_chain/test_version.py).
"""

from __future__ import annotations

from functools import cache
from importlib import metadata

DISTRIBUTION = "imaging-platform"


@cache
def platform_version() -> str:
    return metadata.version(DISTRIBUTION)
