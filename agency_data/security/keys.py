"""Envelope keys: a data key per tenant, wrapped by a key-encryption key, kept apart from the data.

Each tenant's values are encrypted under its **data key** (AES-256, made on first use). Data
keys are stored only wrapped (encrypted) by a **key-encryption key** (KEK): the local one of
``encryption.kek`` / ``kek_file`` / ``kek_env`` (:class:`LocalKeyManager`), or a caller's KMS
through the :class:`KeyManager` protocol (``DataLayer(config, key_manager=...)``).

Wrapped data keys live in the **key store**, one file per tenant in ``encryption.key_store``
(0700 folder, 0600 files), not in PostgreSQL or Redis: no backup of either holds them. Removing
a tenant's file (``agency-data keys destroy``) therefore makes every value encrypted for that
tenant unreadable everywhere, its backups included: crypto-shredding. Back the key store up on
its own (it is small), and keep the KEK elsewhere still.

A tenant may hold several data keys: the newest is active (new values use it), the older ones
still decrypt what they encrypted until ``keys reencrypt`` has rewritten it. ``keys rotate``
re-wraps every data key under the current KEK (the previous KEKs are then no longer needed).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from filelock import FileLock

from agency_data.errors import ConfigError, DecryptionError
from agency_data.files import make_private_dirs, sync_folder, write_private

__all__ = [
    "DataKey",
    "KeyManager",
    "KeyStore",
    "Keyring",
    "LocalKeyManager",
    "kek_id",
    "parse_kek",
]

_NONCE = 12


def parse_kek(text: str, where: str) -> bytes:
    """A 32-byte key from its base64 form (``openssl rand -base64 32``)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{where} must be 32 random bytes in base64 (openssl rand -base64 32)", field=where
        )
    return key


def kek_id(key: bytes) -> str:
    """A key's name that reveals nothing of it: a digest of a digest, cut short."""
    return "kek-" + hashlib.sha256(hashlib.sha256(key).digest()).hexdigest()[:12]


@runtime_checkable
class KeyManager(Protocol):
    """Wraps and unwraps data keys with a key-encryption key (a KMS, or the local KEK).

    ``context`` (the tenant and the data key's id) must be given back unchanged to unwrap: a
    wrapped key moved to another tenant does not unwrap. Calls may block (a KMS round trip);
    the keyring calls them rarely (once per data key and process) and from a thread.
    """

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        """``(kek_id, wrapped)``: the data key encrypted under the current KEK."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The data key, from what :meth:`wrap` returned."""
        ...


class LocalKeyManager:
    """The KEK from the config (AES-256-GCM key wrap), with earlier ones kept to unwrap."""

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        self.current = kek_id(current)
        self._keys = {kek_id(key): AESGCM(key) for key in (*previous, current)}

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        """Encrypt ``data_key`` under the current KEK."""
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._keys[self.current].encrypt(nonce, data_key, _aad(context))
        return self.current, nonce + sealed

    def unwrap(self, kek_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """Decrypt a data key wrapped by any KEK this manager knows."""
        aead = self._keys.get(kek_id)
        if aead is None:
            raise DecryptionError(
                f"a data key is wrapped by {kek_id}, which encryption.kek and "
                "encryption.previous_keks do not hold"
            )
        try:
            return aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _aad(context))
        except InvalidTag:
            raise DecryptionError(
                f"a data key wrapped by {kek_id} did not unwrap: the key store file was "
                "altered, or moved from another tenant"
            ) from None


def _aad(context: Mapping[str, str]) -> bytes:
    return orjson.dumps(dict(context), option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class DataKey:
    """One data key of a tenant, as stored: wrapped."""

    key_id: str
    kek_id: str
    wrapped: bytes
    created_at: datetime


class KeyStore:
    """Wrapped data keys, one JSON file per tenant (newest key last), written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, tenant: str) -> Path:
        # Tenant ids are letters, digits and _ . : - (checked); ":" is spelled out for
        # filesystems that refuse it.
        return self.directory / (tenant.replace(":", "%3A") + ".json")

    def lock(self, tenant: str) -> FileLock:
        """The lock that orders every process's changes to ``tenant``'s keys."""
        make_private_dirs(self.directory)
        return FileLock(str(self._path(tenant)) + ".lock", mode=0o600)

    def load(self, tenant: str) -> list[DataKey]:
        """The tenant's keys, oldest first ([] when it has none)."""
        path = self._path(tenant)
        try:
            raw = orjson.loads(path.read_bytes())
            return [
                DataKey(
                    key_id=str(item["key_id"]),
                    kek_id=str(item["kek_id"]),
                    wrapped=base64.b64decode(item["wrapped"], validate=True),
                    created_at=datetime.fromisoformat(item["created_at"]),
                )
                for item in raw["keys"]
            ]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DecryptionError(
                f"cannot read the key store file {path}: {exc.strerror}"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise DecryptionError(
                f"the key store file {path} is damaged; restore it from the key store's backup"
            ) from None

    def save(self, tenant: str, keys: Sequence[DataKey]) -> None:
        """Replace the tenant's keys (call under :meth:`lock`)."""
        make_private_dirs(self.directory)
        document = {
            "tenant": tenant,
            "keys": [
                {
                    "key_id": key.key_id,
                    "kek_id": key.kek_id,
                    "wrapped": base64.b64encode(key.wrapped).decode(),
                    "created_at": key.created_at.isoformat(),
                }
                for key in keys
            ],
        }
        # On disk before any value is encrypted under it: a key lost in a crash would take
        # every value it encrypted with it.
        write_private(
            self._path(tenant), orjson.dumps(document, option=orjson.OPT_INDENT_2), durable=True
        )

    def state(self, tenant: str) -> tuple[int, int] | None:
        """What identifies the tenant file's current version (None: no file)."""
        try:
            info = self._path(tenant).stat()
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns)

    def destroy(self, tenant: str) -> bool:
        """Remove the tenant's keys for good; False if it had none."""
        path = self._path(tenant)
        try:
            f = path.open("r+b")
        except FileNotFoundError:
            return False
        with f:
            # Gone from the folder first, then its bytes overwritten: no moment where a
            # half-destroyed file could be read, and a careless copy of the disk gets zeros.
            path.unlink()
            sync_folder(path.parent)
            size = os.fstat(f.fileno()).st_size
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        return True

    def tenants(self) -> list[str]:
        """Every tenant with keys here."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name.removesuffix(".json").replace("%3A", ":") for p in self.directory.glob("*.json")
        )


class Keyring:
    """Tenants' data keys, unwrapped once per process and kept in memory.

    The key store is the truth: each use looks at the tenant's file (a ``stat``, about a
    microsecond) and, when another process changed it (a key added by a re-encryption, the
    keys destroyed), the tenant's keys in memory are dropped and read again. A destroyed
    tenant's values therefore stop decrypting here at once, and its next write gets a new key.
    """

    def __init__(self, store: KeyStore, manager: KeyManager) -> None:
        self.store = store
        self.manager = manager
        self._keys: dict[tuple[str, str], AESGCM] = {}
        self._active: dict[str, str] = {}
        # The version of each tenant's file the keys in memory came from.
        self._seen: dict[str, tuple[int, int] | None] = {}
        self._lock = threading.RLock()

    def ready(self, tenant: str, key_ids: Sequence[str] = (), *, write: bool = True) -> bool:
        """Whether :meth:`active` (``write``) and :meth:`get` of ``key_ids`` would need no
        reading or unwrapping: callers on an event loop do that work in a thread otherwise."""
        if self.store.state(tenant) != self._seen.get(tenant, _UNSEEN):
            return False
        if write and tenant not in self._active:
            return False
        return all((tenant, key_id) in self._keys for key_id in key_ids)

    def active(self, tenant: str) -> tuple[str, AESGCM]:
        """The key new values of ``tenant`` are encrypted with (made on first use)."""
        with self._lock:
            self._fresh(tenant)
            key_id = self._active.get(tenant)
            if key_id is None:
                key_id = self._load_active(tenant)
            return key_id, self._keys[(tenant, key_id)]

    def get(self, tenant: str, key_id: str) -> AESGCM:
        """The key ``key_id`` of ``tenant``; :class:`DecryptionError` if it is gone."""
        with self._lock:
            self._fresh(tenant)
            found = self._keys.get((tenant, key_id))
            if found is None:
                self._load(tenant)
                found = self._keys.get((tenant, key_id))
            if found is None:
                raise DecryptionError(
                    f"tenant {tenant}'s data key {key_id} is not in the key store: it was "
                    "destroyed (crypto-shredded) or retired, or the key store is not this "
                    "deployment's"
                )
            return found

    def keys_of(self, tenant: str) -> list[DataKey]:
        """The tenant's keys as stored, oldest first."""
        return self.store.load(tenant)

    def new_key(self, tenant: str) -> str:
        """Add a data key to ``tenant`` and make it the active one; its id."""
        with self._lock, self.store.lock(tenant):
            self._forget(tenant)
            keys = self.store.load(tenant)
            key = self._make(tenant)
            self.store.save(tenant, [*keys, key])
            return key.key_id

    def remove(self, tenant: str, key_ids: Sequence[str]) -> None:
        """Remove ``key_ids`` of ``tenant`` (never its active key)."""
        with self._lock, self.store.lock(tenant):
            keys = self.store.load(tenant)
            kept = [k for k in keys if k.key_id not in key_ids or k is keys[-1]]
            self.store.save(tenant, kept)
            self._forget(tenant)

    def rewrap(self, tenant: str) -> int:
        """Re-wrap ``tenant``'s keys under the current KEK; how many were re-wrapped."""
        with self._lock, self.store.lock(tenant):
            keys = self.store.load(tenant)
            rewrapped = []
            for key in keys:
                context = _context(tenant, key.key_id)
                plain = self._unwrap(key, context)
                kek, wrapped = self._wrap(plain, context)
                rewrapped.append(DataKey(key.key_id, kek, wrapped, key.created_at))
            self.store.save(tenant, rewrapped)
            self._forget(tenant)
            return len(rewrapped)

    def destroy(self, tenant: str) -> bool:
        """Crypto-shred ``tenant``: its keys removed from the store and from memory."""
        with self._lock, self.store.lock(tenant):
            destroyed = self.store.destroy(tenant)
            self._forget(tenant)
            return destroyed

    def _fresh(self, tenant: str) -> None:
        if tenant in self._seen and self.store.state(tenant) != self._seen[tenant]:
            self._forget(tenant)

    def _forget(self, tenant: str) -> None:
        self._active.pop(tenant, None)
        self._seen.pop(tenant, None)
        for entry in [entry for entry in self._keys if entry[0] == tenant]:
            del self._keys[entry]

    def _load_active(self, tenant: str) -> str:
        if self._load(tenant) is None:
            with self.store.lock(tenant):
                # Another process may have made it meanwhile.
                if not self.store.load(tenant):
                    self.store.save(tenant, [self._make(tenant)])
            self._load(tenant)
        return self._active[tenant]

    def _load(self, tenant: str) -> str | None:
        state = self.store.state(tenant)
        keys = self.store.load(tenant)
        for key in keys:
            if (tenant, key.key_id) not in self._keys:
                plain = self._unwrap(key, _context(tenant, key.key_id))
                self._keys[(tenant, key.key_id)] = AESGCM(plain)
        self._seen[tenant] = state
        if not keys:
            self._active.pop(tenant, None)
            return None
        self._active[tenant] = keys[-1].key_id
        return keys[-1].key_id

    def _make(self, tenant: str) -> DataKey:
        key_id = "k" + secrets.token_hex(6)
        plain = AESGCM.generate_key(bit_length=256)
        kek, wrapped = self._wrap(plain, _context(tenant, key_id))
        # Kept as made: no round trip to the KMS to unwrap what this process just wrapped.
        self._keys[(tenant, key_id)] = AESGCM(plain)
        return DataKey(key_id, kek, wrapped, datetime.now(UTC))

    def _wrap(self, plain: bytes, context: Mapping[str, str]) -> tuple[str, bytes]:
        try:
            kek, wrapped = self.manager.wrap(plain, context)
        except DecryptionError:
            raise
        except Exception as exc:
            raise DecryptionError(
                f"the key manager could not wrap a data key ({type(exc).__name__})"
            ) from exc
        return str(kek), bytes(wrapped)

    def _unwrap(self, key: DataKey, context: Mapping[str, str]) -> bytes:
        try:
            plain = self.manager.unwrap(key.kek_id, key.wrapped, context)
        except DecryptionError:
            raise
        except Exception as exc:
            raise DecryptionError(
                f"the key manager could not unwrap data key {key.key_id} ({type(exc).__name__})"
            ) from exc
        if not isinstance(plain, bytes) or len(plain) != 32:
            raise DecryptionError(f"the key manager gave back no 32-byte key for {key.key_id}")
        return plain


_UNSEEN = (-1, -1)


def _context(tenant: str, key_id: str) -> dict[str, str]:
    return {"tenant": tenant, "key_id": key_id}
