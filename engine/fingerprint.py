"""Fingerprints of a model directory's weight, config and tokenizer files.

Taken when a version is registered and checked before it is loaded, so a file that changed under a registered
name is refused with a message naming it (a hub id is pinned by its revision instead).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path

# What decides a model's answers: weights, configs, tokenizer files, chat templates, LoRA adapters.
FINGERPRINTED = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.msgpack", "*.h5",
    "config.json", "generation_config.json", "*.jinja", "tokenizer*", "*.model", "*.tiktoken", "vocab*",
    "merges.txt", "special_tokens_map.json", "added_tokens.json", "adapter_config.json", "*.index.json",
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileHash:
    """One fingerprinted file: its path relative to the model directory, size in bytes and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Fingerprint:
    """A directory's fingerprint: sha256 over the sorted file list (path, size, sha256 of each file)."""

    sha256: str
    files: tuple[FileHash, ...]

    def as_records(self) -> list[dict[str, object]]:
        """The file list as plain dicts (for a JSON column)."""
        return [asdict(f) for f in self.files]


# (path, size, mtime_ns) -> sha256: a file not touched since it was hashed is not read again (weights are GBs).
_HASHES: dict[tuple[str, int, int], str] = {}


def _hash_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _HASHES.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _combined(files: Iterable[FileHash]) -> str:
    canonical = json.dumps([asdict(f) for f in files], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def fingerprint_dir(directory: str | Path) -> Fingerprint:
    """Hash the model files under ``directory`` (recursively, hidden files skipped).

    Raises FileNotFoundError if the directory does not exist and ValueError if it holds no model file.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if any(fnmatch(path.name, pattern) for pattern in FINGERPRINTED):
            files.append(FileHash(rel.as_posix(), path.stat().st_size, _hash_file(path)))
    if not files:
        raise ValueError(f"{root} holds no model files (weights, config or tokenizer)")
    return Fingerprint(_combined(files), tuple(files))


def changed_files(recorded: Sequence[FileHash | dict[str, object]], directory: str | Path) -> list[str]:
    """The files that differ from the recorded list: changed, missing or new (empty when none changed)."""
    before = {
        (f.path if isinstance(f, FileHash) else str(f["path"])): (
            (f.size, f.sha256) if isinstance(f, FileHash) else (f["size"], f["sha256"])
        )
        for f in recorded
    }
    try:
        now = {f.path: (f.size, f.sha256) for f in fingerprint_dir(directory).files}
    except (FileNotFoundError, ValueError):
        return sorted(before) or [str(directory)]
    out = [p for p, v in before.items() if now.get(p) != v]
    out += [p for p in now if p not in before]
    return sorted(out)
