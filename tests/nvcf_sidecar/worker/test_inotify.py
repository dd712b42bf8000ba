"""The inotify event source: directories the sidecar creates are watched by it at once; the
ones others create are found through the base's events and listed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nvcf_sidecar.worker.inotify import DirectoryEvents, inotify_available

pytestmark = pytest.mark.skipif(not inotify_available(), reason="inotify is Linux's")


@pytest.fixture
def reported() -> list[tuple[str, bool]]:
    return []


@pytest.fixture
def events(tmp_path: Path, reported: list[tuple[str, bool]]) -> Iterator[DirectoryEvents]:
    source = DirectoryEvents(str(tmp_path), lambda path, whole: reported.append((path, whole)))
    yield source
    source.close()


async def test_a_directory_watched_by_its_creator_reports_writes_as_they_happen(
    events: DirectoryEvents, tmp_path: Path, reported: list[tuple[str, bool]]
) -> None:
    events.open()
    directory = tmp_path / "req-1"
    directory.mkdir()
    events.watch_directory(str(directory))
    (directory / "progress").write_text("{}")

    events.drain()  # the base's event for req-1 comes first: already watched, not listed

    path = str(directory / "progress")
    assert reported[0] == (path, False)  # created: not yet whole
    assert reported[-1] == (path, True)  # closed after writing
    assert [whole for _, whole in reported].count(True) == 1


async def test_a_directory_made_by_another_is_watched_through_the_base_and_listed(
    events: DirectoryEvents, tmp_path: Path, reported: list[tuple[str, bool]]
) -> None:
    events.open()
    directory = tmp_path / "req-2"
    directory.mkdir()
    (directory / "progress").write_text("{}")  # before any watch of req-2: only a listing sees it

    events.drain()

    assert reported == [(str(directory / "progress"), True)]


async def test_a_removed_directory_made_again_under_the_same_name_is_watched_again(
    events: DirectoryEvents, tmp_path: Path, reported: list[tuple[str, bool]]
) -> None:
    events.open()
    directory = tmp_path / "req-3"
    directory.mkdir()
    events.watch_directory(str(directory))
    events.drain()
    directory.rmdir()
    directory.mkdir()  # by someone else: the old watch's end is read before the new event
    (directory / "progress").write_text("{}")

    events.drain()

    assert (str(directory / "progress"), True) in reported
