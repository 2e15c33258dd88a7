"""`gspo env`: what a bug report needs, as plain data: versions, the device, threads, the cache
and the offline switches, plus warnings about combinations known to break.

Versions are read from package metadata (nothing optional is imported); torch is imported once,
for its build (CUDA/ROCm) and the device. Every rule in `known_problems` names its source.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gspo_cli import __version__
from gspo_cli.rundir.paths import cache_root

# The libraries a report names: gspo's own stack, then the optional ones.
PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "safetensors",
    "peft",
    "trl",
    "accelerate",
    "vllm",
    "matplotlib",
    "tensorboard",
    "wandb",
    "mlflow-skinny",
    "mlflow",
    "trackio",
)
# Environment variables that change what gspo reaches or how fast it runs.
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE")
THREAD_SWITCHES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
# gspo's own supported ranges (source: pyproject.toml's dependencies).
SUPPORTED = {"torch": ("2.4", None), "transformers": ("5.0", "6")}
# The installed libraries whose declared requirements are checked against each other.
STACK = ("transformers", "trl", "peft", "accelerate", "datasets", "vllm")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _folder_size(path: Path) -> int:
    """Bytes under `path` (0 when it does not exist); links are not followed."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def _memory_bytes() -> int | None:
    """Physical memory, from sysconf (Linux, macOS)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _device() -> dict[str, Any]:
    """The accelerator torch sees (name, memory, bf16), or the CPU's cores and memory."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = {"cpu_cores": os.cpu_count(), "cpu_cores_usable": cpus, "memory_bytes": _memory_bytes()}
    if not torch.cuda.is_available():
        return {"kind": "cpu", **cpu}
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "kind": "rocm" if torch.version.hip else "cuda",
        "name": props.name,
        "count": torch.cuda.device_count(),
        "gpu_memory_bytes": props.total_memory,
        "bf16": torch.cuda.is_bf16_supported(),
        **cpu,
    }


def collect() -> dict[str, Any]:
    """The whole report, JSON-ready."""
    import torch

    root = cache_root()
    return {
        "gspo": __version__,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_build": {"cuda": torch.version.cuda, "rocm": torch.version.hip},
        "device": _device(),
        "threads": {
            "torch_threads": torch.get_num_threads(),
            **{name: os.environ.get(name) for name in THREAD_SWITCHES},
        },
        "cache": {"path": str(root), "exists": root.is_dir(), "bytes": _folder_size(root)},
        "offline": {name: os.environ.get(name) for name in OFFLINE_SWITCHES},
        "warnings": known_problems(),
    }


def _release(text: str) -> tuple[int, ...]:
    """'2.13.0+cpu' → (2, 13, 0): the numeric release, local and pre-release tags dropped."""
    from packaging.version import Version

    return Version(text).release


def _outside_supported(versions: dict[str, str | None]) -> list[str]:
    notes = []
    for name, (low, high) in SUPPORTED.items():
        found = versions.get(name)
        if found is None:
            notes.append(f"{name} is not installed; gspo needs it (source: pyproject.toml)")
            continue
        if _release(found) < _release(low) or (high and _release(found) >= _release(high)):
            span = f">={low}" + (f",<{high}" if high else "")
            notes.append(
                f"{name} {found} is outside gspo's supported range {span} (source: "
                "gspo's pyproject.toml dependencies)"
            )
    return notes


def _unmet_requirements(version_of: Callable[[str], str | None]) -> list[str]:
    """Each installed STACK library's declared requirements on the others, where unmet."""
    from packaging.requirements import InvalidRequirement, Requirement

    notes = []
    for name in STACK:
        if version_of(name) is None:
            continue
        for text in metadata.requires(name) or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an optional extra's requirement, or another platform's
            found = version_of(req.name)
            if found is None or req.name not in (*STACK, "torch"):
                continue
            if not req.specifier.contains(found, prereleases=True):
                notes.append(
                    f"{name} {version_of(name)} requires {req}, found {req.name} {found} "
                    f"(source: {name}'s package metadata)"
                )
    return notes


def known_problems(
    version_of: Callable[[str], str | None] = _version,
    environ: dict[str, str] | None = None,
    usable_cpus: int | None = None,
) -> list[str]:
    """Warnings, each naming where the fact comes from."""
    env = dict(os.environ) if environ is None else environ
    notes = _outside_supported({n: version_of(n) for n in SUPPORTED})
    notes += _unmet_requirements(version_of)
    cpus = usable_cpus if usable_cpus is not None else len(os.sched_getaffinity(0))
    policy = env.get("OMP_WAIT_POLICY")  # unset: gspo's commands set PASSIVE themselves
    if cpus <= 4 and policy is not None and policy.upper() != "PASSIVE":
        notes.append(
            f"OMP_WAIT_POLICY={policy} on {cpus} CPUs: a torch process sharing its cores with "
            "another busy one ran about 20× slower with OpenMP's active wait; unset it or set "
            "OMP_WAIT_POLICY=PASSIVE (source: gspo's platform notes, 'Timing on shared cores')"
        )
    return notes
