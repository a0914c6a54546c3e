"""Ports for the external programs tests start, without the bind-release race.

The platform's own services bind port 0 and report the port they got. A program that can do
the same is started that way (Prometheus logs the address it listens on). One that cannot
(tritonserver, Orthanc) must be given a port picked beforehand, "free a moment ago", which
another process may take before the program binds it. :func:`start_all` therefore starts
such programs on freshly picked ports and, when one says its address is already in use, stops
it and starts it again on new ones (at most ``ATTEMPTS`` times), polling observable state
(the process, its log, its readiness) with a deadline, as tests/waiting.py does.

An address that must have nothing listening on it (a dead peer) is :func:`refused_port`: a
socket bound, never listening, for as long as the test needs it, so no one else can take the
port and every connection to it is refused.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from waiting import wait_until

ATTEMPTS = 3
# What a program logs when a port it was given is taken, compared without case: Go's (e.g.
# Prometheus) "bind: address already in use", tritonserver's "Address already in use",
# Orthanc's "The TCP port of the HTTP server is privileged or already in use".
PORT_TAKEN = "already in use"
LOG_TAIL = 3000


_picked: set[int] = set()


def pick_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` a moment ago, and never picked before by this process (two
    programs started at once never get the same one). Another process may take it before it
    is bound again: only for a program started through :func:`start_all`, which retries."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _picked:
            _picked.add(port)
            return port


@contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``host`` that nobody listens on until the block ends: bound here (without
    SO_REUSEADDR, so no one else can bind it) and never listening, so connections to it are
    refused."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])


class PortTaken(RuntimeError):
    """A program's port was taken on every attempt."""


class Launch(Protocol):
    """One external program, or a group of them started together, on ports it picks."""

    @property
    def name(self) -> str: ...

    def spawn(self, attempt: int) -> Sequence[tuple[subprocess.Popen[Any], Path]]:
        """Pick fresh ports (:func:`pick_port`) and start, without waiting; the processes
        started, each with the log it writes. ``attempt`` counts from 1: a retry writes a log
        of its own (:func:`for_attempt`), so that what an earlier attempt logged is not read
        as this one's, and may need a fresh folder if the stopped processes held files."""
        ...

    def ready(self) -> bool:
        """Whether it answers on its ports (polled; never raises for "not yet"), in its own
        protocol: another program that took a port must not pass for it."""
        ...

    def stop(self) -> None:
        """Stop what the latest spawn started and wait for it; nothing if it is not running
        (or never started)."""
        ...


def for_attempt(path: Path, attempt: int) -> Path:
    """``path`` on the first attempt; beside it, the attempt's number added, on a retry
    (``tritonserver.log`` -> ``tritonserver.log.attempt2``)."""
    return path if attempt == 1 else path.with_name(f"{path.name}.attempt{attempt}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-LOG_TAIL:]
    except FileNotFoundError:
        return ""


def _says_port_taken(log: Path) -> bool:
    try:
        return PORT_TAKEN in log.read_text(errors="replace").lower()
    except FileNotFoundError:
        return False


class _Attempt:
    """One start of one launch: its processes and logs, and when it began."""

    def __init__(self, launch: Launch, number: int) -> None:
        self.launch = launch
        self.number = number
        self.began = time.monotonic()
        self.watched = list(launch.spawn(number))

    def state(self) -> str:
        """Its state: "taken" (a port was: start again), "ready" or "starting"; RuntimeError
        when a process exited for another reason."""
        if any(_says_port_taken(log) for _, log in self.watched):
            return "taken"
        for process, log in self.watched:
            code = process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.launch.name} exited with status {code} while starting; "
                    f"{log}:\n{_tail(log)}"
                )
        return "ready" if self.launch.ready() else "starting"

    def logs(self, tails: bool = False) -> str:
        if tails:
            return "\n".join(f"{log}:\n{_tail(log)}" for _, log in self.watched)
        return ", ".join(str(log) for _, log in self.watched)


def start_all(launches: Sequence[Launch], timeout: float, attempts: int = ATTEMPTS) -> None:
    """Start every launch at once and wait until each is ready, each attempt within
    ``timeout`` seconds. One whose log says a port is already in use is stopped and started
    again on new ports, at most ``attempts`` times in all (then :class:`PortTaken`); one that
    exits for another reason fails the start at once, with its log. On any failure every
    launch is stopped before the error is raised."""
    try:
        starting = [_Attempt(launch, 1) for launch in launches]

        def all_ready() -> bool:
            for attempt in list(starting):
                state = attempt.state()
                if state == "ready":
                    starting.remove(attempt)
                elif state == "taken":
                    attempt.launch.stop()
                    if attempt.number >= attempts:
                        raise PortTaken(
                            f"{attempt.launch.name}: a port was already in use on each of "
                            f"{attempts} attempts; see {attempt.logs()}"
                        )
                    starting.remove(attempt)
                    starting.append(_Attempt(attempt.launch, attempt.number + 1))
                elif time.monotonic() - attempt.began > timeout:
                    raise AssertionError(
                        f"after {timeout:g} s: {attempt.launch.name} not ready; "
                        f"{attempt.logs(tails=True)}"
                    )
            return not starting

        # Each attempt has ``timeout`` of its own (checked above); this bounds them all.
        wait_until(all_ready, timeout * attempts + 1, "not every program started")
    except BaseException:
        for launch in launches:
            launch.stop()
        raise
