"""Launch the `tritonserver` shipped inside the `nvidia-pytriton` wheel, ready for NVCF.

Owns finding the server, the python-backend directory and the process environment (with the
libpython fix for pyenv-style Pythons), and the `nvcf-tritonserver` console script.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from nvcf_worker.errors import NVCFWorkerError

__all__ = [
    "NVCF_HEADER_FORWARD_PATTERN",
    "TritonServerNotFound",
    "build_tritonserver_command",
    "default_backend_directory",
    "find_tritonserver_dist",
    "libpython_dir",
    "main",
    "prepare_backend_directory",
    "prepare_pytriton_environment",
    "pytriton_libs_dir",
    "remove_stale_shm_regions",
    "tritonserver_environment",
]

NVCF_HEADER_FORWARD_PATTERN = "(?i)NVCF-.*"
"""Triton forwards HTTP headers matching this pattern into the request parameters, so a model
sees `NVCF-REQID` and friends. Triton matches names case-sensitively and keeps the casing they
arrived in; `(?i)` also catches `Nvcf-Poll-Seconds` (Go's canonical form, which NVIDIA's worker
sends) and the lower-case names of HTTP/2 hops. The library reads names in any case."""

_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB_NAME = "triton_python_backend_stub"


class TritonServerNotFound(NVCFWorkerError, RuntimeError):
    """The Triton Inference Server shipped with `nvidia-pytriton` is not installed or incomplete."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(
            f"{detail}; install the `pytriton` extra: pip install 'nvcf-worker[pytriton]'"
        )


def find_tritonserver_dist() -> Path:
    """Return the `pytriton/tritonserver` directory holding `bin/tritonserver` and its backends.

    PyTriton is located without importing it (importing it is slow and pulls in numpy, zmq and
    the Triton client). Raises `TritonServerNotFound` when the package or the binary is missing.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerNotFound("the `pytriton` package (nvidia-pytriton) is not installed")
    for location in spec.submodule_search_locations:
        dist = Path(location) / "tritonserver"
        if (dist / "bin" / "tritonserver").is_file():
            return dist
    raise TritonServerNotFound(
        f"no tritonserver binary under {list(spec.submodule_search_locations)!r}"
    )


def pytriton_libs_dir(dist: Path | None = None) -> Path:
    """Return the directory with the shared libraries `tritonserver` links against.

    A wheel install keeps them in `site-packages/nvidia_pytriton.libs`; an editable install of
    PyTriton keeps them in `pytriton/tritonserver/external_libs`, the same rule PyTriton uses.
    """
    dist = find_tritonserver_dist() if dist is None else dist
    wheel_libs = dist.parent.parent / "nvidia_pytriton.libs"
    if wheel_libs.is_dir():
        return wheel_libs
    return dist / "external_libs"


def libpython_dir() -> Path | None:
    """Return the directory holding the running interpreter's shared libpython, if it has one.

    Triton's python-backend stub links `libpython3.X.so.1.0` by name. Unless this directory comes
    first on `LD_LIBRARY_PATH`, the dynamic linker may pick the operating system's libpython of
    the same version (pyenv, uv and other self-built Pythons), and the stub dies with
    "'_thread.RLock' object has no attribute '_recursion_count'". Returns None for a Python
    built without a shared libpython.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return None
    path = Path(libdir)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if any(path.glob(f"libpython{version}*.so*")):
        return path
    return None


def _prepend_paths(existing: str | None, first: Sequence[Path | str]) -> str:
    """Return a colon-separated search path: `first` in order, then `existing`, no duplicates."""
    entries = [str(entry) for entry in first]
    if existing:
        entries.extend(entry for entry in existing.split(os.pathsep) if entry)
    return os.pathsep.join(dict.fromkeys(entries))


def tritonserver_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of `base` (default: `os.environ`) in which `tritonserver` runs correctly.

    `LD_LIBRARY_PATH` becomes the running Python's libpython directory, then the PyTriton shared
    libraries, then whatever `base` had, without duplicates. `PATH` gets the running Python's
    scripts directory first, so the embedded interpreter of the python backend resolves to this
    (virtual) environment and sees its packages, as PyTriton arranges for its own server.
    """
    env = dict(os.environ if base is None else base)
    libraries: list[Path] = []
    python_libs = libpython_dir()
    if python_libs is not None:
        libraries.append(python_libs)
    libraries.append(pytriton_libs_dir())
    env["LD_LIBRARY_PATH"] = _prepend_paths(env.get("LD_LIBRARY_PATH"), libraries)
    env["PATH"] = _prepend_paths(env.get("PATH", os.defpath), [_python_scripts_dir()])
    return env


def prepare_pytriton_environment() -> None:
    """Apply `tritonserver_environment()` to `os.environ` of this process.

    Call it before creating `pytriton.triton.Triton()`: PyTriton starts its server with a copy
    of `os.environ`, so the libpython fix reaches the python backend only this way.
    """
    os.environ.update(tritonserver_environment())


def _python_scripts_dir() -> Path:
    """The directory of the running interpreter's executable (a venv's `bin`, not resolved)."""
    return Path(sys.executable).parent


def prepare_backend_directory(dest: Path) -> Path:
    """Fill `dest/python` with the python backend and the stub built for the running Python.

    `dest` is what `--backend-directory` should point at. The wheel keeps one stub per Python
    version apart from the backend, and the stub must sit beside `libtriton_python.so`, so the
    files are copied (never symlinked: the stub would then resolve its runtime paths from the
    wheel). Files already present and identical are left alone, and each copy is atomic, so
    calling this again, or from two processes at once, is safe. Returns `dest`.
    """
    dist = find_tritonserver_dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / _STUB_NAME
    if not stub.is_file():
        available = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise TritonServerNotFound(
            f"this nvidia-pytriton has no python-backend stub for Python {version} "
            f"(it has {available!r})"
        )
    target = dest / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = [dist / "backends" / "python" / name for name in _PYTHON_BACKEND_FILES]
    for source in [*sources, stub]:
        _copy_if_changed(source, target / source.name)
    return dest


def _copy_if_changed(source: Path, destination: Path) -> None:
    """Copy `source` to `destination` atomically unless an identical file is already there."""
    if destination.is_file() and filecmp.cmp(source, destination, shallow=False):
        return
    fd, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    os.close(fd)
    try:
        shutil.copy2(source, temporary)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def default_backend_directory() -> Path:
    """Return the per-user cache directory `main` prepares the backends in by default.

    Keyed by the Python version and the PyTriton install, so two environments never share a stub.
    """
    dist = find_tritonserver_dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256(str(dist.resolve()).encode()).hexdigest()[:12]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nvcf-worker" / "tritonserver" / f"py{version}-{key}" / "backends"


_SHM_PREFIX_OPTION = "shm-region-prefix-name"
_SHM_REGION = re.compile(r"nvcf(\d+)_")


def remove_stale_shm_regions(shm_dir: Path = Path("/dev/shm")) -> list[Path]:
    """Remove the python backend's shared-memory regions of servers that are gone; return them.

    A server named its regions `nvcf<pid>_...` (`build_tritonserver_command`). Killed (SIGKILL,
    OOM), it leaves them behind, 1 MiB or more each, and a pod's /dev/shm outlives its
    container's restarts. A region whose pid is no live process is removed; one of a live pid
    (this server's, or a pid reused since) is left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(shm_dir.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _SHM_REGION.match(entry.name)
        if match is None or Path(f"/proc/{match.group(1)}").exists():
            continue
        try:
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def build_tritonserver_command(
    model_repository: str | os.PathLike[str],
    *,
    backend_directory: str | os.PathLike[str],
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    address: str = "0.0.0.0",
    http_header_forward_pattern: str | None = NVCF_HEADER_FORWARD_PATTERN,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Return the argv that serves `model_repository` with the PyTriton `tritonserver`.

    Every model in the repository is loaded at start-up (`--model-control-mode=none`); a model
    that fails to load stops the server (`--exit-on-error`), and `/v2/health/ready` answers 200
    only once all models are ready (`--strict-readiness`), which is what the NVCF health check
    polls. The pinned-memory pool is off so the server starts quietly without a GPU; pass
    `--pinned-memory-pool-byte-size=...` in `extra_args` to bring it back. The python backend's
    shared-memory prefix is made unique to this process (unless `extra_args` sets
    `shm-region-prefix-name`), so several servers can run on one machine. `address` binds the
    HTTP, gRPC and metrics endpoints (Triton's own default is all interfaces, which a sidecar
    reaching the container through a Kubernetes service needs). `extra_args` come last, so
    they override the flags above.
    """
    dist = find_tritonserver_dist()
    command = [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={os.fspath(model_repository)}",
        f"--backend-directory={os.fspath(backend_directory)}",
        f"--cache-directory={dist / 'caches'}",
        "--model-control-mode=none",
        "--exit-on-error=true",
        "--strict-readiness=true",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--pinned-memory-pool-byte-size=0",
    ]
    if http_header_forward_pattern:
        command.append(f"--http-header-forward-pattern={http_header_forward_pattern}")
    if not any(_SHM_PREFIX_OPTION in arg for arg in extra_args):
        # The python backend names its shared-memory regions with a fixed prefix by default,
        # so a second server on the same machine aborts (boost lock_exception): one per process.
        command.append(f"--backend-config=python,{_SHM_PREFIX_OPTION}=nvcf{os.getpid()}_")
    command.extend(extra_args)
    return command


def _parse_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split `argv` at the first `--`: our options before it, raw tritonserver flags after it."""
    arguments = list(argv)
    passthrough: list[str] = []
    if "--" in arguments:
        split = arguments.index("--")
        arguments, passthrough = arguments[:split], arguments[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="nvcf-tritonserver",
        description=(
            "Serve a Triton model repository with the tritonserver from nvidia-pytriton, "
            "with the environment and flags NVCF needs. Arguments after `--` go to "
            "tritonserver unchanged."
        ),
    )
    parser.add_argument("--model-repository", required=True, type=Path)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--address", default="0.0.0.0", help="address to bind HTTP, gRPC and metrics to"
    )
    parser.add_argument(
        "--http-header-forward-pattern",
        default=NVCF_HEADER_FORWARD_PATTERN,
        help="HTTP headers forwarded as request parameters (empty string: none)",
    )
    parser.add_argument(
        "--backend-directory",
        type=Path,
        default=None,
        help="where to assemble the python backend (default: a per-user cache directory)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the command instead of running it"
    )
    return parser.parse_args(arguments), passthrough


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nvcf-tritonserver`: prepare the backends, then exec `tritonserver`.

    The process is replaced by the server (signals and exit status are Triton's own); with
    `--dry-run` the command is printed and 0 returned instead.
    """
    options, passthrough = _parse_arguments(sys.argv[1:] if argv is None else argv)
    repository: Path = options.model_repository
    if not repository.is_dir():
        print(
            f"nvcf-tritonserver: model repository {str(repository)!r} is not a directory",
            file=sys.stderr,
        )
        return 2
    try:
        backends = prepare_backend_directory(
            options.backend_directory or default_backend_directory()
        )
        command = build_tritonserver_command(
            repository.resolve(),
            backend_directory=backends,
            http_port=options.http_port,
            grpc_port=options.grpc_port,
            metrics_port=options.metrics_port,
            address=options.address,
            http_header_forward_pattern=options.http_header_forward_pattern or None,
            extra_args=passthrough,
        )
        env = tritonserver_environment()
    except TritonServerNotFound as error:
        print(f"nvcf-tritonserver: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(
            f"nvcf-tritonserver: cannot prepare the python backend: {error} "
            "(choose a writable --backend-directory)",
            file=sys.stderr,
        )
        return 1
    if not options.dry_run:
        remove_stale_shm_regions()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(command[0], command, env)
        except OSError as error:
            print(f"nvcf-tritonserver: cannot run {command[0]!r}: {error}", file=sys.stderr)
            return 1
    assignments = [f"{name}={env[name]}" for name in ("LD_LIBRARY_PATH", "PATH")]
    print(shlex.join([*assignments, *command]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
