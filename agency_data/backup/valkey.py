"""The Valkey (Redis) half of a backup set: an RDB snapshot, and putting it back.

The snapshot is taken the way a replica would get one (``valkey-cli --rdb``, the bundled
client): any server we can log in to, not only the embedded one, and nothing written on the
server's own disk. Restored into an embedded data directory, it becomes the base of the
append-only file, so the server loads it with ``appendonly yes`` (which ignores a bare
``dump.rdb``) and logs every write after it.

The snapshot holds every database of the server (a server shared with other applications
brings theirs too). Redis holds the cache (which refills), sessions, locks and streams. The
snapshot follows the base backup, so a cache entry in it can be newer than the restored
database by the seconds between the two; writes through the layer bound how long such an
entry lives (``cache.record_ttl``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from agency_data.embedded import valkey_cli
from agency_data.errors import BackupError, EmbeddedServerError
from agency_data.files import make_private_dirs, private_file, tighten

__all__ = ["SNAPSHOT", "install_snapshot", "snapshot_redis"]

# The snapshot's name in a set's folder.
SNAPSHOT = "valkey.rdb"
# The append-only file's folder and names, as Valkey's defaults have them (appenddirname,
# appendfilename); the manifest lists the files the server loads at start.
_AOF_DIR = "appendonlydir"
_AOF_BASE = "appendonly.aof.1.base.rdb"
_AOF_MANIFEST = "appendonly.aof.manifest"


async def snapshot_redis(url: str, target: Path, *, timeout: float = 600.0) -> int:
    """Write an RDB snapshot of the server at ``url`` to ``target`` (0600); its size in bytes.

    The password travels in the environment (REDISCLI_AUTH), never on the command line.
    """
    args, password = _cli_args(url)
    env = dict(os.environ)
    if password:
        env["REDISCLI_AUTH"] = password
    try:
        cli = valkey_cli()
    except EmbeddedServerError as exc:
        raise BackupError(f"no valkey-cli to take the snapshot with: {exc}") from exc
    private_file(target)
    process = await asyncio.create_subprocess_exec(
        str(cli),
        *args,
        "--rdb",
        str(target),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        target.unlink(missing_ok=True)
        raise
    if process.returncode != 0:
        target.unlink(missing_ok=True)
        text = (stderr or stdout).decode(errors="replace").strip().splitlines()
        raise BackupError(f"the Valkey snapshot failed: {text[-1] if text else 'no output'}")
    return target.stat().st_size


def install_snapshot(snapshot: Path, data_dir: Path, owner: tuple[int, int] | None) -> None:
    """Make ``snapshot`` what the embedded Valkey of ``data_dir`` loads at its first start.

    ``owner``: (uid, gid) to give what is made (the server's user under root), else None.
    """
    valkey = data_dir / "valkey"
    aof = valkey / _AOF_DIR
    if aof.exists():
        raise BackupError(f"{valkey} holds Valkey data already; a restore never writes over it")
    made = make_private_dirs(aof)
    base = aof / _AOF_BASE
    base.write_bytes(snapshot.read_bytes())
    tighten(base, 0o600)
    manifest = aof / _AOF_MANIFEST
    manifest.write_text(f"file {_AOF_BASE} seq 1 type b\n")
    tighten(manifest, 0o600)
    if owner is not None:
        for path in (*made, base, manifest):
            os.chown(path, *owner, follow_symlinks=False)


def _cli_args(url: str) -> tuple[list[str], str | None]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password else None
    if password is None and query.get("password"):
        password = query["password"][0]
    args: list[str] = []
    if parts.scheme == "unix":
        args += ["-s", unquote(parts.path)]
    else:
        args += ["-h", parts.hostname or "localhost", "-p", str(parts.port or 6379)]
        if parts.scheme == "rediss":
            args.append("--tls")
    if parts.username:
        args += ["--user", unquote(parts.username)]
    return args, password
