"""The secrets key: encrypts webhook URLs and signing secrets before they reach the database (Fernet: AES-128-CBC
with an HMAC-SHA256, from the ``cryptography`` package), so a dump or backup of the database does not hold them.

The key is a file outside the database (``LLM_CONSOLE_SECRETS_KEY_FILE``, default ``<data_dir>/secrets.key``),
created owner-only (0600) at first use, as the audit key is. While encrypted rows exist and the file is missing,
nothing makes a new key: :class:`SecretsKeyMissing` names the file (a new key would leave every stored webhook
unreadable). Every replica needs the same file.

Rows store which key encrypted them (``secret_key_id``, the first 12 hex digits of the key's SHA-256).
:func:`rotate_key` makes a new key, keeps the old one in ``<key file>.retired`` (so rows it encrypted stay readable
until they are re-encrypted, and as a backup), and re-encrypts every webhook with the new key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from console.services.access import Principal, requires
from console.services.context import AppContext
from console.services.errors import StorageUnavailable
from db import alerts as alerts_q
from db import audit as audit_q

logger = logging.getLogger(__name__)

PLAIN, FERNET = "plain", "fernet"
KEY_ID_CHARS = 12
MAX_REASON_CHARS = 2000
WRONG_KEY_HINT = "was LLM_CONSOLE_SECRETS_KEY_FILE changed?"


class SecretsKeyError(StorageUnavailable):
    """The secrets key cannot be used (missing, unreadable, or not the key that encrypted a webhook)."""


class SecretsKeyMissing(SecretsKeyError):
    """The key file is gone while webhooks encrypted with it exist."""


class SecretsKeyWrong(SecretsKeyError):
    """The key file holds another key than the one that encrypted this webhook."""


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:KEY_ID_CHARS]


def retired_file(key_file: Path) -> Path:
    """Where keys replaced by :func:`rotate_key` are kept (one per line, newest last)."""
    return key_file.with_name(key_file.name + ".retired")


def _read_keys(path: Path) -> list[bytes]:
    if path.stat().st_mode & 0o077:
        raise SecretsKeyError(f"The secrets key file {path} is readable by other users: chmod 600 it.")
    keys = [line.strip().encode("ascii") for line in path.read_text().splitlines() if line.strip()]
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            raise SecretsKeyError(f"The secrets key file {path} does not hold a Fernet key (32 url-safe base64 "
                                  "bytes per line).") from None
    if not keys:
        raise SecretsKeyError(f"The secrets key file {path} is empty.")
    return keys


@dataclass(frozen=True)
class SecretBox:
    """Encrypts with the current key; decrypts with the key a row names (the current one or a retired one)."""

    key: bytes = field(repr=False)
    retired: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def key_id(self) -> str:
        return key_id_of(self.key)

    def knows(self, key_id: str | None) -> bool:
        return key_id is not None and any(key_id_of(k) == key_id for k in (self.key, *self.retired))

    def encrypt(self, text: str) -> str:
        return Fernet(self.key).encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str, key_id: str | None, *, what: str = "this webhook") -> str:
        """The text of ``token``; :class:`SecretsKeyWrong` (with the key ids) when this box cannot decrypt it."""
        keys = [k for k in (self.key, *self.retired) if key_id is None or key_id_of(k) == key_id]
        for key in keys:
            try:
                return Fernet(key).decrypt(token.encode("ascii")).decode("utf-8")
            except (InvalidToken, ValueError):
                continue
        raise SecretsKeyWrong(f"the secrets key cannot decrypt {what}: {WRONG_KEY_HINT} (it was encrypted with key "
                              f"{key_id or 'unknown'}; the key file holds key {self.key_id})")

    @classmethod
    def load(cls, key_file: Path, *, create: bool) -> SecretBox:
        """The box of ``key_file`` (and its retired keys); with ``create``, a missing file is made (0600, never
        overwritten: of two processes making it at once, the second reads the first one's key)."""
        if not key_file.exists():
            if not create:
                raise SecretsKeyMissing(f"The secrets key file {key_file} does not exist.")
            key_file.parent.mkdir(parents=True, exist_ok=True)
            # Written whole to a private temporary file, then linked into place: a process that finds the file
            # never reads half a key, and of two making it at once the second gets FileExistsError and reads theirs.
            tmp = key_file.with_name(f".{key_file.name}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(Fernet.generate_key().decode("ascii") + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, key_file)
                logger.info("generated the secrets key %s", key_file)
            except FileExistsError:
                pass  # another process made it first: read theirs
            finally:
                tmp.unlink(missing_ok=True)
        try:
            current = _read_keys(key_file)[-1]
            old = retired_file(key_file)
            retired = tuple(_read_keys(old)) if old.exists() else ()
        except OSError as exc:
            raise SecretsKeyError(f"The secrets key file {key_file} cannot be read: {exc.strerror or exc}.") from None
        return cls(current, tuple(k for k in retired if k != current))


# --- the console's box ------------------------------------------------------------------------------------------

_CACHE: dict[Path, tuple[tuple[int, ...], SecretBox]] = {}
_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[int, ...]:
    """Changes whenever the key file or its retired file is replaced, written or chmod-ed."""
    out: list[int] = []
    for p in (path, retired_file(path)):
        try:
            st = p.stat()
        except FileNotFoundError:
            out += [0, 0, 0, 0]
        else:
            out += [st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]
    return tuple(out)


def _missing_error(ctx: AppContext, path: Path) -> SecretsKeyMissing | None:
    with ctx.db.session(readonly=True) as s:
        ids = alerts_q.encrypted_webhook_key_ids(s)
    if not ids:
        return None
    n = sum(ids.values())
    return SecretsKeyMissing(
        f"The secrets key file {path} is missing, but {n} webhook(s) are encrypted with key(s) "
        f"{', '.join(sorted(ids))}: {WRONG_KEY_HINT} Restore the file from your backup (chmod 600), or point "
        "LLM_CONSOLE_SECRETS_KEY_FILE at it. No new key is made while they exist (it could not read them); to give "
        "them up, delete those webhooks and add them again.")


def box(ctx: AppContext) -> SecretBox:
    """The box of ``ctx.settings.secrets_key_file``, made at first use; re-read when the file changes.

    :class:`SecretsKeyMissing` when the file is missing and encrypted webhooks exist (never a silent new key)."""
    path = ctx.settings.secrets_key_file
    with _LOCK:
        if not path.exists():
            _CACHE.pop(path, None)
            problem = _missing_error(ctx, path)
            if problem is not None:
                raise problem
        try:
            stamp = _stamp(path) if path.exists() else None
            cached = _CACHE.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            found = SecretBox.load(path, create=True)
            _CACHE[path] = (_stamp(path), found)
            return found
        except OSError as exc:
            raise SecretsKeyError(f"The secrets key file {path} cannot be read: {exc.strerror or exc}.") from None


def seal(ctx: AppContext, url: str, secret: str | None) -> dict[str, Any]:
    """The stored columns of a webhook's ``url`` and ``secret``: encrypted with the current key."""
    b = box(ctx)
    return {"url": b.encrypt(url), "secret": b.encrypt(secret) if secret else None, "secret_format": FERNET,
            "secret_key_id": b.key_id}


def open_hook(ctx: AppContext, hook: Any) -> tuple[str, str | None]:
    """The URL and secret of ``hook`` (a db.tables.Webhook) as entered; :class:`SecretsKeyError` when they cannot be
    decrypted. Called only where a webhook is sent to (the dispatcher, the test alert) and where it is changed."""
    if hook.secret_format == PLAIN:
        return hook.url, hook.secret
    try:
        b = box(ctx)
    except SecretsKeyMissing:
        raise SecretsKeyMissing(f"the secrets key cannot decrypt this webhook: {WRONG_KEY_HINT} (the key file "
                                f"{ctx.settings.secrets_key_file} is missing)") from None
    url = b.decrypt(hook.url, hook.secret_key_id)
    secret = b.decrypt(hook.secret, hook.secret_key_id) if hook.secret else None
    return url, secret


def readable(ctx: AppContext, hooks: list[Any]) -> str | None:
    """None when every one of ``hooks`` can be decrypted, else what is wrong (the page shows it)."""
    bad: list[str] = []
    problem = None
    for hook in hooks:
        try:
            open_hook(ctx, hook)
        except SecretsKeyError as exc:
            bad.append(hook.name)
            problem = problem or str(exc)
    if not bad:
        return None
    return (f"{len(bad)} webhook(s) cannot be sent to ({', '.join(bad[:5])}{', …' if len(bad) > 5 else ''}): "
            f"{problem}. Restore the key file {ctx.settings.secrets_key_file}, or enter each URL again.")


def encrypt_stored_secrets(ctx: AppContext) -> int:
    """At start-up: encrypt the webhooks still stored in plaintext (rows from before 0029); returns how many this
    call encrypted. Idempotent and safe with replicas starting at once: each row is changed by one conditional
    UPDATE (``secret_format = 'plain'``), so of two callers one encrypts it and the other changes nothing."""
    with ctx.db.session(readonly=True) as s:
        plain = alerts_q.plaintext_webhooks(s)
    if not plain:
        return 0
    b = box(ctx)
    done: list[str] = []
    with ctx.db.session() as s:
        for hook_id, name, url, secret in plain:
            if alerts_q.encrypt_plaintext_webhook(s, hook_id, url=b.encrypt(url),
                                                  secret=b.encrypt(secret) if secret else None, key_id=b.key_id):
                done.append(name)
        if done:
            audit_q.append_event(s, actor=alerts_q.ALERTS_ACTOR, action="webhook.secrets_encrypted",
                                 object_type="webhook", object_id=None,
                                 details={"webhooks": sorted(done), "key_id": b.key_id})
    if done:
        logger.info("encrypted the URL and secret of %s webhook(s) stored in plaintext", len(done))
    return len(done)


@requires("alerts.manage")
def rotate_key(ctx: AppContext, actor: Principal, reason: str | None = None) -> dict[str, Any]:
    """Make a new secrets key and re-encrypt every webhook with it (``llm-console alerts rotate-key``); audited as
    ``secrets.key_rotated``. The old key is kept in ``<key file>.retired``.

    Nothing changes unless every webhook can be decrypted first. Order: the old key is added to the retired file,
    then the new key replaces the key file, then the rows are re-encrypted in one transaction; a crash in between
    leaves every row readable (by the new key or a retired one), and running the command again finishes it."""
    from console.services.text import required_text

    text = required_text(reason, "the reason for the key rotation", MAX_REASON_CHARS, min_len=3) if reason else None
    path = ctx.settings.secrets_key_file
    old = box(ctx)
    with ctx.db.session(readonly=True) as s:
        for hook in alerts_q.list_webhooks(s):
            open_hook(ctx, hook)  # one that cannot be decrypted stops the rotation before anything changes
    new_key = Fernet.generate_key()
    with _LOCK:
        old_file = retired_file(path)
        kept = _read_keys(old_file) if old_file.exists() else []
        if old.key not in kept:
            audit_q.write_private_text(old_file, "".join(k.decode("ascii") + "\n" for k in (*kept, old.key)))
        audit_q.write_private_text(path, new_key.decode("ascii") + "\n")
        _CACHE.pop(path, None)
    new = box(ctx)
    assert new.key == new_key
    with ctx.db.session() as s:
        hooks = alerts_q.list_webhooks(s, for_update=True)
        for hook in hooks:  # read again here: a change made meanwhile is kept (the old key is a retired one now)
            url, secret = open_hook(ctx, hook)
            alerts_q.store_webhook_secrets(s, hook, **seal(ctx, url, secret))
        details = {"old_key_id": old.key_id, "new_key_id": new.key_id, "webhooks": len(hooks),
                   "retired_file": old_file.name}
        if text:
            details["reason"] = text
        audit_q.append_event(s, actor=actor.username, actor_id=actor.user_id, action="secrets.key_rotated",
                             object_type="secrets_key", object_id=None, details=details)
    return details
