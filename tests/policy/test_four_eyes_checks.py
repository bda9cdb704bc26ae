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


def test_a_request_id_is_a_positive_whole_number():
    assert four_eyes.chosen_id(3, "an export request") == 3
    for bad in (0, -1, True, "3", 3.0, None):
        with pytest.raises(InvalidInput) as refused:
            four_eyes.chosen_id(bad, "an erasure request")
        assert str(refused.value) == "Choose an erasure request."


def test_a_request_in_one_of_the_statuses_still_open_may_be_withdrawn():
    approved = _request("approved")
    assert four_eyes.ensure_found(approved, 7, "export request") is approved
    with pytest.raises(NotFound) as gone:
        four_eyes.ensure_found(None, 7, "export request")
    assert str(gone.value) == "There is no export request #7."
    still = ("pending", "approved")
    assert four_eyes.ensure_pending(approved, 7, "export request", "Export request", still=still) is approved
    with pytest.raises(InvalidInput) as used:
        four_eyes.ensure_pending(_request("used"), 7, "export request", "Export request", still=still)
    assert str(used.value) == "Export request #7 is already used."


def test_the_requester_check_says_what_only_the_requester_may_do():
    shell_request = _request(requested_by_id=None)  # asked from the shell: no console account is its requester
    for request, who in ((_request(requested_by_id=1), BOB), (shell_request, ALICE)):
        with pytest.raises(AccessDenied) as refused:
            four_eyes.ensure_requester(request, who, "the person who asked for a raw-text export", "run it",
                                       otherwise=None)
        assert str(refused.value) == "Only the person who asked for a raw-text export can run it."
    four_eyes.ensure_requester(_request(requested_by_id=2), BOB, "the person who asked for an erasure", otherwise=None)
