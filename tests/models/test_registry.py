"""The model registry's own fields (services/registry.py): what a version's text fields store is cleaned and
bounded by the one text helper, like every other text the console stores."""

from __future__ import annotations

import pytest

from console.services import registry
from console.services.errors import InvalidInput
from db import model_versions as versions_q


def test_a_versions_text_fields_are_stored_cleaned(ctx, make_user) -> None:  # noqa: ANN001
    ada = make_user("ada", "admin")
    view = registry.register(ctx, ada, name="hub-v1", source="org/model", revision=" v1.2\x00 ", dtype=None,
                             max_model_len=None, engine_args=None, description="  notes \ud800 ")
    assert (view.revision, view.description) == ("v1.2", "notes \ufffd")
    with ctx.db.session(readonly=True) as s:
        stored = versions_q.get_model_version_by_name(s, "hub-v1")
        assert stored is not None and (stored.revision, stored.description) == ("v1.2", "notes \ufffd")


@pytest.mark.parametrize(("field", "value", "message"), [
    pytest.param("description", "x" * 2001, "The notes field has 2,001 characters; the limit is 2,000", id="notes-too-long"),
    pytest.param("revision", "r" * 201, "The revision has 201 characters; the limit is 200", id="revision-too-long"),
])
def test_an_over_long_field_is_refused_and_nothing_is_registered(ctx, make_user, field, value, message) -> None:  # noqa: ANN001
    fields = {"name": "hub-v2", "source": "org/model", "revision": "v1", "dtype": None, "max_model_len": None,
              "engine_args": None, "description": None, field: value}
    with pytest.raises(InvalidInput, match=message):
        registry.register(ctx, make_user("ada", "admin"), **fields)
    with ctx.db.session(readonly=True) as s:
        assert versions_q.get_model_version_by_name(s, "hub-v2") is None
