"""The GPU / instance-type / cluster-group catalogue of this machine (reference §9).

One cluster group (`local`) holding this machine's GPUs, named as NVCF's self-managed clusters
name theirs: GPU `H100` (NVIDIA's marketing name, vendor words and the memory/form suffix
dropped), instance types `LOCAL.GPU.H100_<n>x` for n in 1, 2, 4, 8 up to the count present
(value `LOCAL.GPU.H100`, `default` on 1x). A machine without a usable `nvidia-smi` gets one
CPU entry: GPU `CPU`, instance type `LOCAL.CPU` (gpu count 0). Deployments are validated
against this catalogue; `GET /v2/nvcf/clusterGroups` and `GET /v2/nvcf/supportedGpus` show it.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nvcf_platform.errors import PlatformError

__all__ = [
    "CPU_GPU_NAME",
    "CPU_INSTANCE_TYPE",
    "Catalog",
    "CatalogLookupError",
    "GpuEntry",
    "InstanceType",
    "UnknownBackend",
    "UnknownGpu",
    "UnknownInstanceType",
    "detect_catalog",
    "gpu_name",
]

CPU_GPU_NAME: Final = "CPU"
CPU_INSTANCE_TYPE: Final = "LOCAL.CPU"
DEFAULT_CLUSTER_GROUP: Final = "local"
NVIDIA_SMI_QUERY: Final = (
    "nvidia-smi",
    "--query-gpu=name,memory.total",
    "--format=csv,noheader,nounits",
)
NVIDIA_SMI_TIMEOUT: Final = 5.0
_INSTANCE_COUNTS: Final = (1, 2, 4, 8)
_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:nvcf-worker:cluster-group")
_VENDOR_WORDS: Final = frozenset({"NVIDIA", "TESLA", "GEFORCE", "QUADRO"})
_ARCHES: Final = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "amd64": "amd64"}

Run = Callable[..., "subprocess.CompletedProcess[str]"]


class CatalogLookupError(PlatformError, LookupError):
    """A name that the catalogue does not hold; `value` is the name as the caller gave it."""

    def __init__(self, value: str) -> None:
        self.value = value
        super().__init__(f"{type(self).__name__}: {value!r}")


class UnknownGpu(CatalogLookupError):
    """No GPU of that name in the (selected) cluster group."""


class UnknownInstanceType(CatalogLookupError):
    """The GPU has no instance type of that name."""


class UnknownBackend(CatalogLookupError):
    """No cluster group of that name."""


@dataclass(frozen=True)
class InstanceType:
    """One instance type of a GPU, as ICMS describes it (memory sizes like "80G")."""

    name: str
    value: str
    description: str
    default: bool
    gpu_count: int
    cpu_cores: int
    system_memory: str
    gpu_memory: str = ""
    cpu_arch: str = ""
    os: str = ""
    driver_version: str = ""
    storage: str = ""

    def spec_details(self) -> dict[str, str]:
        """The output-only fields of a deployment's GPU specification (blank ones omitted)."""
        details = {
            "cpuArch": self.cpu_arch,
            "os": self.os,
            "driverVersion": self.driver_version,
            "storage": self.storage,
            "systemMemory": self.system_memory,
            "gpuMemory": self.gpu_memory,
        }
        return {key: value for key, value in details.items() if value}


@dataclass(frozen=True)
class GpuEntry:
    """A GPU model of the cluster group and the instance types it offers."""

    name: str
    instance_types: tuple[InstanceType, ...]


class Catalog:
    """The cluster group of this machine: its GPUs and their instance types."""

    def __init__(
        self,
        gpus: Iterable[GpuEntry],
        *,
        cluster_group_name: str = DEFAULT_CLUSTER_GROUP,
        k8s_version: str = "none",
    ) -> None:
        self.gpus: tuple[GpuEntry, ...] = tuple(gpus)
        self.cluster_group_name = cluster_group_name
        self.k8s_version = k8s_version
        names = [gpu.name.casefold() for gpu in self.gpus]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate GPU names in the catalogue: {names}")

    @classmethod
    def from_mapping(
        cls,
        gpus: Sequence[Mapping[str, Any]],
        *,
        cluster_group_name: str = DEFAULT_CLUSTER_GROUP,
    ) -> Catalog:
        """A catalogue from NVCA's GPU config list (`[{"name", "instanceTypes": [{...}]}]`)."""
        entries = []
        for gpu in gpus:
            types = tuple(
                InstanceType(
                    name=str(it["name"]),
                    value=str(it.get("value", it["name"])),
                    description=str(it.get("description", "")),
                    default=bool(it.get("default", False)),
                    gpu_count=int(it.get("gpuCount", 1)),
                    cpu_cores=int(it.get("cpuCores", 0)),
                    system_memory=str(it.get("systemMemory", "")),
                    gpu_memory=str(it.get("gpuMemory", "")),
                    cpu_arch=str(it.get("cpuArch", "")),
                    os=str(it.get("os", "")),
                    driver_version=str(it.get("driverVersion", "")),
                    storage=str(it.get("storage", "")),
                )
                for it in gpu.get("instanceTypes", ())
            )
            entries.append(GpuEntry(str(gpu["name"]), types))
        return cls(entries, cluster_group_name=cluster_group_name)

    @property
    def cluster_group_id(self) -> str:
        """Stable across restarts: derived from the group's name."""
        return str(uuid.uuid5(_ID_NAMESPACE, self.cluster_group_name))

    def cluster_groups_json(self, nca_id: str) -> dict[str, Any]:
        """The answer of `GET /v2/nvcf/clusterGroups` for account `nca_id`."""
        group = {
            "id": self.cluster_group_id,
            "name": self.cluster_group_name,
            "ncaId": nca_id,
            "authorizedNcaIds": [nca_id],
            "gpus": [
                {
                    "name": gpu.name,
                    "instanceTypes": [
                        {"name": it.name, "description": it.description, "default": it.default}
                        for it in gpu.instance_types
                    ],
                }
                for gpu in self.gpus
            ],
            "clusters": [
                {
                    "k8sVersion": self.k8s_version,
                    "id": str(uuid.uuid5(_ID_NAMESPACE, "cluster:" + self.cluster_group_name)),
                    "name": self.cluster_group_name,
                }
            ],
        }
        return {"clusterGroups": [group]}

    def supported_gpus_json(self) -> list[dict[str, str]]:
        """The answer of `GET /v2/nvcf/supportedGpus`: a bare array of `{gpu, backend}`."""
        return [{"gpu": gpu.name, "backend": self.cluster_group_name} for gpu in self.gpus]

    def gpu(self, name: str) -> GpuEntry:
        """The GPU called `name` (case-insensitive); `UnknownGpu` otherwise."""
        wanted = name.casefold()
        for gpu in self.gpus:
            if gpu.name.casefold() == wanted:
                return gpu
        raise UnknownGpu(name)

    def resolve(
        self, gpu: str, instance_type: str, backend: str | None = None
    ) -> tuple[GpuEntry, InstanceType, str]:
        """The catalogue's entries for a deployment spec, names matched case-insensitively.

        Checks backend, then GPU, then instance type (NVCF's order), raising `UnknownBackend`,
        `UnknownGpu` or `UnknownInstanceType`. A blank `backend` means this cluster group;
        the third item is the group's name in the catalogue's spelling.
        """
        if backend and backend.strip() and backend.casefold() != self.cluster_group_name.casefold():
            raise UnknownBackend(backend)
        entry = self.gpu(gpu)
        wanted = instance_type.casefold()
        for it in entry.instance_types:
            if it.name.casefold() == wanted:
                return entry, it, self.cluster_group_name
        raise UnknownInstanceType(instance_type)

    def default_instance_type(self, gpu: str) -> InstanceType:
        """The GPU's instance type marked `default` (else its first); `UnknownGpu` if none."""
        entry = self.gpu(gpu)
        for it in entry.instance_types:
            if it.default:
                return it
        if not entry.instance_types:
            raise UnknownGpu(gpu)
        return entry.instance_types[0]


def detect_catalog(*, run: Run = subprocess.run) -> Catalog:
    """This machine's catalogue: its NVIDIA GPUs per `nvidia-smi`, else the one CPU entry.

    `nvidia-smi` missing, failing, timing out (5 s) or answering anything unparsable or empty
    gives the CPU catalogue: a GPU that cannot be described is not advertised.
    """
    try:
        answer = run(
            list(NVIDIA_SMI_QUERY),
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return _cpu_catalog()
    if answer.returncode != 0:
        return _cpu_catalog()
    gpus = _parse_nvidia_smi(answer.stdout)
    return Catalog(gpus) if gpus else _cpu_catalog()


def _parse_nvidia_smi(stdout: str) -> list[GpuEntry]:
    """GPU entries from `name, memory.total` lines; [] when any line is not such a line."""
    models: dict[str, tuple[int, str]] = {}  # GPU name -> (count, memory of the first seen)
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not fields[0]:
            return []
        name = gpu_name(fields[0])
        if not name:
            return []
        count, memory = models.get(name, (0, _mib_to_size(fields[1])))
        models[name] = (count + 1, memory)
    cores, system_memory = _cpu_cores(), _system_memory()
    arch = _ARCHES.get(platform.machine().lower(), platform.machine().lower())
    entries = []
    for name, (count, memory) in models.items():
        types = tuple(
            InstanceType(
                name=f"LOCAL.GPU.{name}_{n}x",
                value=f"LOCAL.GPU.{name}",
                description=f"{n}x {name}" + (f" {memory}" if memory else "") + " on this machine",
                default=n == 1,
                gpu_count=n,
                cpu_cores=cores,
                system_memory=system_memory,
                gpu_memory=memory,
                cpu_arch=arch,
                os=platform.system().lower(),
            )
            for n in _INSTANCE_COUNTS
            if n <= count
        )
        entries.append(GpuEntry(name, types))
    return entries


def gpu_name(product: str) -> str:
    """NVCF's GPU name for an `nvidia-smi` product name ("NVIDIA H100 80GB HBM3" -> "H100")."""
    words = [w for w in product.split() if w.upper() not in _VENDOR_WORDS]
    for index, word in enumerate(words):
        if not any(ch.isdigit() for ch in word):
            continue
        model = word.split("-")[0].upper()
        if model.isdigit() and index > 0:  # "RTX 4090" -> "RTX4090"
            model = words[index - 1].upper() + model
        return re.sub(r"[^A-Z0-9_]", "", model)
    return re.sub(r"[^A-Z0-9_]", "", "_".join(words).upper())


def _mib_to_size(mib: str) -> str:
    try:
        return f"{round(float(mib) / 1024)}G"
    except ValueError:  # "[N/A]" on some boards
        return ""


def _cpu_cores() -> int:
    return os.cpu_count() or 1


def _system_memory() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return ""
    return f"{round(total / 1024**3)}G"


def _cpu_catalog() -> Catalog:
    cpu = InstanceType(
        name=CPU_INSTANCE_TYPE,
        value=CPU_INSTANCE_TYPE,
        description="This machine's CPUs (no NVIDIA GPU found)",
        default=True,
        gpu_count=0,
        cpu_cores=_cpu_cores(),
        system_memory=_system_memory(),
        cpu_arch=_ARCHES.get(platform.machine().lower(), platform.machine().lower()),
        os=platform.system().lower(),
    )
    return Catalog([GpuEntry(CPU_GPU_NAME, (cpu,))])
