"""The checks promotion requests and policy change requests share (console.services.four_eyes), word for word as
each kind has always said them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from console.services import four_eyes
from console.services.access import Principal
from console.services.errors import AccessDenied, InvalidInput, NotFound

ALICE = Principal(1, "alice", frozenset({"admin"}))
BOB = Principal(2, "bob", frozenset({"admin"}))


def _request(status: str = "pending", requested_by_id: int = 1) -> SimpleNamespace:
    return SimpleNamespace(status=status, requested_by_id=requested_by_id)


@pytest.mark.parametrize(("what", "named", "missing", "decided"), [
    ("policy change request", "Policy change request", "There is no policy change request #7.",
     "Policy change request #7 is already approved."),
    ("promotion request", "Request", "There is no promotion request #7.", "Request #7 is already approved."),
])
def test_only_an_existing_pending_request_is_decided_and_each_kind_keeps_its_words(what, named, missing, decided):
    pending = _request()
    assert four_eyes.ensure_pending(pending, 7, what, named) is pending
    with pytest.raises(NotFound) as gone:
        four_eyes.ensure_pending(None, 7, what, named)
    assert str(gone.value) == missing
    with pytest.raises(InvalidInput) as done:
        four_eyes.ensure_pending(_request("approved"), 7, what, named)
    assert str(done.value) == decided


def test_only_the_requester_cancels_and_anybody_else_is_told_to_reject():
    four_eyes.ensure_requester(_request(requested_by_id=1), ALICE, "the person who asked for a promotion")
    with pytest.raises(AccessDenied) as refused:
        four_eyes.ensure_requester(_request(requested_by_id=1), BOB, "the admin who proposed a policy change")
    assert str(refused.value) == "Only the admin who proposed a policy change can cancel it; reject it instead."
