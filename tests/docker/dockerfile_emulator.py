"""Reading Dockerfiles, and replaying their pip steps without a Docker engine.

`parse_dockerfile` splits a Dockerfile into stages of instructions (continuations joined,
comments dropped, global ARG defaults substituted in FROM). `replay_pip_steps` runs the `pip`
commands of every RUN in a fresh virtual environment, each stage's filesystem a directory:
COPY from the build context (honouring `.dockerignore`) and from other stages, WORKDIR and
`RUN --mount=type=bind` are reproduced, absolute paths in pip's arguments point into the
stage's directory, and the final stage's installs land in the virtual environment, which
stands for the image's Python.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Instruction",
    "PipRun",
    "Stage",
    "exec_form",
    "parse_dockerfile",
    "pip_commands",
    "replay_pip_steps",
]

_SEPARATORS = frozenset({"&&", "||", ";", "|"})
_PYTHON = re.compile(r"python(3(\.\d+)?)?$")
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")
_FLAG = re.compile(r"--([a-z-]+)=(\S+)")
_FLAGGED = frozenset({"ADD", "COPY", "FROM", "HEALTHCHECK", "RUN"})
# Offline installs (`--no-index`) must be served by the image's own wheel directory alone.
_INDEX_ENV = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")


@dataclass(frozen=True)
class Instruction:
    """One instruction: keyword upper-cased, leading `--name=value` flags apart."""

    keyword: str
    arguments: str
    flags: tuple[tuple[str, str], ...] = ()
    line: int = 0

    def flag(self, name: str) -> str | None:
        return next((value for key, value in self.flags if key == name), None)


@dataclass
class Stage:
    """`FROM <base> [AS <name>]` and the instructions after it."""

    base: str
    name: str | None
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


@dataclass(frozen=True)
class PipRun:
    """A pip command as the replay ran it."""

    stage: int
    argv: tuple[str, ...]
    returncode: int
    output: str


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction text): continuations joined, comments dropped."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        result.append((start, " ".join(part for part in pending if part)))
        pending = []
    if pending:
        result.append((start, " ".join(pending)))
    return result


def _substitute(text: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name in values:
            return values[name]
        default = match.group(2)
        return default if default is not None else match.group(0)

    return _VARIABLE.sub(replace, text)


def _split_flags(keyword: str, arguments: str) -> tuple[tuple[tuple[str, str], ...], str]:
    flags: list[tuple[str, str]] = []
    while keyword in _FLAGGED and (match := _FLAG.match(arguments)):
        flags.append((match.group(1), match.group(2)))
        arguments = arguments[match.end() :].lstrip()
    return tuple(flags), arguments


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of the Dockerfile at `path`; FROM lines get the global ARG defaults."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in _logical_lines(path.read_text()):
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            if not stages:
                global_args[name] = default.strip("\"'")
            continue
        flags, arguments = _split_flags(keyword, arguments)
        if keyword == "FROM":  # global ARGs are in scope for FROM only
            words = _substitute(arguments, global_args).split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=alias, index=len(stages)))
            continue
        if not stages:
            raise ValueError(f"{path}:{line}: {keyword} before FROM")
        stages[-1].instructions.append(Instruction(keyword, arguments, flags, line))
    return stages


def exec_form(arguments: str) -> list[str] | None:
    """The argv of a JSON (exec) form, or None for the shell form."""
    if not arguments.startswith("["):
        return None
    argv = json.loads(arguments)
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"not an exec form: {arguments}")
    return argv


def pip_commands(command: str) -> list[list[str]]:
    """The pip invocations of a shell command (`pip ...`, `python3 -m pip ...`), args only."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    found = []
    for words in commands:
        if words[:1] in (["pip"], ["pip3"]):
            found.append(words[1:])
        elif (
            words
            and _PYTHON.fullmatch(posixpath.basename(words[0]))
            and words[1:3]
            == [
                "-m",
                "pip",
            ]
        ):
            found.append(words[3:])
    return found


def _dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.lstrip("/") for line in lines if line and not line.startswith(("#", "!"))]


def _ignored(relative: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if fnmatch.fnmatchcase(relative, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatchcase(
            posixpath.basename(relative), pattern[3:]
        ):
            return True
    return False


def _copy_tree(source: Path, destination: Path, base: Path, patterns: Sequence[str]) -> None:
    """Copy `source` (a file or the contents of a directory) to `destination`, skipping what
    `.dockerignore` excludes (paths relative to `base`, the build context)."""
    if source.is_file():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        return
    destination.mkdir(parents=True, exist_ok=True)
    for child in sorted(source.iterdir()):
        relative = child.relative_to(base).as_posix() if child.is_relative_to(base) else ""
        if relative and _ignored(relative, patterns):
            continue
        _copy_tree(child, destination / child.name, base, patterns)


class _Replay:
    def __init__(self, context: Path, work: Path, python: Path, env: Mapping[str, str]) -> None:
        self.context = context
        self.work = work
        self.python = python
        self.env = dict(env)
        self.patterns = _dockerignore(context)
        self.roots: dict[str, Path] = {}
        self.runs: list[PipRun] = []

    def inside(self, root: Path, path: str) -> Path:
        return root / path.lstrip("/")

    def stage_root(self, reference: str) -> Path:
        if reference not in self.roots:
            raise ValueError(f"unknown stage {reference!r} (external images are not replayed)")
        return self.roots[reference]

    def copy(self, instruction: Instruction, root: Path, workdir: str) -> None:
        words = exec_form(instruction.arguments) or shlex.split(instruction.arguments)
        *sources, target = words
        destination = posixpath.join(workdir, target)
        origin = instruction.flag("from")
        base = self.context if origin is None else self.stage_root(origin)
        patterns = self.patterns if origin is None else ()
        matches = [p for s in sources for p in sorted(base.glob(s.lstrip("/")))]
        if not matches:
            raise ValueError(f"line {instruction.line}: COPY {sources} matches nothing")
        into_directory = target.endswith("/") or len(matches) > 1
        for source in matches:
            if source.is_dir():
                _copy_tree(source, self.inside(root, destination), base, patterns)
            else:
                name = posixpath.join(destination, source.name) if into_directory else destination
                _copy_tree(source, self.inside(root, name), base, patterns)

    def mounts(self, instruction: Instruction, root: Path) -> list[Path]:
        links = []
        for key, value in instruction.flags:
            options = dict(item.partition("=")[::2] for item in value.split(","))
            if key != "mount" or options.get("type", "bind") != "bind":
                continue
            origin = options.get("from")
            base = self.context if origin is None else self.stage_root(origin)
            link = self.inside(root, options["target"])
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.inside(base, options.get("source", "/")))
            links.append(link)
        return links

    def rewrite(self, root: Path, argument: str) -> str:
        if argument.startswith("/"):
            return str(self.inside(root, argument))
        name, equals, value = argument.partition("=")
        if argument.startswith("--") and equals and value.startswith("/"):
            return f"{name}={self.inside(root, value)}"
        return argument

    def pip(self, stage: int, root: Path, cwd: Path, arguments: list[str]) -> None:
        argv = [str(self.python), "-m", "pip", *(self.rewrite(root, a) for a in arguments)]
        env = dict(self.env)
        if "--no-index" in arguments:
            env["PIP_CONFIG_FILE"] = os.devnull
            for name in _INDEX_ENV:
                env.pop(name, None)
        completed = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        self.runs.append(
            PipRun(stage, tuple(argv), completed.returncode, completed.stdout + completed.stderr)
        )
        if completed.returncode != 0:
            raise AssertionError(
                f"pip failed ({completed.returncode}) in stage {stage}: {shlex.join(argv)}\n"
                f"{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
            )

    def stage(self, stage: Stage) -> None:
        root = self.work / f"stage-{stage.index}"
        root.mkdir(parents=True)
        self.roots[str(stage.index)] = root
        if stage.name:
            self.roots[stage.name] = root
        workdir = "/"
        for instruction in stage.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = posixpath.join(workdir, instruction.arguments)
                self.inside(root, workdir).mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                self.copy(instruction, root, workdir)
            elif instruction.keyword == "RUN" and exec_form(instruction.arguments) is None:
                commands = pip_commands(instruction.arguments)
                if not commands:
                    continue
                links = self.mounts(instruction, root)
                try:
                    for arguments in commands:
                        self.pip(stage.index, root, self.inside(root, workdir), arguments)
                finally:
                    for link in links:
                        link.unlink()


def replay_pip_steps(
    dockerfile: Path, context: Path, work: Path, *, env: Mapping[str, str] | None = None
) -> tuple[Path, list[PipRun]]:
    """Replay the pip steps of `dockerfile` (build context `context`) under `work`.

    Returns the virtual environment that stands for the final image's Python, and the pip
    commands run. Raises AssertionError (with pip's output) when a pip command fails, and
    ValueError for what cannot be replayed (a COPY that matches nothing, an external stage).
    """
    venv = work / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120
    )
    base_env = dict(os.environ if env is None else env)
    for name in ("PIP_NO_CACHE_DIR", "VIRTUAL_ENV", "PYTHONPATH"):
        base_env.pop(name, None)
    replay = _Replay(context, work / "stages", venv / "bin" / "python", base_env)
    for stage in parse_dockerfile(dockerfile):
        replay.stage(stage)
    return venv, replay.runs
