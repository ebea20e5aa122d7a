"""Unpacking a compressed set where tarfile has no extraction filters (Python before 3.11.4):
links, alone or in chains, are refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agency_data.backup import restore
from agency_data.errors import BackupError


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_fallback_refuses_a_link_chain_out_of_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(tarfile, "data_filter")  # as on Python < 3.11.4
    into = tmp_path / "box" / "into"
    into.mkdir(parents=True)
    packed = tmp_path / "evil.tar.gz"
    _archive(
        packed,
        [(_link("a", "."), None), (_link("a/b", ".."), None), _file("b/escaped", b"out")],
    )
    with (
        tarfile.open(packed, "r:gz") as tar,
        pytest.raises(BackupError, match="which a set never does"),
    ):
        restore._extract(tar, into)
    assert not (tmp_path / "box" / "escaped").exists(), "a file was written out of the folder"


def test_fallback_refuses_a_hard_link_out_of_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(tarfile, "data_filter")  # as on Python < 3.11.4
    into = tmp_path / "into"
    into.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("keep")
    packed = tmp_path / "evil.tar.gz"
    _archive(
        packed,
        [(_link("d/e/h", "../secret", tarfile.LNKTYPE), None), _file("d/e/h", b"pwned")],
    )
    with (
        tarfile.open(packed, "r:gz") as tar,
        pytest.raises(BackupError, match="which a set never does"),
    ):
        restore._extract(tar, into)
    assert secret.read_text() == "keep", "a file outside the folder was overwritten"


@pytest.mark.parametrize("filters", [True, False], ids=["with-filters", "python-before-3.11.4"])
def test_unpacking_refuses_members_that_leave_the_folder(
    filters: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    good, bad = tmp_path / "good.tar.gz", tmp_path / "bad.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("rows")
    with tarfile.open(good, "w:gz") as tar:
        tar.add(payload, arcname="base/1/16384")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(payload, arcname="../escaped")
    with tarfile.open(good, "r:gz") as tar:
        restore._extract(tar, tmp_path / "out")
    assert (tmp_path / "out" / "base" / "1" / "16384").read_text() == "rows"
    with pytest.raises((BackupError, tarfile.TarError)), tarfile.open(bad, "r:gz") as tar:
        restore._extract(tar, tmp_path / "out2")
    assert not (tmp_path / "escaped").exists()
