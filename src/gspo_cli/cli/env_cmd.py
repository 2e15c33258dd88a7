"""`gspo env`: the environment a bug report needs, as a table or (--json) as JSON."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from gspo_cli.cli.base import app, console, user_errors, warn


@app.command()
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Versions, device, threads, cache and offline switches for a bug report, with warnings
    about combinations known to break."""
    with user_errors():
        from gspo_cli.commands.environment import collect

        report = collect()
        if as_json:
            print(json.dumps(report, indent=2))
            return
        console.print(_table(report))
        for note in report["warnings"]:
            warn(note)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _table(report: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None)
    table.add_row("gspo", report["gspo"])
    table.add_row("python", f"{report['python']} ({report['python_executable']})")
    table.add_row("platform", report["platform"])
    for name, version in report["packages"].items():
        if version is not None or name in ("torch", "transformers", "datasets", "peft", "trl"):
            table.add_row(name, version or "not installed")
    build = report["torch_build"]
    table.add_row(
        "torch build",
        f"CUDA {build['cuda']}"
        if build["cuda"]
        else (f"ROCm {build['rocm']}" if build["rocm"] else "CPU only"),
    )
    device = report["device"]
    if device["kind"] == "cpu":
        cores = f"{device['cpu_cores_usable']} of {device['cpu_cores']} cores usable"
        table.add_row("device", f"CPU, {cores}, {_size(device['memory_bytes'])} RAM")
    else:
        bf16 = "bf16" if device["bf16"] else "no bf16"
        table.add_row(
            "device",
            f"{device['count']}× {device['name']}, {_size(device['gpu_memory_bytes'])}, {bf16}",
        )
    threads = report["threads"]
    shown = [f"{k}={v}" for k, v in threads.items() if v is not None]
    if threads["OMP_WAIT_POLICY"] is None:
        shown.append("OMP_WAIT_POLICY unset (gspo sets PASSIVE)")
    table.add_row("threads", ", ".join(shown))
    cache = report["cache"]
    held = _size(cache["bytes"]) if cache["exists"] else "not created yet"
    table.add_row("cache", f"{cache['path']} ({held})")
    switches = [f"{k}={v}" for k, v in report["offline"].items() if v is not None]
    table.add_row("offline switches", ", ".join(switches) or "none set")
    return table
