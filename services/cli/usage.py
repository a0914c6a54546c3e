"""The CLI's one user-mistake error: said in one line on stderr, exit 2, never a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """A user's mistake (a missing file, a bad flag value): the message is the whole answer."""
