"""The machine's GPU catalogue: nvidia-smi parsing, the CPU fallback, lookups and JSON shapes."""

from __future__ import annotations

import os
import subprocess
import uuid
from typing import Any

import pytest

from nvcf_platform.control.catalog import (
    Catalog,
    GpuEntry,
    InstanceType,
    UnknownBackend,
    UnknownGpu,
    UnknownInstanceType,
    detect_catalog,
    gpu_name,
)

H100_ANSWER = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\n"


def fake_run(stdout: str = "", returncode: int = 0, exc: BaseException | None = None) -> Any:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def run(args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((args, kwargs))
        if exc is not None:
            raise exc
        return subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr="")

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_two_h100s_give_1x_and_2x_instance_types_with_1x_default() -> None:
    run = fake_run(H100_ANSWER)
    catalog = detect_catalog(run=run)
    (gpu,) = catalog.gpus
    assert gpu.name == "H100"
    assert [it.name for it in gpu.instance_types] == ["LOCAL.GPU.H100_1x", "LOCAL.GPU.H100_2x"]
    assert [it.default for it in gpu.instance_types] == [True, False]
    assert [it.gpu_count for it in gpu.instance_types] == [1, 2]
    assert {it.value for it in gpu.instance_types} == {"LOCAL.GPU.H100"}
    assert {it.gpu_memory for it in gpu.instance_types} == {"80G"}
    assert gpu.instance_types[0].cpu_cores == (os.cpu_count() or 1)


def test_nvidia_smi_is_asked_with_the_documented_query_and_a_5s_timeout() -> None:
    run = fake_run(H100_ANSWER)
    detect_catalog(run=run)
    ((args, kwargs),) = run.calls
    assert args == [
        "nvidia-smi",
        "--query-gpu=name,memory.total",
        "--format=csv,noheader,nounits",
    ]
    assert kwargs["timeout"] == 5.0


def test_eight_gpus_offer_1x_2x_4x_8x_and_three_offer_1x_2x() -> None:
    eight = detect_catalog(run=fake_run("NVIDIA A100-SXM4-80GB, 81920\n" * 8))
    assert [it.name for it in eight.gpus[0].instance_types] == [
        "LOCAL.GPU.A100_1x",
        "LOCAL.GPU.A100_2x",
        "LOCAL.GPU.A100_4x",
        "LOCAL.GPU.A100_8x",
    ]
    three = detect_catalog(run=fake_run("Tesla T4, 15360\n" * 3))
    assert [it.name for it in three.gpus[0].instance_types] == [
        "LOCAL.GPU.T4_1x",
        "LOCAL.GPU.T4_2x",
    ]


def test_mixed_gpu_models_each_get_an_entry() -> None:
    catalog = detect_catalog(run=fake_run("NVIDIA H100 80GB HBM3, 81559\nNVIDIA L40S, 46068\n"))
    assert [gpu.name for gpu in catalog.gpus] == ["H100", "L40S"]


@pytest.mark.parametrize(
    ("product", "name"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("Tesla T4", "T4"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA RTX A6000", "A6000"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA GH200 480GB", "GH200"),
    ],
)
def test_gpu_names_drop_vendor_words_and_suffixes(product: str, name: str) -> None:
    assert gpu_name(product) == name


def assert_cpu_catalog(catalog: Catalog) -> None:
    (gpu,) = catalog.gpus
    assert gpu.name == "CPU"
    (it,) = gpu.instance_types
    assert (it.name, it.value, it.default, it.gpu_count) == ("LOCAL.CPU", "LOCAL.CPU", True, 0)
    assert it.cpu_cores == (os.cpu_count() or 1)
    assert it.system_memory.endswith("G")
    assert it.gpu_memory == ""


@pytest.mark.parametrize(
    "run",
    [
        fake_run("this is not csv at all\n"),
        fake_run(""),
        fake_run("NVIDIA-SMI has failed", returncode=9),
        fake_run(exc=subprocess.TimeoutExpired("nvidia-smi", 5)),
        fake_run(exc=FileNotFoundError("nvidia-smi")),
        fake_run(exc=PermissionError("nvidia-smi")),
    ],
    ids=["garbage", "empty", "nonzero-exit", "timeout", "missing", "not-executable"],
)
def test_no_usable_nvidia_smi_gives_the_one_cpu_entry(run: Any) -> None:
    assert_cpu_catalog(detect_catalog(run=run))


def test_unknown_memory_is_left_blank() -> None:
    catalog = detect_catalog(run=fake_run("NVIDIA H100, [N/A]\n"))
    assert catalog.gpus[0].instance_types[0].gpu_memory == ""


def small_catalog() -> Catalog:
    return Catalog.from_mapping(
        [
            {
                "name": "H100",
                "instanceTypes": [
                    {"name": "LOCAL.GPU.H100_1x", "value": "LOCAL.GPU.H100", "gpuCount": 1},
                    {
                        "name": "LOCAL.GPU.H100_2x",
                        "value": "LOCAL.GPU.H100",
                        "default": True,
                        "gpuCount": 2,
                        "systemMemory": "128G",
                        "gpuMemory": "80G",
                    },
                ],
            }
        ],
        cluster_group_name="local",
    )


def test_resolve_is_case_insensitive_and_returns_the_catalogue_spelling() -> None:
    gpu, it, backend = small_catalog().resolve("h100", "local.gpu.h100_2X", "LOCAL")
    assert (gpu.name, it.name, backend) == ("H100", "LOCAL.GPU.H100_2x", "local")


def test_resolve_without_backend_uses_the_cluster_group() -> None:
    assert small_catalog().resolve("H100", "LOCAL.GPU.H100_1x", None)[2] == "local"
    assert small_catalog().resolve("H100", "LOCAL.GPU.H100_1x", "  ")[2] == "local"


def test_resolve_names_what_is_unknown() -> None:
    catalog = small_catalog()
    with pytest.raises(UnknownBackend) as backend:
        catalog.resolve("H100", "LOCAL.GPU.H100_1x", "GFN")
    assert backend.value.value == "GFN"
    with pytest.raises(UnknownGpu) as gpu:
        catalog.resolve("A100", "LOCAL.GPU.H100_1x", None)
    assert gpu.value.value == "A100"
    with pytest.raises(UnknownInstanceType) as it:
        catalog.resolve("H100", "LOCAL.GPU.H100_4x", None)
    assert it.value.value == "LOCAL.GPU.H100_4x"
    assert isinstance(it.value, LookupError)


def test_default_instance_type_is_the_one_marked_default() -> None:
    assert small_catalog().default_instance_type("h100").name == "LOCAL.GPU.H100_2x"
    with pytest.raises(UnknownGpu):
        small_catalog().default_instance_type("B200")


def test_cluster_groups_json_has_nvcf_shape_and_stable_ids() -> None:
    answer = small_catalog().cluster_groups_json("nca-1")
    (group,) = answer["clusterGroups"]
    assert group["name"] == "local"
    assert group["ncaId"] == "nca-1"
    assert group["authorizedNcaIds"] == ["nca-1"]
    assert group["gpus"] == [
        {
            "name": "H100",
            "instanceTypes": [
                {"name": "LOCAL.GPU.H100_1x", "description": "", "default": False},
                {"name": "LOCAL.GPU.H100_2x", "description": "", "default": True},
            ],
        }
    ]
    (cluster,) = group["clusters"]
    assert set(cluster) == {"k8sVersion", "id", "name"}
    uuid.UUID(group["id"])
    assert small_catalog().cluster_groups_json("other")["clusterGroups"][0]["id"] == group["id"]
    renamed = Catalog(small_catalog().gpus, cluster_group_name="lab")
    assert renamed.cluster_groups_json("nca-1")["clusterGroups"][0]["id"] != group["id"]


def test_supported_gpus_json_is_a_bare_array() -> None:
    assert small_catalog().supported_gpus_json() == [{"gpu": "H100", "backend": "local"}]


def test_spec_details_omit_blank_values() -> None:
    it = small_catalog().default_instance_type("H100")
    assert it.spec_details() == {"systemMemory": "128G", "gpuMemory": "80G"}


def test_duplicate_gpu_names_are_refused() -> None:
    it = InstanceType("X", "X", "", True, 1, 1, "1G")
    with pytest.raises(ValueError, match="duplicate"):
        Catalog([GpuEntry("H100", (it,)), GpuEntry("h100", (it,))])
