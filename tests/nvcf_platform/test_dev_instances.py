"""`InstanceFollower`: what dev shows of the instances its platform runs, read from the
directories the local backend lays out (instance.json, logs, pid records), round by round."""

from __future__ import annotations

import os
import time
from pathlib import Path

from nvcf_platform.backends.instance_dir import write_instance_file
from nvcf_platform.backends.leftovers import record_start
from nvcf_platform.backends.plan import InstancePlan
from nvcf_platform.devstack.dev_instances import InstanceFollower

FUNCTION = "6a1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a01"
VERSION = "6b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e01"


class Shown:
    """What the follower wrote: the instances' lines and dev's sentences, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines += text.splitlines()

    def say(self, text: str) -> None:
        self.lines.append(f"[dev] {text}")

    def take(self) -> list[str]:
        taken, self.lines = self.lines, []
        return taken


def lay_out(root: Path, instance_id: str, name: str = "hello") -> Path:
    directory = root / instance_id
    directory.mkdir(parents=True)
    plan = InstancePlan(instance_id, FUNCTION, VERSION, name, "nca-test")
    write_instance_file(directory, plan, inference_port=9001, health_port=9002)
    return directory


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def test_an_instance_is_announced_with_its_pids_and_its_output_is_shown_line_by_line(
    tmp_path: Path,
) -> None:
    shown = Shown()
    follower = InstanceFollower(tmp_path, write=shown.write, say=shown.say)
    directory = lay_out(tmp_path, "i-1")
    follower.poll()
    assert shown.take() == []  # no process yet

    record_start(directory, "server", os.getpid())
    append(directory / "server.log", b"listening on 9001\nhalf a li")
    follower.poll()
    assert shown.take() == ["[server-hello-1] listening on 9001"]  # the half line waits

    record_start(directory, "sidecar", os.getppid())
    append(directory / "server.log", b"ne\r\n")
    append(directory / "sidecar.log", b'{"message": "sidecar serving"}\n')
    follower.poll()
    assert shown.take() == [
        f"[dev] instance hello-1: server pid {os.getpid()}, sidecar pid {os.getppid()} "
        f"(instance i-1, function hello version {VERSION}, logs in {directory})",
        "[server-hello-1] half a line",
        '[sidecar-hello-1] {"message": "sidecar serving"}',
    ]
    assert follower.labels() == {"i-1": "hello-1"}

    follower.poll()
    assert shown.take() == []  # nothing new, nothing shown twice


def test_a_restarted_process_is_told_and_instances_are_numbered_per_function(
    tmp_path: Path,
) -> None:
    shown = Shown()
    follower = InstanceFollower(tmp_path, write=shown.write, say=shown.say)
    first = lay_out(tmp_path, "i-a")
    time.sleep(0.01)  # numbered in the order the instances were laid out
    second = lay_out(tmp_path, "i-b")
    other = lay_out(tmp_path, "i-c", name="echo")
    for directory in (first, second, other):
        record_start(directory, "server", os.getpid())
        record_start(directory, "sidecar", os.getpid())
    follower.poll()
    assert follower.labels() == {"i-a": "hello-1", "i-b": "hello-2", "i-c": "echo-1"}
    shown.take()

    (second / "sidecar.pid").write_text(f"{os.getppid()} 1\n")  # a start record of a new pid
    follower.poll()
    assert shown.take() == [f"[dev] instance hello-2: sidecar restarted (pid {os.getppid()})"]


def test_instances_of_an_earlier_run_are_left_alone_and_stop_shows_a_last_half_line(
    tmp_path: Path,
) -> None:
    old = lay_out(tmp_path, "old")
    append(old / "server.log", b"from the last run\n")
    (tmp_path / "not-an-instance").mkdir()
    shown = Shown()
    follower = InstanceFollower(
        tmp_path, write=shown.write, say=shown.say, interval=0.05, since=time.time() + 1
    )
    follower.poll()
    assert shown.take() == []

    follower = InstanceFollower(tmp_path, write=shown.write, say=shown.say, interval=0.05)
    follower.start()
    directory = lay_out(tmp_path, "new")
    append(directory / "server.log", b"no newline at the end")
    time.sleep(0.2)
    follower.stop()
    assert shown.take() == ["[server-hello-1] no newline at the end"]
    assert follower.labels() == {"new": "hello-1"}
