"""Output files: `.partial` while open, renamed when complete, never outside the directory."""

from __future__ import annotations

import errno
import os
import posixpath
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nvcf_worker.errors import InvalidOutputName, NVCFWorkerError
from nvcf_worker.outputs import (
    PARTIAL_SUFFIX,
    PROGRESS_FILE_NAME,
    open_output,
    validate_output_name,
    write_output,
)
from nvcf_worker.progress import write_progress


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    return directory


def tree(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


# -- validate_output_name ---------------------------------------------------------------------


def test_reserved_names_are_the_progress_file_and_the_partial_suffix() -> None:
    assert PROGRESS_FILE_NAME == "progress"
    assert PARTIAL_SUFFIX == ".partial"


@pytest.mark.parametrize(
    "name", ["a.txt", "images/0.png", "a/b/c/d.json", ".hidden", "a..b", "...", "x" * 247, "é"]
)
def test_validate_output_name_accepts_relative_names_and_returns_them(name: str) -> None:
    assert validate_output_name(name) == PurePosixPath(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "/etc/passwd",
        "/abs",
        "../x",
        "a/../../x",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "..\\x",
        "a\x00b",
        "progress",
        "x.partial",
        "dir/x.partial",
        ".partial",
        "x" * 248,
        "d/" + "x" * 248,
        "é" * 124,
    ],
)
def test_validate_output_name_refuses_every_unsafe_or_reserved_name(name: str) -> None:
    with pytest.raises(InvalidOutputName) as info:
        validate_output_name(name)
    error = info.value
    assert isinstance(error, NVCFWorkerError)
    assert isinstance(error, ValueError)
    assert error.name == name
    assert repr(name) in str(error)
    assert error.reason in str(error)


@pytest.mark.parametrize("name", [None, b"a.txt", 3, Path("a.txt")])
def test_validate_output_name_refuses_a_name_that_is_not_a_string(name: object) -> None:
    with pytest.raises(InvalidOutputName, match="non-empty string"):
        validate_output_name(name)  # type: ignore[arg-type]


def test_validate_output_name_refuses_a_lone_surrogate_with_invalid_output_name() -> None:
    # A name decoded with surrogateescape can carry one; it must not escape as UnicodeEncodeError.
    with pytest.raises(InvalidOutputName):
        validate_output_name("bad\ud800name")


def test_validate_output_name_refuses_a_first_segment_that_would_take_the_progress_path() -> None:
    # A directory called `progress` makes every later progress report fail.
    with pytest.raises(InvalidOutputName):
        validate_output_name("progress/result.json")


def test_validate_output_name_accepts_progress_below_a_sub_directory() -> None:
    assert validate_output_name("logs/progress") == PurePosixPath("logs/progress")


NAME_ALPHABET = st.sampled_from(
    ["a", "b", ".", "/", "\\", "\x00", "-", "é", "progress", ".partial"]
)


@given(st.text() | st.lists(NAME_ALPHABET, max_size=12).map("".join))
@example("..")
@example("a/..")
@example("a/../..")
@example("progress")
@example("./progress")
@example("x.partial")
@example("a/b.partial")
def test_every_accepted_output_name_stays_inside_and_is_never_reserved(name: str) -> None:
    try:
        relative = validate_output_name(name)
    except InvalidOutputName:
        return
    root = "/base/out"
    joined = posixpath.normpath(posixpath.join(root, name))
    assert joined.startswith(root + "/")
    assert joined != posixpath.join(root, "progress")
    assert not joined.endswith(".partial")
    assert "\x00" not in name
    assert "\\" not in name
    # Normalising changes nothing: the name already is its own canonical relative path.
    assert str(relative) == name
    assert joined == posixpath.join(root, name)


# -- open_output ------------------------------------------------------------------------------


def write_then_fail(out: Path, name: str, mode: str, data: object, error: BaseException) -> None:
    with open_output(out, name, mode) as stream:
        stream.write(data)
        raise error


def test_open_output_writes_to_partial_while_open_and_renames_on_success(out: Path) -> None:
    with open_output(out, "result.bin") as stream:
        stream.write(b"first half ")
        assert (out / "result.bin.partial").exists()
        assert not (out / "result.bin").exists()
        stream.write(b"second half")
    assert (out / "result.bin").read_bytes() == b"first half second half"
    assert tree(out) == ["result.bin"]


def test_open_output_removes_the_partial_and_reraises_on_exception(out: Path) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        write_then_fail(out, "result.bin", "wb", b"half", Boom())
    assert tree(out) == []


def test_open_output_cleans_up_on_a_base_exception_too(out: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        write_then_fail(out, "result.txt", "w", "half", KeyboardInterrupt())
    assert tree(out) == []


def test_open_output_failure_leaves_an_existing_final_file_untouched(out: Path) -> None:
    (out / "result.txt").write_text("old")
    with pytest.raises(RuntimeError):
        write_then_fail(out, "result.txt", "w", "new", RuntimeError("fail"))
    assert (out / "result.txt").read_text() == "old"
    assert tree(out) == ["result.txt"]


def test_open_output_replaces_an_existing_final_file_on_success(out: Path) -> None:
    (out / "result.txt").write_text("old and longer")
    with open_output(out, "result.txt", "w") as stream:
        stream.write("new")
    assert (out / "result.txt").read_text() == "new"


def test_open_output_truncates_a_stale_partial_file(out: Path) -> None:
    (out / "result.txt.partial").write_text("stale content that is long")
    with open_output(out, "result.txt", "w") as stream:
        stream.write("new")
    assert (out / "result.txt").read_text() == "new"
    assert tree(out) == ["result.txt"]


def test_open_output_text_mode_encodes_with_the_given_encoding(out: Path) -> None:
    with open_output(out, "utf8.txt", "w") as stream:
        stream.write("é€")
    with open_output(out, "latin1.txt", "w", encoding="latin-1") as stream:
        stream.write("é")
    assert (out / "utf8.txt").read_bytes() == "é€".encode()
    assert (out / "latin1.txt").read_bytes() == b"\xe9"


@pytest.mark.parametrize("mode", ["r", "rb", "a", "ab", "w+", "wt", "x", ""])
def test_open_output_refuses_any_mode_but_w_and_wb(out: Path, mode: str) -> None:
    with pytest.raises(ValueError, match="mode"), open_output(out, "a.txt", mode):
        pass
    assert tree(out) == []


def test_open_output_creates_nested_sub_directories(out: Path) -> None:
    with open_output(out, "images/2024/0.png") as stream:
        stream.write(b"png")
    assert (out / "images" / "2024" / "0.png").read_bytes() == b"png"
    assert tree(out) == ["images", "images/2024", "images/2024/0.png"]


def test_open_output_creates_the_output_directory_itself(tmp_path: Path) -> None:
    with open_output(tmp_path / "new" / "out", "a.txt", "w") as stream:
        stream.write("x")
    assert (tmp_path / "new" / "out" / "a.txt").read_text() == "x"


def test_open_output_accepts_a_string_directory(out: Path) -> None:
    with open_output(str(out), "a.txt", "w") as stream:
        stream.write("x")
    assert (out / "a.txt").read_text() == "x"


@pytest.mark.parametrize(
    "name",
    [
        "/abs",
        "..",
        "../x",
        "",
        ".",
        "a\\b",
        "a\x00",
        "progress",
        "x.partial",
        "dir/x.partial",
        "x" * 300,
    ],
)
def test_open_output_refuses_invalid_names_and_creates_nothing(out: Path, name: str) -> None:
    with pytest.raises(InvalidOutputName), open_output(out, name):
        pass
    assert tree(out) == []


def test_open_output_does_not_follow_a_symlink_at_the_partial_name(
    out: Path, outside: Path
) -> None:
    target = outside / "victim"
    target.write_bytes(b"original")
    (out / "result.bin.partial").symlink_to(target)
    with pytest.raises(OSError, match="symbolic link") as info:
        write_then_fail(out, "result.bin", "wb", b"attack", AssertionError("opened a symlink"))
    assert info.value.errno == errno.ELOOP
    assert target.read_bytes() == b"original"
    assert not (out / "result.bin").exists()


def test_open_output_replaces_a_symlink_at_the_final_name_instead_of_writing_through_it(
    out: Path, outside: Path
) -> None:
    target = outside / "victim"
    target.write_bytes(b"original")
    (out / "result.bin").symlink_to(target)
    with open_output(out, "result.bin") as stream:
        stream.write(b"new")
    assert target.read_bytes() == b"original"
    assert not (out / "result.bin").is_symlink()
    assert (out / "result.bin").read_bytes() == b"new"


def test_open_output_refuses_a_sub_directory_that_links_outside(out: Path, outside: Path) -> None:
    (out / "link").symlink_to(outside, target_is_directory=True)
    with (
        pytest.raises(InvalidOutputName, match="outside"),
        open_output(out, "link/x.bin") as stream,
    ):
        stream.write(b"attack")
    assert list(outside.iterdir()) == []


def test_open_output_creates_nothing_outside_through_a_linked_sub_directory(
    out: Path, outside: Path
) -> None:
    (out / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidOutputName), open_output(out, "link/deeper/x.bin"):
        pass
    assert list(outside.iterdir()) == []


def test_open_output_follows_a_sub_directory_link_that_stays_inside(out: Path) -> None:
    (out / "real").mkdir()
    (out / "alias").symlink_to(out / "real", target_is_directory=True)
    with open_output(out, "alias/x.txt", "w") as stream:
        stream.write("ok")
    assert (out / "real" / "x.txt").read_text() == "ok"


def test_open_output_into_a_linked_output_directory_writes_to_its_target(
    tmp_path: Path, out: Path
) -> None:
    link = tmp_path / "link-to-out"
    link.symlink_to(out, target_is_directory=True)
    with open_output(link, "a.txt", "w") as stream:
        stream.write("x")
    assert (out / "a.txt").read_text() == "x"


def test_open_output_stream_is_closed_after_the_block(out: Path) -> None:
    with open_output(out, "a.bin") as stream:
        pass
    assert stream.closed
    assert (out / "a.bin").read_bytes() == b""


def test_open_output_creates_a_readable_non_executable_file(out: Path) -> None:
    with open_output(out, "a.bin") as stream:
        stream.write(b"x")
    mode = (out / "a.bin").stat().st_mode
    assert mode & 0o400
    assert not mode & 0o111


# -- write_output -----------------------------------------------------------------------------


def test_write_output_writes_bytes_and_returns_the_final_path(out: Path) -> None:
    path = write_output(out, "data/raw.bin", b"\x00\xff")
    assert path == out / "data" / "raw.bin"
    assert path.read_bytes() == b"\x00\xff"
    assert tree(out) == ["data", "data/raw.bin"]


def test_write_output_writes_str_as_utf8(out: Path) -> None:
    path = write_output(str(out), "text.txt", "héllo\n")
    assert Path(path).read_bytes() == "héllo\n".encode()


def test_write_output_refuses_an_invalid_name(out: Path) -> None:
    with pytest.raises(InvalidOutputName):
        write_output(out, "../escape", b"x")
    assert tree(out) == []
    assert not (out.parent / "escape").exists()


def test_output_named_under_progress_does_not_break_progress_reports(out: Path) -> None:
    # Either the output is refused, or the progress file can still be written afterwards.
    try:
        write_output(out, "progress/a.txt", b"x")
    except InvalidOutputName:
        pass
    write_progress(out, "r1", 50)
    assert (out / "progress").is_file()


def test_outputs_and_progress_in_one_directory_never_collide(out: Path) -> None:
    write_progress(out, "r1", 10)
    write_output(out, "result.json", b"{}")
    assert sorted(os.listdir(out)) == ["progress", "result.json"]
