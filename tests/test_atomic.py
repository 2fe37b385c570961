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



def test_curves_png_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A renderer that fails mid-write keeps the previous curves.png whole and leaves no temporary."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from ciard_fast.plots import plot_curves

    history = [{"epoch": 1, "train_loss": 1.0, "val_clean": 10.0}, {"epoch": 2, "train_loss": 0.5, "val_clean": 20.0}]
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    real_savefig = Figure.savefig

    def broken_savefig(self, f, **kwargs):
        real_savefig(self, f, **kwargs)  # the whole PNG goes into the file object ...
        raise RuntimeError("renderer crashed")  # ... and then the process fails before it is closed

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_curves(history, str(target))
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["curves.png"]
    monkeypatch.undo()
    assert plot_curves(history, str(target)) == str(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.listdir(tmp_path) == ["curves.png"]


def test_benchmark_json_goes_through_the_owner(tmp_path, monkeypatch):
    import json

    import torch

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    import common

    calls = []

    def spy(path, text):
        calls.append(path)
        return atomic.write_text_atomic(path, text)

    monkeypatch.setattr(common, "write_text_atomic", spy)
    target = tmp_path / "new" / "bench.json"
    common.write_json(str(target), "test", [{"x": 1}], torch.device("cpu"), {"n": 2})
    assert calls == [str(target)]
    payload = json.loads(target.read_text())
    assert payload["benchmark"] == "test" and payload["config"] == {"n": 2} and payload["rows"][0]["x"] == 1


def test_no_file_is_written_outside_the_owner():
    """Every file the library, its kernels and the benchmarks write goes through ciard_fast/atomic.py: no
    open(..., "w"), Path.write_text/bytes, or torch.save / np.save / json.dump / savefig to a
    path; those are fine only into the file object of a ``with atomic_write(...) as f`` block."""
    import ast
    import pathlib

    repo = pathlib.Path(__file__).resolve().parent.parent
    files = [p for p in (repo / "ciard_fast").rglob("*.py") if p.name != "atomic.py"]
    files += sorted((repo / "kernels").rglob("*.py")) + sorted((repo / "benchmarks").rglob("*.py"))
    # torch.save(obj, f), torch.jit.save(m, f), np.save(f, a), json.dump(obj, f), fig.savefig(f)
    savers = {"torch.save", "torch.jit.save", "np.save", "numpy.save", "json.dump"}
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # file objects that are fine to save into: an atomic_write's, or an in-memory buffer
        atomic_files = {item.optional_vars.id for node in ast.walk(tree) if isinstance(node, ast.With)
                        for item in node.items
                        if isinstance(item.context_expr, ast.Call) and isinstance(item.optional_vars, ast.Name)
                        and ast.unparse(item.context_expr.func).endswith("atomic_write")}
        atomic_files |= {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                         and isinstance(node.value, ast.Call)
                         and ast.unparse(node.value.func) in ("io.BytesIO", "io.StringIO")
                         for target in node.targets if isinstance(target, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            where = f"{path.relative_to(repo)}:{node.lineno}"
            if name == "open" and isinstance(func, ast.Name):
                mode = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "mode"), None)
                if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                    offenders.append(f"{where}: open(..., {mode.value!r})")
            elif name in ("write_text", "write_bytes") and isinstance(func, ast.Attribute):
                offenders.append(f"{where}: .{name}(...)")
            elif isinstance(func, ast.Attribute) and (ast.unparse(func) in savers or name == "savefig"):
                targets = [a for a in node.args if isinstance(a, ast.Name) and a.id in atomic_files]
                if not targets:
                    offenders.append(f"{where}: {ast.unparse(func)}(...) not into an atomic_write file")
    assert not offenders, offenders
