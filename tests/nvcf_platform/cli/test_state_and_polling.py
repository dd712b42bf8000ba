"""The remembered ids (`~/.nvcf-cli.state`) and the deploy wait's polling loop, without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nvcf_platform.cli import CliState, DeploymentTimedOut, wait_until_deployed


def test_state_round_trips_and_a_missing_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state"
    assert CliState.load(path) == CliState()
    CliState("f", "v").save(path)
    assert CliState.load(path) == CliState("f", "v")
    assert not path.with_name("state.tmp").exists()


def test_a_broken_state_file_is_ignored_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state"
    path.write_text("[1, 2")
    assert CliState.load(path) == CliState()
    assert f"ignoring the CLI state file {path}" in capsys.readouterr().err


class ScriptedVersions:
    """Stands in for `ApiClient`: each `get_version` answers the next scripted status."""

    def __init__(self, *statuses: str) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    def get_version(self, function_id: str, version_id: str) -> dict[str, Any]:
        self.calls += 1
        return {"status": self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def wait(client: ScriptedVersions, clock: FakeClock, seen: list[str], **kwargs: Any) -> str:
    options: dict[str, Any] = {"interval": 10.0, "timeout": 900.0, "last_status": "DEPLOYING"}
    options.update(kwargs)
    return wait_until_deployed(
        client,  # type: ignore[arg-type]
        "f",
        "v",
        report=seen.append,
        clock=clock,
        sleep=clock.sleep,
        **options,
    )


def test_the_wait_reports_each_change_once_and_ends_at_active() -> None:
    client, clock, seen = ScriptedVersions("DEPLOYING", "DEPLOYING", "ACTIVE"), FakeClock(), []
    assert wait(client, clock, seen) == "ACTIVE"
    assert seen == ["ACTIVE"]  # DEPLOYING was already shown (the deploy's own answer)
    assert clock.sleeps == [10.0, 10.0]


@pytest.mark.parametrize("final", ["ERROR", "INACTIVE"])
def test_the_wait_ends_at_error_or_inactive(final: str) -> None:
    client, clock, seen = ScriptedVersions("DEPLOYING", final), FakeClock(), []
    assert wait(client, clock, seen, last_status=None) == final
    assert seen == ["DEPLOYING", final]


def test_the_wait_gives_up_at_the_timeout_after_a_last_poll() -> None:
    client, clock, seen = ScriptedVersions("DEPLOYING"), FakeClock(), []
    with pytest.raises(DeploymentTimedOut, match="still DEPLOYING after 25 s"):
        wait(client, clock, seen, timeout=25.0)
    assert clock.sleeps == [10.0, 10.0, 5.0]  # the last sleep stops at the deadline
    assert client.calls == 4
    assert seen == []
