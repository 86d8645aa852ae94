"""Atomic outputs: private tempfile names beside the target, umask modes, nothing left behind on failure."""

import os
import stat

import pytest

from esjax.common.files import publish_dir, temp_dir_beside, write_text_atomic


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_modes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "data" / "rows.jsonl", "a\n")
        write_text_atomic(tmp_path / "data" / "rows.jsonl", "b\n")  # replaces
        tmp = temp_dir_beside(tmp_path / "out")
        (tmp / "f").write_text("x")
        publish_dir(tmp, tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "data" / "rows.jsonl").read_text() == "b\n"
    assert mode(tmp_path / "data" / "rows.jsonl") == 0o666 & ~umask
    assert mode(tmp_path / "out") == 0o777 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["data", "out"] and os.listdir(tmp_path / "data") == ["rows.jsonl"]


def test_failures_leave_the_old_output(tmp_path, monkeypatch):
    write_text_atomic(tmp_path / "f.txt", "old")
    with pytest.raises(TypeError):
        write_text_atomic(tmp_path / "f.txt", 123)  # not text: the temporary file is removed
    assert os.listdir(tmp_path) == ["f.txt"] and (tmp_path / "f.txt").read_text() == "old"
    old_dir = tmp_path / "out"
    old_dir.mkdir()
    (old_dir / "keep").write_text("keep")
    new = temp_dir_beside(old_dir)
    real_replace = os.replace

    def fail_second(src, dst):
        if str(src) == str(new):
            raise OSError("rename failed")
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="rename failed"):
        publish_dir(new, old_dir)
    assert (old_dir / "keep").read_text() == "keep"  # moved back
    assert sorted(os.listdir(tmp_path)) == sorted(["f.txt", "out", new.name])


def test_current_umask_reads_without_changing_it(monkeypatch):
    from esjax.common import files
    old = os.umask(0o027)
    try:
        assert files.current_umask() == 0o027
        monkeypatch.setattr(files.Path, "read_text", lambda self: (_ for _ in ()).throw(OSError("no /proc")))
        assert files.current_umask() == 0o027  # the fallback
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)
