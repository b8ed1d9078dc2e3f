"""Atomic writes: the result has normal permissions, and a failed write leaves the old file and no temporary."""

import pytest

from my3dgen_hf.utils.io import atomic_path, atomic_write_text


def test_atomic_path_replaces_with_normal_permissions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".txt" and not tmp.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode == plain.stat().st_mode  # not mkstemp's owner-only mode


def test_atomic_path_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_atomic_write_text_creates_folders_and_replaces(tmp_path):
    target = tmp_path / "new" / "results.md"
    assert atomic_write_text(target, "first\n") == target and target.read_text() == "first\n"
    atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n" and sorted(p.name for p in target.parent.iterdir()) == ["results.md"]
