"""The one atomic-write helper: whole file or nothing, 0644, clear error on a full disk."""
import errno
import os
import stat

import pytest

from ciard_fast import atomic


def test_write_replaces_whole_file_with_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic.write_text_atomic(path, "one")
    atomic.write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(path.parent) == ["a.txt"]


def test_failure_inside_the_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    atomic.write_bytes_atomic(path, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_disk_full_is_one_clear_error_naming_file_and_space(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic.write_bytes_atomic(path, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(atomic.AtomicWriteError) as info:
        atomic.save_torch_atomic({"x": 1}, path)
    message = str(info.value)
    assert str(path) in message and "disk is full" in message and "MiB free" in message
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_remove_stale_temporaries_only_touches_temporaries(tmp_path):
    (tmp_path / ".tmp-last.pt-abc").write_bytes(b"x")
    (tmp_path / "last.pt").write_bytes(b"y")
    removed = atomic.remove_stale_temporaries(tmp_path)
    assert [os.path.basename(p) for p in removed] == [".tmp-last.pt-abc"]
    assert os.listdir(tmp_path) == ["last.pt"]
