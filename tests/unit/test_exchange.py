"""The pixel exchange between decoder and preprocessor: shared memory, read once, swept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidInput, Misconfiguration
from services.common.exchange import PixelExchange
from services.common.images import SharedPixels


def test_pixels_go_in_and_come_out_once(tmp_path: Path) -> None:
    exchange = PixelExchange(tmp_path)
    pixels = np.arange(2 * 3 * 4, dtype=np.int16).reshape(1, 2, 3, 4) - 7
    handle = exchange.put(pixels)
    assert handle is not None and handle.shape == (1, 2, 3, 4) and handle.dtype == np.int16
    assert (tmp_path / handle.name).stat().st_mode & 0o777 == 0o600
    np.testing.assert_array_equal(exchange.take(handle), pixels)
    assert not list(tmp_path.iterdir())  # taken means deleted
    with pytest.raises(Misconfiguration, match="not found"):
        exchange.take(handle)


def test_handles_cannot_name_other_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 8)
    exchange = PixelExchange(tmp_path / "exchange")
    for name in ("../secret", str(secret), "px-../../secret", "px-" + "0" * 31 + "g"):
        with pytest.raises(InvalidInput, match="not one the decoder issues"):
            exchange.take(SharedPixels(name, np.dtype(np.uint8), (8,)))
    assert secret.exists()


def test_a_size_that_does_not_match_the_shape_is_refused(tmp_path: Path) -> None:
    exchange = PixelExchange(tmp_path)
    handle = exchange.put(np.zeros(10, np.uint8))
    assert handle is not None
    with pytest.raises(InvalidInput, match="needs 20"):
        exchange.take(SharedPixels(handle.name, np.dtype(np.uint16), (10,)))


def test_an_unusable_exchange_returns_no_handle(tmp_path: Path) -> None:
    assert PixelExchange(tmp_path / "absent").put(np.zeros(4, np.uint8)) is None
    assert PixelExchange(tmp_path / "absent").put_bytes(b"DICM") is None


def test_sweep_deletes_only_what_outlived_the_ttl(tmp_path: Path) -> None:
    exchange = PixelExchange(tmp_path, ttl_seconds=60)
    old, new = exchange.put_bytes(b"old"), exchange.put_bytes(b"new")
    assert old is not None and new is not None
    stale = time.time() - 120
    os.utime(tmp_path / old.name, (stale, stale))
    (tmp_path / "not-ours").write_bytes(b"kept")
    assert exchange.sweep() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, "not-ours"])
    assert exchange.take_bytes(new) == b"new"
