"""Files and folders the embedded servers create: private to their owner, never loosened.

Folders are made 0700 and files 0600. A folder that already existed keeps its mode: the library
never widens (or narrows) what it did not create. Under root, the PostgreSQL server runs as a
system user that must reach its data directory; the folders we create on that path are given to
that user's group with traverse-only rights (0710), and a folder we did not create that bars the
way is reported, never changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from agency_data.errors import EmbeddedServerError

__all__ = [
    "blocking_folder",
    "make_private_dirs",
    "private_file",
    "socket_dir_for",
    "tighten",
    "write_private",
]

# sun_path is 108 bytes on Linux; leave room for the socket's own name.
_SOCKET_DIR_LIMIT = 90


def make_private_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents as 0700 folders; return those created, outermost first."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    created: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process made it first; it is not ours to change
        except OSError as exc:
            raise EmbeddedServerError(
                f"cannot create the folder {folder}: {exc.strerror}; choose a data directory "
                "you can write to (embedded.data_dir or --data-dir)",
                server="embedded",
            ) from exc
        # mkdir's mode passes through the umask, which may be stricter; make it exact.
        folder.chmod(0o700)
        created.append(folder)
    return created


def tighten(path: Path, mode: int) -> None:
    """Set ``mode`` on a file or folder of ours (by its name inside our data directory)."""
    try:
        current = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(path.lstat().st_mode) and current != mode:
        path.chmod(mode)


def private_file(path: Path) -> None:
    """Create ``path`` empty if it is missing, and make it 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def blocking_folder(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first folder on the way to ``path`` that user ``uid`` (groups ``gids``) cannot enter."""
    for folder in (*reversed(path.parents), path):
        try:
            info = folder.stat()
        except OSError:
            return folder
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in gids:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return folder
    return None


def socket_dir_for(data_dir: Path, *, group: int | None = None) -> Path:
    """The folder for the servers' Unix sockets: ``<data_dir>/run`` when that path is short enough.

    Otherwise a folder in the temp directory named after the data directory (so that every
    process sharing the servers finds it), created atomically and refused when it exists but
    is not ours: another user could otherwise read or plant the sockets.
    """
    candidate = data_dir / "run"
    if len(os.fsencode(str(candidate))) <= _SOCKET_DIR_LIMIT:
        # Ours by its name in our data directory, even if an older release made it wider.
        make_private_dirs(candidate)
        if group is not None:
            os.chown(candidate, -1, group)
        tighten(candidate, 0o700 if group is None else 0o710)
        return candidate
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    candidate = Path(tempfile.gettempdir()) / f"agency-data-{os.geteuid()}-{digest}"
    try:
        candidate.mkdir(mode=0o700)
        candidate.chmod(0o700)
        if group is not None:
            os.chown(candidate, -1, group)
            candidate.chmod(0o710)
    except FileExistsError:
        _check_ours(candidate, group)
    return candidate


def _check_ours(folder: Path, group: int | None) -> None:
    info = folder.lstat()
    mode = stat.S_IMODE(info.st_mode)
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "it is not a folder (a symbolic link or a file)"
    elif info.st_uid != os.geteuid():
        problem = f"it belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})"
    elif mode & 0o027 or (mode & 0o070 and info.st_gid != group):
        problem = f"its mode {mode:04o} lets other users in"
    if problem is not None:
        raise EmbeddedServerError(
            f"the socket folder {folder} already exists and {problem}; another user may have "
            "made it to intercept the servers. Remove it, or choose a shorter data directory "
            "(embedded.data_dir or --data-dir) so that the sockets live inside it",
            server="embedded",
        )
