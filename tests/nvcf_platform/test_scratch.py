"""Where local instances keep their per-request directories: `/dev/shm` when it has room, the
work directory otherwise, `NVCF_SCRATCH_DIR` when set; only a directory `open` made is removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvcf_platform.devstack import scratch
from nvcf_platform.devstack.scratch import SCRATCH_ENV, Scratch
from nvcf_platform.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_scratch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCRATCH_ENV, raising=False)


def test_a_memory_directory_with_room_gets_a_new_directory_removed_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scratch, "MIN_FREE_BYTES", 1)
    memory = tmp_path / "shm"
    memory.mkdir()
    chosen = Scratch.open(tmp_path / "work", memory=memory)
    assert chosen.owned
    assert chosen.root.parent == memory
    assert chosen.root.name.startswith("nvcf-")
    (chosen.root / "functions" / "v1" / "response").mkdir(parents=True)
    (chosen.root / "functions" / "v1" / "response" / "left.bin").write_bytes(b"x")
    chosen.close()
    assert not chosen.root.exists()
    chosen.close()  # idempotent


def test_a_memory_directory_without_room_leaves_the_work_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scratch, "MIN_FREE_BYTES", 2**62)
    work = tmp_path / "work"
    chosen = Scratch.open(work, memory=tmp_path)
    assert (chosen.root, chosen.owned) == (work, False)
    assert list(tmp_path.iterdir()) == []  # nothing was made


def test_no_memory_directory_leaves_the_work_directory(tmp_path: Path) -> None:
    chosen = Scratch.open(tmp_path / "work", memory=tmp_path / "missing")
    assert (chosen.root, chosen.owned) == (tmp_path / "work", False)


def test_the_variable_names_the_directory_and_close_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scratch, "MIN_FREE_BYTES", 1)
    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "mine"))
    chosen = Scratch.open(tmp_path / "work", memory=tmp_path)
    assert (chosen.root, chosen.owned) == (tmp_path / "mine", False)
    assert chosen.root.is_dir()  # created when missing
    chosen.close()
    assert chosen.root.is_dir()


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_a_variable_that_names_no_usable_directory_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    (tmp_path / "plain").write_text("not a directory")
    named = tmp_path / "plain" if kind == "file" else tmp_path / "plain" / "below"
    monkeypatch.setenv(SCRATCH_ENV, str(named))
    with pytest.raises(ConfigError, match=f"^{SCRATCH_ENV}={named}: cannot create it: "):
        Scratch.open(tmp_path / "work", memory=tmp_path)
