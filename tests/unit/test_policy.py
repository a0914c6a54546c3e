"""Per-client policy: pipelines, highest priority, token-bucket rate limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import PermissionDenied, RateLimited
from services.common.results import RequestPriority
from services.gateway import policy
from services.gateway.policy import PolicyBook

POLICY = """
reading-room:
  pipelines: [cxr_pneumonia]
  max_priority: DEFAULT
  rate: {per_second: 1, burst: 2}
research:
  {}
"""


@pytest.fixture
def book(tmp_path: Path) -> PolicyBook:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return PolicyBook.load(path)


def _refusals(book: PolicyBook) -> list[str]:
    """Every client x priority x pipeline call, 20 times over (past any burst): the refusals."""
    refused = []
    for client in ("anyone", "reading-room", "research", ""):
        for priority in RequestPriority:
            for pipeline in ("", "cxr_pneumonia", "us_breast", "no_such_pipeline"):
                for _ in range(20):
                    try:
                        book.admit(client, priority, pipeline)
                        book.allow_pipeline(client, pipeline or "mri_brain_extraction")
                    except (PermissionDenied, RateLimited) as err:
                        refused.append(f"{client} {priority.name} {pipeline}: {err.reason}")
    return refused


def test_without_a_policy_file_everything_is_allowed(book: PolicyBook) -> None:
    assert _refusals(PolicyBook.load(None)) == []
    # The same calls do meet every kind of refusal once a policy file is loaded.
    refused = "\n".join(_refusals(book))
    for reason in ("no policy", "may not run pipeline", "priority DEFAULT at most", "rate limit"):
        assert reason in refused


def test_a_client_without_an_entry_is_refused(book: PolicyBook) -> None:
    with pytest.raises(PermissionDenied, match="no policy"):
        book.admit("stranger", RequestPriority.DEFAULT)


def test_pipelines_are_limited_before_and_after_routing(book: PolicyBook) -> None:
    book.admit("reading-room", RequestPriority.DEFAULT, "cxr_pneumonia")
    with pytest.raises(PermissionDenied, match="may not run pipeline 'us_breast'"):
        book.admit("reading-room", RequestPriority.DEFAULT, "us_breast")
    with pytest.raises(PermissionDenied, match="may not run pipeline 'mri_brain_extraction'"):
        book.allow_pipeline("reading-room", "mri_brain_extraction")
    book.allow_pipeline("research", "mri_brain_extraction")


def test_the_highest_priority_is_enforced(book: PolicyBook) -> None:
    book.admit("reading-room", RequestPriority.ROUTINE)
    with pytest.raises(PermissionDenied, match="priority DEFAULT at most"):
        book.admit("reading-room", RequestPriority.URGENT)
    book.admit("research", RequestPriority.URGENT)


def test_the_rate_limit_is_a_token_bucket(
    book: PolicyBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(policy.time, "monotonic", lambda: now[0])
    fresh = PolicyBook(book._policies)
    fresh.admit("reading-room", RequestPriority.DEFAULT)
    fresh.admit("reading-room", RequestPriority.DEFAULT)  # the burst of 2
    with pytest.raises(RateLimited, match="rate limit of 1 studies/s"):
        fresh.admit("reading-room", RequestPriority.DEFAULT)
    now[0] += 1.0  # one token back
    fresh.admit("reading-room", RequestPriority.DEFAULT)
    with pytest.raises(RateLimited):
        fresh.admit("reading-room", RequestPriority.DEFAULT)
    for _ in range(50):
        fresh.admit("research", RequestPriority.DEFAULT)  # no limit of its own


def test_a_malformed_policy_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("reading-room:\n  max_priority: HIGHEST\n")
    with pytest.raises(ValueError, match="max_priority"):
        PolicyBook.load(path)
    path.write_text("reading-room:\n  rate: {per_second: 0, burst: 1}\n")
    with pytest.raises(ValueError, match="per_second"):
        PolicyBook.load(path)


def test_a_refused_pipeline_name_is_quoted_short(book: PolicyBook) -> None:
    with pytest.raises(PermissionDenied) as caught:
        book.admit("reading-room", RequestPriority.DEFAULT, "b" * 2**20)
    assert len(caught.value.reason) < 200 and f"({2**20} characters)" in caught.value.reason
