"""tests/ports.py: a program whose picked port was taken is started again on a new one.

The fake program is a real subprocess (this interpreter) that binds and listens on the port it
is given, or exits with Python's own "Address already in use" when that port is taken, which a
socket of the test holds for the attempts it chooses.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from ports import PORT_TAKEN, PortTaken, for_attempt, pick_port, refused_port, start_all

# Listens on argv[1] and tells each caller its pid until killed; with argv[2] == "fail",
# exits 3 at once.
FAKE = (
    "import os, socket, sys\n"
    "if sys.argv[2:] == ['fail']:\n"
    "    print('no model repository', flush=True); sys.exit(3)\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen()\n"
    "while True:\n"
    "    c = s.accept()[0]; c.sendall(str(os.getpid()).encode()); c.close()\n"
)


@contextmanager
def listening_socket() -> Iterator[int]:
    """A port taken by a listening socket of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _answer(port: int) -> bytes:
    """What the program on ``port`` says (b"": no answer; the test's own listening socket
    never accepts, so it says nothing)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as client:
            return client.recv(32)
    except OSError:
        return b""


class FakeLaunch:
    """The fake program on a picked port, except the attempts in ``taken`` get ``taken_port``
    (held by the test)."""

    def __init__(
        self, folder: Path, taken_port: int, taken: set[int], extra: tuple[str, ...] = ()
    ) -> None:
        self.name = "fake server"
        self.folder = folder
        self.taken_port = taken_port
        self.taken = taken
        self.extra = extra
        self.attempts: list[int] = []
        self.ports: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped: list[int] = []

    def spawn(self, attempt: int) -> list[tuple[subprocess.Popen[bytes], Path]]:
        port = self.taken_port if attempt in self.taken else pick_port()
        self.attempts.append(attempt)
        self.ports.append(port)
        log = for_attempt(self.folder / "fake.log", attempt)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", FAKE, str(port), *self.extra],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return [(self.process, log)]

    def ready(self) -> bool:
        """Answered by this launch's own process, as a real readiness check is by its
        protocol."""
        assert self.process is not None
        return _answer(self.ports[-1]) == str(self.process.pid).encode()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process is not None:
            self.stopped.append(self.process.returncode)


def test_a_taken_port_is_picked_again_and_the_program_started_again(tmp_path: Path) -> None:
    with listening_socket() as taken:
        fake = FakeLaunch(tmp_path, taken, taken={1})
        start_all([fake], timeout=20)
        try:
            assert fake.attempts == [1, 2]
            assert fake.ports[0] == taken and fake.ports[1] != taken
            assert PORT_TAKEN in (tmp_path / "fake.log").read_text().lower()
            assert fake.process is not None and fake.process.poll() is None
            assert _answer(fake.ports[1]) == str(fake.process.pid).encode()
        finally:
            fake.stop()


def test_a_port_taken_on_every_attempt_fails_after_three(tmp_path: Path) -> None:
    with listening_socket() as taken:
        fake = FakeLaunch(tmp_path, taken, taken={1, 2, 3, 4})
        with pytest.raises(PortTaken, match="3 attempts"):
            start_all([fake], timeout=20)
    assert fake.attempts == [1, 2, 3]
    assert (tmp_path / "fake.log.attempt3").exists()


def test_another_failure_is_not_retried_and_shows_the_log(tmp_path: Path) -> None:
    fake = FakeLaunch(tmp_path, 0, taken=set(), extra=("fail",))
    with pytest.raises(RuntimeError, match=r"(?s)status 3.*no model repository"):
        start_all([fake], timeout=20)
    assert fake.attempts == [1]


def test_launches_start_together_and_all_stop_if_one_fails(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with listening_socket() as taken:
        good = FakeLaunch(tmp_path / "a", taken, taken={1})
        bad = FakeLaunch(tmp_path / "b", 0, taken=set(), extra=("fail",))
        with pytest.raises(RuntimeError):
            start_all([good, bad], timeout=20)
    assert good.process is not None and good.process.poll() is not None
    assert good.stopped, "the launch that could start was stopped too"


def test_a_refused_port_refuses_and_cannot_be_taken() -> None:
    with refused_port() as port:
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", port))
