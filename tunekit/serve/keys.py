"""API keys: `tunekit keys create|list|revoke`, and who a request's key belongs to.

A key is 32 random bytes (`tk-` + URL-safe base64). Only its SHA-256 is stored: a key that
random cannot be guessed from its hash, so a slow password hash would buy nothing, and the
lookup stays one indexed query per request. The key itself is shown once, at creation.

Each key has a name (unique) and an owner (by default its name). The owner is what files,
jobs and models belong to: several keys of one owner (a rotation, a second machine) see
the same things; revoking one leaves the others working.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from pathlib import Path

from tunekit.errors import ConfigError
from tunekit.serve import store

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check_name(what: str, name: str) -> None:
    # The owner is part of fine-tuned model names (ft:BASE:OWNER:SUFFIX:JOB), whose fields ':' separates.
    if not _NAME.match(name):
        raise ConfigError(f"{what} {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def create(root: Path, name: str, owner: str | None = None) -> str:
    """A new key named `name` for `owner` (default: `name`); returns the key, which is not kept."""
    owner = owner or name
    _check_name("key name", name)
    _check_name("owner", owner)
    key = "tk-" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    store.init(root)
    with store.connect(root) as db, store.transaction(db):
        row = db.execute("SELECT revoked_at FROM keys WHERE name = ?", (name,)).fetchone()
        if row is not None and row["revoked_at"] is None:
            raise ConfigError(f"a key named {name!r} exists; revoke it first (`tunekit keys revoke {name}`) or choose another name")
        db.execute("DELETE FROM keys WHERE name = ?", (name,))  # a revoked key's name may be reused
        store.insert(db, "keys", {"name": name, "owner": owner, "hash": hash_key(key), "created_at": store.now()})
    return key


def list_keys(root: Path) -> list[dict]:
    """Every key's name, owner, creation and revocation time (never the key or its hash)."""
    store.init(root)
    with store.connect(root) as db:
        return store.select(db, "SELECT name, owner, created_at, revoked_at FROM keys ORDER BY created_at, name")


def revoke(root: Path, name: str) -> None:
    store.init(root)
    with store.connect(root) as db, store.transaction(db):
        row = db.execute("SELECT revoked_at FROM keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [r["name"] for r in db.execute("SELECT name FROM keys WHERE revoked_at IS NULL")]
            raise ConfigError(f"no key named {name!r}; keys: {', '.join(known) or '(none)'} (`tunekit keys list`)")
        if row["revoked_at"] is None:
            db.execute("UPDATE keys SET revoked_at = ? WHERE name = ?", (store.now(), name))


def owner_of(db, key: str) -> str | None:
    """The owner of a live key, or None."""
    row = db.execute("SELECT owner FROM keys WHERE hash = ? AND revoked_at IS NULL", (hash_key(key),)).fetchone()
    return row["owner"] if row else None
