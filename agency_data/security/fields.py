"""Field encryption: chosen values encrypted by the layer before they reach PostgreSQL or Redis.

``encryption.fields`` names them: ``tasks.data``, ``tasks.result``, ``embeddings.content`` /
``embeddings.metadata`` (every collection; or ``<collection>.content``), ``sessions.data`` and
``cache.<namespace>`` (the values of one cache namespace).

Each value is AES-256-GCM under its tenant's active data key (:mod:`.keys`), with the tenant,
table, column and row id as associated data: a ciphertext copied to another row, column or
tenant fails to decrypt. What is stored says which key sealed it:

- in a JSON column or document: ``{"$enc": "v1:<key id>:<base64 nonce + ciphertext>"}``;
- in a text column: ``"$enc:v1:<key id>:<base64 ...>"``.

Values stored before a field was chosen stay readable as they are (and are encrypted when next
written, or by ``keys reencrypt``), so a field can be switched on without a migration.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag

from agency_data.config import EncryptionConfig
from agency_data.errors import ConfigError, DecryptionError
from agency_data.security.keys import KeyManager, Keyring, KeyStore, LocalKeyManager, parse_kek

__all__ = [
    "COLLECTION_COLUMNS",
    "SEALABLE",
    "FieldCipher",
    "cipher_from_config",
    "sealed_key",
    "sealed_limit",
]

# The columns that may hold sealed values, by table; every collection's table: COLLECTION_COLUMNS.
# Only these are ever read as sealed, whatever the others hold.
SEALABLE: dict[str, tuple[str, ...]] = {
    "tasks": ("data", "result", "error", "traceback"),
    "task_schedules": ("data",),
}
COLLECTION_COLUMNS = ("content", "metadata")
_TAG = "$enc"
_SEALED = re.compile(r"v1:k[0-9a-f]{12}:[A-Za-z0-9+/]+={0,2}\Z")
_TEXT_PREFIX = "$enc:"
_VERSION = "v1"
_NONCE = 12
# A sealed cache entry's bytes start so; the codec's own never do (they start with a flag).
_BYTES_PREFIX = b"\x00agency-enc1:"


def sealed_limit(size: int) -> int:
    """The most bytes a value of ``size`` takes sealed (base64 of nonce, ciphertext, tag)."""
    return (size + _NONCE + 16 + 2) * 4 // 3 + 64


def sealed_key(stored: Any) -> str | None:
    """The id of the data key that sealed ``stored``, or None if it is not encrypted."""
    token = _token(stored)
    return None if token is None else token.split(":", 2)[1]


def _token(stored: Any) -> str | None:
    # Only what this layer writes: a user's value that merely starts so stays a value.
    if isinstance(stored, dict) and len(stored) == 1:
        token = stored.get(_TAG)
        if isinstance(token, str) and _SEALED.match(token):
            return token
        return None
    if isinstance(stored, str) and stored.startswith(_TEXT_PREFIX):
        token = stored[len(_TEXT_PREFIX) :]
        return token if _SEALED.match(token) else None
    return None


class FieldCipher:
    """Seals and opens the chosen fields' values for one DataLayer."""

    def __init__(self, keyring: Keyring | None, fields: Iterable[str]) -> None:
        self.keyring = keyring
        self.fields = frozenset(fields)
        # Models whose rows may hold sealed values: their table and the columns that may (the
        # others are never read as sealed, whatever they hold).
        self.tables: dict[type, tuple[str, tuple[str, ...], str]] = {}

    @classmethod
    def off(cls) -> FieldCipher:
        """Encrypts nothing, and opens sealed values only to say they cannot be read."""
        return cls(None, ())

    def chosen(self, table: str, column: str) -> bool:
        """Whether ``table.column`` is encrypted (collections: by name or as ``embeddings``)."""
        if not self.fields:
            return False
        return f"{table}.{column}" in self.fields

    def seal(
        self,
        tenant: str,
        table: str,
        column: str,
        row_id: Any,
        value: Any,
        *,
        text: bool = False,
        key_id: str | None = None,
    ) -> Any:
        """``value`` encrypted for its place, in the form its column stores: a JSON object,
        or (``text``, for a text column) a string; under the tenant's active key, or
        ``key_id``."""
        if value is None or self.keyring is None:
            return value
        if key_id is None:
            key_id, aead = self.keyring.active(tenant)
        else:
            aead = self.keyring.get(tenant, key_id)
        nonce = secrets.token_bytes(_NONCE)
        sealed = aead.encrypt(nonce, orjson.dumps(value), _place(tenant, table, column, row_id))
        token = f"{_VERSION}:{key_id}:{base64.b64encode(nonce + sealed).decode()}"
        return _TEXT_PREFIX + token if text else {_TAG: token}

    def open(self, tenant: str, table: str, column: str, row_id: Any, stored: Any) -> Any:
        """The value ``stored`` holds, decrypted if it was sealed (else as it is)."""
        token = _token(stored)
        if token is None:
            return stored
        # The token matched the sealed form: v1:<key id>:<payload>.
        _, key_id, payload = token.split(":", 2)
        if self.keyring is None:
            raise DecryptionError(
                f"{table}.{column} of {row_id} is encrypted, and this DataLayer has no "
                "encryption.kek (or key manager) to read it"
            )
        aead = self.keyring.get(tenant, key_id)
        try:
            raw = base64.b64decode(payload, validate=True)
            plain = aead.decrypt(raw[:_NONCE], raw[_NONCE:], _place(tenant, table, column, row_id))
        except (InvalidTag, ValueError):
            raise DecryptionError(
                f"{table}.{column} of {row_id} did not decrypt: it was altered, or copied from "
                "another row or tenant"
            ) from None
        return orjson.loads(plain)

    def seal_bytes(self, tenant: str, place: str, key: str, data: bytes) -> bytes:
        """``data`` (a cache entry's encoded value) sealed for ``key`` of ``place``."""
        if self.keyring is None:
            return data
        key_id, aead = self.keyring.active(tenant)
        nonce = secrets.token_bytes(_NONCE)
        sealed = aead.encrypt(nonce, data, _place(tenant, "cache", place, key))
        return _BYTES_PREFIX + key_id.encode() + b":" + nonce + sealed

    def open_bytes(self, tenant: str, place: str, key: str, stored: bytes) -> bytes:
        """What :meth:`seal_bytes` sealed (``stored`` as it is when it was not sealed)."""
        if not stored.startswith(_BYTES_PREFIX):
            return stored
        key_id, sep, rest = stored[len(_BYTES_PREFIX) :].partition(b":")
        if not sep or self.keyring is None:
            raise DecryptionError(f"the cache entry {key} is encrypted, and cannot be read here")
        aead = self.keyring.get(tenant, key_id.decode())
        try:
            return aead.decrypt(rest[:_NONCE], rest[_NONCE:], _place(tenant, "cache", place, key))
        except InvalidTag:
            raise DecryptionError(
                f"the cache entry {key} did not decrypt: altered, or copied from another key"
            ) from None

    def open_rows(
        self, model: type, rows: list[dict[str, Any]], tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows loaded as ``model``, their sealed values opened (as they are when ``model``
        holds none); ``tenant`` for rows without a ``tenant_id`` column."""
        place = self.tables.get(model)
        if place is None:
            return rows
        table, columns, id_column = place
        return [
            self.open_row(str(row.get("tenant_id", tenant)), table, row, columns, id_column)
            for row in rows
        ]

    def open_row(
        self,
        tenant: str,
        table: str,
        row: Mapping[str, Any],
        columns: Iterable[str],
        id_column: str = "id",
    ) -> dict[str, Any]:
        """``row`` with the sealed values of ``columns`` opened (chosen or not: a field
        switched off still reads what was sealed while it was on)."""
        opened = dict(row)
        for column in columns:
            value = row.get(column)
            if value is not None and _token(value) is not None:
                opened[column] = self.open(tenant, table, column, row[id_column], value)
        return opened

    async def ensure(self, tenant: str, key_ids: Iterable[str] = (), *, write: bool = True) -> None:
        """Read and unwrap what :meth:`seal` (``write``) and :meth:`open` of ``key_ids`` will
        need, in a thread when it takes the key store or the key manager (a KMS round trip
        must not hold the event loop). A read never makes the tenant a key."""
        keyring = self.keyring
        if keyring is None:
            return
        wanted = list(key_ids)
        if not keyring.ready(tenant, wanted, write=write):
            await asyncio.to_thread(_warm, keyring, tenant, wanted, write)

    async def ensure_rows(
        self, model: type, rows: Iterable[Mapping[str, Any]], tenant: str | None = None
    ) -> None:
        """:meth:`ensure` the keys ``rows`` of ``model`` were sealed with."""
        place = self.tables.get(model)
        if place is None or self.keyring is None:
            return
        wanted: dict[str, set[str]] = {}
        for row in rows:
            for column in place[1]:
                key_id = sealed_key(row.get(column))
                if key_id is not None:
                    wanted.setdefault(row.get("tenant_id", tenant), set()).add(key_id)
        for tenant, key_ids in wanted.items():
            await self.ensure(tenant, key_ids, write=False)


def _warm(keyring: Keyring, tenant: str, key_ids: list[str], write: bool) -> None:
    if write:
        keyring.active(tenant)
    for key_id in key_ids:
        # A key gone is said when the value is opened, as if it had not been warmed.
        with contextlib.suppress(DecryptionError):
            keyring.get(tenant, key_id)


def _place(tenant: str, table: str, column: str, row_id: Any) -> bytes:
    # The associated data: where the value belongs. A JSON array is unambiguous.
    return orjson.dumps(["agency-data field v1", tenant, table, column, str(row_id)])


def cipher_from_config(
    config: EncryptionConfig, data_dir: Path, key_manager: KeyManager | None = None
) -> FieldCipher:
    """The cipher ``encryption`` describes (keys in ``key_store``, else ``data_dir/keys``).

    With no KEK and no ``key_manager`` it encrypts nothing, and ``encryption.fields`` is a
    :class:`ConfigError`: chosen fields need a key.
    """
    manager = key_manager
    if manager is None:
        kek = _kek(config)
        if kek is not None:
            previous = [
                parse_kek(old.get_secret_value(), f"encryption.previous_keks[{i}]")
                for i, old in enumerate(config.previous_keks)
            ]
            manager = LocalKeyManager(kek, previous)
    elif isinstance(manager, type) or not isinstance(manager, KeyManager):
        raise ConfigError(
            "key_manager must have wrap(data_key, context) and unwrap(kek_id, wrapped, "
            "context) methods (agency_data.security.keys.KeyManager)",
            field="key_manager",
        )
    if manager is None:
        if config.fields:
            raise ConfigError(
                "encryption.fields needs a key-encryption key: set encryption.kek, kek_file "
                "or kek_env (32 random bytes in base64), or pass DataLayer(key_manager=...)",
                field="encryption.kek",
            )
        return FieldCipher.off()
    store = KeyStore(config.key_store or data_dir / "keys")
    return FieldCipher(Keyring(store, manager), config.fields)


def _kek(config: EncryptionConfig) -> bytes | None:
    if config.kek is not None:
        return parse_kek(config.kek.get_secret_value(), "encryption.kek")
    if config.kek_file is not None:
        try:
            text = config.kek_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            raise ConfigError(
                f"encryption.kek_file {config.kek_file} cannot be read as a base64 key",
                field="encryption.kek_file",
            ) from None
        return parse_kek(text, "encryption.kek_file")
    if config.kek_env is not None:
        value = os.environ.get(config.kek_env)
        if not value:
            raise ConfigError(
                f"encryption.kek_env names {config.kek_env}, which is not set",
                field="encryption.kek_env",
            )
        return parse_kek(value, "encryption.kek_env")
    return None
