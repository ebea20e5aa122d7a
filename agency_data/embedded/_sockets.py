"""The embedded servers' socket folder: inside the data directory, or a safe one in /tmp.

Under root, the PostgreSQL server runs as a system user that must reach its socket; the folder
is then given to that user's group with traverse-only rights (0710).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from agency_data.errors import EmbeddedServerError
from agency_data.files import make_private_dirs, tighten

__all__ = ["socket_dir_for"]

# sun_path is 108 bytes on Linux; leave room for the socket's own name.
_SOCKET_DIR_LIMIT = 90


def socket_dir_for(data_dir: Path, *, group: int | None = None) -> Path:
    """The folder for the servers' Unix sockets: ``<data_dir>/run`` when that path is short enough.

    Otherwise a folder in the temp directory named after the data directory (so that every
    process sharing the servers finds it), created atomically and refused when it exists but
    is not ours: another user could otherwise read or plant the sockets.
    """
    candidate = data_dir / "run"
    if len(os.fsencode(str(candidate))) <= _SOCKET_DIR_LIMIT:
        # Ours by its name in our data directory, even if an older release made it wider; a
        # link or another user's folder there is refused rather than followed or taken.
        make_private_dirs(candidate)
        info = candidate.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            _refuse(candidate, "it is a symbolic link, not a folder, or not yours")
        if group is not None:
            os.chown(candidate, -1, group, follow_symlinks=False)
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
        _refuse(folder, problem)


def _refuse(folder: Path, problem: str) -> None:
    raise EmbeddedServerError(
        f"the socket folder {folder} already exists and {problem}; another user may have "
        "made it to intercept the servers. Remove it, or choose another data directory "
        "(embedded.data_dir or --data-dir)",
        server="embedded",
    )
