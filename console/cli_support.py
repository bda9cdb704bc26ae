"""What every ``llm-console`` command uses, the console's own (console/cli.py) and those other packages register
through the ``llm_console.commands`` entry point (bench/cli.py): the error a user can fix, the database context,
the shell principal every command acts as, argument types and result printing.

A package adds commands with a function ``register(subparsers)`` named in its pyproject.toml::

    [project.entry-points."llm_console.commands"]
    bench = "bench.cli:register"

Each command it adds sets ``func(args, settings)`` on its parser. A command that acts on the console's data calls
:func:`shell_context` first and then only ``@requires``-guarded services with the principal it returns; a command
that touches no console data (a benchmark on a throwaway database) says so with ``set_defaults(unguarded=WHY)``,
which tests/access/test_shell_principal.py reads.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from console.services.access import Principal
    from console.services.context import AppContext
    from console.settings import Settings

COMMANDS_ENTRY_POINT = "llm_console.commands"


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line instead of argparse's usage block.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def open_context(settings: Settings) -> AppContext:
    """The database (created and migrated when needed) and settings, without a principal: for the bootstrap
    commands only (``init`` and the processes that are the console). Everything else uses :func:`shell_context`."""
    from console.services.context import AppContext
    from db.config import DbConfig
    from db.database import Database, make_private_dir

    make_private_dir(settings.data_dir, tighten=True)  # the database, models and logs: owner-only
    db = Database(DbConfig(url=settings.database_url))
    db.migrate()
    return AppContext(settings, db)


def shell_context(args: argparse.Namespace, settings: Settings) -> tuple[AppContext, Principal]:
    """The context and the shell principal (``shell:<OS user>``) the command in ``args`` acts as.

    Refused (:class:`~console.services.errors.AccessDenied`, audited as ``access.denied`` naming the command) when
    the OS user cannot be named or its shell user is disabled, before the command does anything."""
    from console.services.access import Principal

    ctx = open_context(settings)
    return ctx, Principal.shell(ctx, f"llm-console {getattr(args, 'command_path', '')}".strip())


def leaf_commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command ``parser`` runs, by its words (``"user add"``), found by walking its sub-commands."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(leaf_commands(child, f"{path} {name}".strip()))
            return found
    return {path: parser}


def command_entry_points() -> list[EntryPoint]:
    """The ``llm_console.commands`` entry points of every installed distribution, by name.

    Read from each distribution's metadata rather than through ``entry_points()``, which keeps only the first copy
    of a distribution on ``sys.path``: a stale ``llm_console.egg-info`` in the working directory (from an older
    install) would otherwise hide the commands the installed metadata declares."""
    from importlib.metadata import distributions

    found: dict[str, EntryPoint] = {}
    for dist in distributions():
        for entry in dist.entry_points:
            if entry.group == COMMANDS_ENTRY_POINT:
                found.setdefault(entry.name, entry)
    return [found[name] for name in sorted(found)]


def registered_commands(subparsers: argparse._SubParsersAction[Parser]) -> list[str]:
    """Add the commands of every installed package's ``llm_console.commands`` entry point; returns their names."""
    names = []
    for entry in command_entry_points():
        entry.load()(subparsers)
        names.append(entry.name)
    return names


def positive(value: str) -> int:
    """An argparse type: a whole number greater than 0."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than 0")
    return number


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """A benchmark's or report's result: one JSON object, or ``key: value`` lines."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
