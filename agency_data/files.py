"""Files and folders the layer creates: private to their owner, never loosened.

Folders are made 0700 and files 0600. A folder that already existed keeps its mode: the library
never widens (or narrows) what it did not create. Errors are the operating system's
(``OSError``); callers say what they were making and how to fix it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = [
    "blocking_folder",
    "make_private_dirs",
    "private_file",
    "sync_folder",
    "tighten",
    "write_private",
]


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
        # mkdir's mode passes through the umask, which may be stricter; make it exact.
        folder.chmod(0o700)
        created.append(folder)
    return created


def tighten(path: Path, mode: int) -> None:
    """Set ``mode`` on a file or folder of ours (by its name inside our data directory).

    A symbolic link is left alone: it would carry the change to whatever it points at.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode, follow_symlinks=False)


def private_file(path: Path) -> None:
    """Create ``path`` empty if it is missing, and make it 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def write_private(
    path: Path,
    text: str | bytes,
    *,
    owner: tuple[int, int] | None = None,
    durable: bool = False,
) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only; ``durable``: on
    disk (file and folder synced) when this returns.

    Safe in a folder another user can write to (the PostgreSQL server's, under root): the
    folder is held open, the new file gets a random name that must not exist yet, its owner
    (``(uid, gid)``) is set on the open file, and the rename replaces whatever stands at
    ``path`` (a planted link included) without following it.
    """
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder
        )
        try:
            os.fchmod(fd, 0o600)
            if owner is not None:
                os.fchown(fd, *owner)
            os.write(fd, text.encode() if isinstance(text, str) else text)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        if durable:
            os.fsync(folder)
    finally:
        os.close(folder)


def sync_folder(path: Path) -> None:
    """Put ``path``'s entries (a file made, renamed or removed in it) on disk."""
    folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


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
