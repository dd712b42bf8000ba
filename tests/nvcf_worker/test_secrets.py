"""`read_secrets`: the JSON object NVCF mounts, and a clear error that never echoes a secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nvcf_worker import DEFAULT_SECRETS_PATH, read_secrets
from nvcf_worker.errors import NVCFWorkerError, SecretsError

SECRET = "sk-live-4f9c2e7a1b"


def test_default_path_is_where_nvcf_mounts_secrets() -> None:
    assert Path("/var/secrets/secrets.json") == Path(DEFAULT_SECRETS_PATH)


def test_read_secrets_returns_the_json_object(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text('{"API_KEY": "k", "nested": {"n": 1}}', encoding="utf-8")
    assert read_secrets(path) == {"API_KEY": "k", "nested": {"n": 1}}
    assert read_secrets(str(path)) == {"API_KEY": "k", "nested": {"n": 1}}


def test_read_secrets_reads_non_ascii_utf8(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_bytes('{"greeting": "héllo"}'.encode())
    assert read_secrets(path) == {"greeting": "héllo"}


def test_read_secrets_of_a_missing_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(SecretsError, match="no secrets file") as info:
        read_secrets(path)
    assert isinstance(info.value, NVCFWorkerError)
    assert str(path) in str(info.value)


def test_read_secrets_of_a_path_below_a_regular_file_reports_a_secrets_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SecretsError):
        read_secrets(tmp_path / "file" / "secrets.json")


def test_read_secrets_of_a_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match="directory"):
        read_secrets(tmp_path)


def test_read_secrets_of_invalid_json_explains_without_echoing_the_content(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(f'{{"API_KEY": "{SECRET}", oops}}', encoding="utf-8")
    with pytest.raises(SecretsError, match="not valid JSON") as info:
        read_secrets(path)
    message = str(info.value)
    assert SECRET not in message
    assert "oops" not in message
    assert "line 1" in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize(("content", "kind"), [("[1, 2]", "list"), ('"text"', "str"), ("3", "int")])
def test_read_secrets_refuses_json_that_is_not_an_object(
    tmp_path: Path, content: str, kind: str
) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(content)
    with pytest.raises(SecretsError, match=f"JSON object, not {kind}"):
        read_secrets(path)


def test_read_secrets_refuses_a_file_that_is_not_utf8_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_bytes(b'{"API_KEY": "' + SECRET.encode() + b'\xff\xfe"}')
    with pytest.raises(SecretsError, match="UTF-8") as info:
        read_secrets(path)
    assert SECRET not in str(info.value)


def test_read_secrets_of_an_empty_file_is_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_bytes(b"")
    with pytest.raises(SecretsError, match="not valid JSON"):
        read_secrets(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file without read permission")
def test_read_secrets_of_an_unreadable_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(f'{{"API_KEY": "{SECRET}"}}')
    path.chmod(0)
    try:
        with pytest.raises(SecretsError, match="not readable"):
            read_secrets(path)
    finally:
        path.chmod(0o600)


def test_read_secrets_turns_a_permission_error_into_a_secrets_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Works as root too, where the chmod test above is skipped.
    path = tmp_path / "secrets.json"
    path.write_text("{}")

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(SecretsError, match="not readable") as info:
        read_secrets(path)
    assert str(path) in str(info.value)


def test_nvcf_secrets_path_moves_the_default_for_both_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nvcf_worker import compat
    from nvcf_worker.secrets import SECRETS_PATH_ENV, read_secrets, secrets_path

    local = tmp_path / "secrets.json"
    local.write_text('{"HF_TOKEN": "hf_local"}')
    monkeypatch.setenv(SECRETS_PATH_ENV, str(local))
    assert secrets_path() == local
    assert read_secrets() == compat.get_secrets() == {"HF_TOKEN": "hf_local"}
    monkeypatch.setenv(SECRETS_PATH_ENV, "")
    assert str(secrets_path()) == "/var/secrets/secrets.json"
