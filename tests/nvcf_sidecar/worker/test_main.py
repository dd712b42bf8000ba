"""`nvcf-sidecar run`'s process edge: exit status for a bad configuration, the termination log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from nvcf_sidecar.worker.main import add_arguments, run_command, write_termination_log
from nvcf_sidecar.worker.sidecar import StartupError

FUNCTION_VERSION_ID = "66666666-7777-8888-9999-000000000000"


def test_termination_log_only_inside_kubernetes(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")
    error = StartupError("container never got ready", is_internal=False)
    assert not write_termination_log(error, path=log, environ={})
    assert log.read_text() == ""
    assert write_termination_log(error, path=log, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert json.loads(log.read_text()) == {
        "message": "container never got ready",
        "isInternal": False,
    }
    missing = tmp_path / "absent" / "termination-log"
    assert not write_termination_log(
        error, path=missing, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    )


def test_run_command_exits_1_on_a_bad_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("FUNCTION_ID", "not-a-uuid")
    monkeypatch.setenv("FUNCTION_VERSION_ID", FUNCTION_VERSION_ID)
    monkeypatch.setenv("NVCF_FQDN_GRPC", "http://127.0.0.1:1")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_command(parser.parse_args([])) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["level"] == "ERROR"
    assert "FUNCTION_ID='not-a-uuid': must be a UUID" in event["message"]


def test_run_command_exits_1_on_an_unknown_event_loop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("FUNCTION_ID", FUNCTION_VERSION_ID)
    monkeypatch.setenv("FUNCTION_VERSION_ID", FUNCTION_VERSION_ID)
    monkeypatch.setenv("NVCF_FQDN_GRPC", "http://127.0.0.1:1")
    monkeypatch.setenv("NVCF_EVENT_LOOP", "trio")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_command(parser.parse_args([])) == 1
    event = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert event["level"] == "ERROR"
    assert event["message"] == (
        "invalid configuration: NVCF_EVENT_LOOP='trio': expected one of auto, uvloop, asyncio"
    )
