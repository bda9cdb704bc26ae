"""The README and the manual in docs/ stay true to the code: the README stays one short read, every command they
show parses with the real command line, every setting is documented, every link and every repository path they
name exists, and the role matrix is the one the access layer enforces."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from console import cli
from console.services.access import ACTIONS
from console.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 200

# A placeholder in a synopsis and a value that its option's type accepts.
PLACEHOLDERS = {"N": "1", "ISO": "2026-01-01T00:00", "JSON": "{}"}
PATH_PREFIXES = ("console/", "engine/", "db/", "bench/", "tests/", "scripts/")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _parser() -> argparse.ArgumentParser:
    """The argparse tree exactly as ``llm-console`` builds it (commands of other packages included)."""
    return cli.build_parser()


def _code_blocks(text: str) -> Iterator[str]:
    for match in re.finditer(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        yield match.group(1)


def _block_commands(text: str) -> Iterator[str]:
    """Commands in fenced code blocks: a line starting with ``llm-console`` (or its path in .venv), continued by
    a trailing backslash, without the comment after ``#``."""
    for block in _code_blocks(text):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not re.match(r"(\.venv/bin/)?llm-console\b", line):
                continue
            while line.endswith("\\") and i < len(lines):
                line = line[:-1] + " " + lines[i].strip()
                i += 1
            yield re.sub(r"\s+#\s.*$", "", line).strip()


def _inline_commands(text: str) -> Iterator[str]:
    """Commands in inline code (which may wrap over a line break)."""
    prose = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    for match in re.finditer(r"`((?:\.venv/bin/)?llm-console [^`]+)`", prose):
        yield " ".join(match.group(1).split())


def _variants(synopsis: str) -> list[list[str]]:
    """Concrete command lines for a synopsis: optional ``[...]`` parts left out, and each put in alone (each of its
    ``a | b`` alternatives); ``a|b|c`` choices tried in turn; placeholders given values their types accept."""
    synopsis = re.sub(r"^(\.venv/bin/)?llm-console\s*", "", synopsis)
    groups = re.findall(r"\[([^\[\]]*)\]", synopsis)
    skeleton = re.sub(r"\[[^\[\]]*\]", "\0", synopsis)

    def fill(chosen: dict[int, str]) -> str:
        parts = iter(range(len(groups)))
        return re.sub("\0", lambda _: chosen.get(next(parts), ""), skeleton)

    lines = [fill({})]
    for index, group in enumerate(groups):
        lines += [fill({index: alternative.strip()}) for alternative in re.split(r"\s\|\s", group)]
    variants = []
    for line in lines:
        line = re.sub(r"(--[\w-]+ )\.\.\.", r"\1x", line).replace("...", "")  # an option's value, or "and so on"
        tokens = shlex.split(line)
        tokens = [PLACEHOLDERS.get(token, token) for token in tokens]
        width = max((token.count("|") + 1 for token in tokens), default=1)
        for k in range(width):
            variants.append([token.split("|")[min(k, token.count("|"))] for token in tokens])
    return variants


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _check_partial(tokens: list[str]) -> str | None:
    """Why ``tokens`` are not a command of the tree (None when they are), leaving out required arguments: prose
    names a command without all of them ("`llm-console audit export` writes ...")."""
    parser = _parser()
    rest = list(tokens)
    while rest and (children := _subparsers(parser)):
        if rest[0] not in children:
            return f"no command {rest[0]!r} (choices: {', '.join(children)})"
        parser = children[rest.pop(0)]
    if _subparsers(parser):
        return None  # a command group named on its own
    positionals = [a for a in parser._actions if not a.option_strings]
    used = 0
    while rest:
        token = rest.pop(0)
        if token.startswith("-"):
            action = parser._option_string_actions.get(token.split("=")[0])
            if action is None:
                return f"no option {token!r} on {parser.prog!r}"
            if action.nargs != 0 and "=" not in token:
                values = [rest.pop(0) for _ in range(action.nargs if isinstance(action.nargs, int) else 1) if rest]
                if action.choices and any(v not in action.choices for v in values):
                    return f"{token} {values} not among {list(action.choices)}"
        else:
            used += 1
            if used > len(positionals):
                return f"too many positional arguments for {parser.prog!r}: {tokens}"
    return None


def _check_full(tokens: list[str]) -> str | None:
    """Why ``tokens`` do not parse as a whole command line (None when they do)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _parser().parse_args(tokens)
    except SystemExit as exc:
        if exc.code:
            return err.getvalue().strip() or f"exit {exc.code}"
    return None


def _commands() -> list[tuple[str, str, bool]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        found += [(_rel(page), command, True) for command in _block_commands(text)]
        found += [(_rel(page), command, False) for command in _inline_commands(text)]
    return found


COMMANDS = _commands()


def test_readme_is_one_short_read() -> None:
    lines = README.read_text().count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/ (limit {README_MAX_LINES})"


def test_the_docs_show_commands() -> None:
    # The extraction below must keep finding them; an empty list would make the next test pass on nothing.
    assert len(COMMANDS) > 40
    assert {page for page, _, _ in COMMANDS} >= {"README.md", "docs/cli.md"}


@pytest.mark.parametrize(("page", "command", "whole"), COMMANDS,
                         ids=[f"{page}:{command[:60]}" for page, command, _ in COMMANDS])
def test_every_command_shown_parses_with_the_real_command_line(page: str, command: str, whole: bool) -> None:
    for tokens in _variants(command):
        if tokens in (["--help"], ["-h"]):
            continue
        problem = _check_full(tokens) if whole else _check_partial(tokens)
        assert problem is None, f"{page}: `{command}` as {tokens}: {problem}"


def test_every_setting_is_in_the_settings_page() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    missing = [setting.env for setting in SETTINGS if f"`{setting.env}`" not in text]
    assert not missing, f"docs/settings.md lacks {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    heading = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
        found += [(_rel(page), m.group(1)) for m in re.finditer(r"\]\(([^)\s]+)\)", text)]
    return found


def test_the_docs_link_each_other() -> None:
    assert len(_links()) > 20


@pytest.mark.parametrize(("page", "target"), _links(), ids=[f"{p}->{t}" for p, t in _links()])
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: str, target: str) -> None:
    if re.match(r"[a-z]+:", target):
        return  # http(s), mailto: not ours to check offline
    file_part, _, anchor = target.partition("#")
    path = (ROOT / page).parent / file_part if file_part else ROOT / page
    assert path.exists(), f"{page}: link to {target}: no {path.relative_to(ROOT)}"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{page}: link to {target}: no heading with that anchor"


def _paths() -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        for m in re.finditer(r"`([^`\s]+)`", page.read_text()):
            span = m.group(1).rstrip(".,:;")
            if span.startswith(PATH_PREFIXES) and not re.search(r"[<>*{}]", span):
                found.add((_rel(page), span))
    return sorted(found)


def test_the_docs_name_repository_paths() -> None:
    assert len(_paths()) > 20


@pytest.mark.parametrize(("page", "path"), _paths(), ids=[f"{p}:{t}" for p, t in _paths()])
def test_every_repository_path_named_in_backticks_exists(page: str, path: str) -> None:
    assert (ROOT / path).exists(), f"{page} names `{path}`, which is not in the repository (moved? see git log)"


def _modules_run() -> list[tuple[str, str]]:
    return sorted({(_rel(page), m.group(1)) for page in PAGES
                   for m in re.finditer(r"`python -m ([\w.]+)", page.read_text())})


@pytest.mark.parametrize(("page", "module"), _modules_run(), ids=[f"{p}:{m}" for p, m in _modules_run()])
def test_every_module_the_docs_run_exists_and_runs_as_a_script(page: str, module: str) -> None:
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.exists(), f"{page} runs `python -m {module}`, which is not in the repository"
    assert '__name__ == "__main__"' in path.read_text(), f"{page} runs `python -m {module}`, which runs nothing"


def _matrix() -> dict[str, tuple[str, set[str]]]:
    text = (ROOT / "docs" / "security.md").read_text()
    header = re.search(r"^\| action \| what it allows \|(.*)\|$", text, re.M)
    assert header, "docs/security.md has no role matrix"
    roles = [cell.strip() for cell in header.group(1).split("|")]
    rows = {}
    for m in re.finditer(r"^\| `([a-z_.]+)` \| ([^|]*) \|(.*)\|$", text, re.M):
        cells = [cell.strip() for cell in m.group(3).split("|")]
        rows[m.group(1)] = (m.group(2).strip(), {role for role, cell in zip(roles, cells, strict=True) if cell})
    return rows


def test_the_role_matrix_in_the_security_page_is_the_one_enforced() -> None:
    documented = _matrix()
    enforced = {action: (what, {str(getattr(role, "value", role)) for role in roles}) for action, (roles, what) in ACTIONS.items()}
    assert documented == enforced


def test_variants_expand_a_synopsis() -> None:
    assert _variants("llm-console init [--wait-for-all | --skip-models]") == [
        ["init"], ["init", "--wait-for-all"], ["init", "--skip-models"]]
    assert ["audit", "export", "--what", "exchanges", "--format", "jsonl"] in _variants(
        "llm-console audit export --what events|exchanges|decisions --format csv|jsonl|parquet")
    assert list(itertools.chain(*_variants("llm-console eval safety [--texts N]"))).count("1") == 1
    assert _variants("llm-console model rollback --reason ...") == [["model", "rollback", "--reason", "x"]]
    assert _variants("llm-console bench ...") == [["bench"]]


def test_the_engine_argument_allowlist_in_the_security_page_is_the_one_enforced() -> None:
    from engine.types import ALLOWED_ENGINE_ARGS

    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Engine arguments", 1)[1].split("\n## ", 1)[0]
    listed = section.split("`ALLOWED_ENGINE_ARGS`:", 1)[1].split(";", 1)[0]
    own_fields = {"dtype", "quantization", "max_model_len"}  # "have their own fields", said after the list
    assert set(re.findall(r"`(\w+)`", listed)) == set(ALLOWED_ENGINE_ARGS) - own_fields


def _leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest for choice in action._choices_actions if choice.help != argparse.SUPPRESS}
            hidden = set(action.choices) - listed  # e.g. the background demo build `run` starts
            for name, child in action.choices.items():
                if name not in hidden:
                    yield from _leaf_commands(child, (*path, name))
            return
    yield path


def test_the_cli_page_shows_every_command() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    leaves = list(_leaf_commands(_parser()))
    missing = [" ".join(leaf) for leaf in leaves
               if not re.search(r"llm-console " + r"\s+".join(map(re.escape, leaf)) + r"\b", text)]
    assert len(leaves) > 20
    assert not missing, f"docs/cli.md shows no `llm-console {missing[0]}` (missing: {missing})"
