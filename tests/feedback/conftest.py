"""The watch window's fixtures (a switch from v1 to v2 with traffic before it), shared with tests/models."""

from tests.models.conftest import switched, team  # noqa: F401
