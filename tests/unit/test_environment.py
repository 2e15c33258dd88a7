"""`gspo env`: the report's shape (parsed from --json) and the known-bad rules, each with its
source."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from gspo_cli import __version__
from gspo_cli.cli import app
from gspo_cli.commands.environment import known_problems

GOOD = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "trl": "1.16.0", "accelerate": "1.16.0"}


def test_env_json_parses_and_names_versions_device_and_cache(tmp_path: object) -> None:
    result = CliRunner().invoke(app, ["env", "--json"], env={"GSPO_CACHE": str(tmp_path)})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["gspo"] == __version__
    assert report["packages"]["torch"].startswith("2.")
    assert set(report["packages"]) >= {"transformers", "datasets", "peft", "trl", "vllm"}
    assert report["device"]["kind"] in ("cpu", "cuda", "rocm")
    assert report["device"]["cpu_cores"] == os.cpu_count()
    assert report["cache"] == {"path": str(tmp_path), "exists": True, "bytes": 0}
    assert set(report["offline"]) == {
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "WANDB_MODE",
    }
    assert isinstance(report["warnings"], list)


def test_a_good_stack_has_no_warnings() -> None:
    assert known_problems(GOOD.get, {}, usable_cpus=2) == []


def test_transformers_4_is_outside_the_supported_range_and_trl_wants_newer() -> None:
    versions = {**GOOD, "transformers": "4.40.0"}
    notes = known_problems(versions.get, {}, usable_cpus=8)
    assert notes[0] == (
        "transformers 4.40.0 is outside gspo's supported range >=5.0,<6 (source: gspo's "
        "pyproject.toml dependencies)"
    )
    assert any(
        n.startswith("trl 1.16.0 requires transformers>=")
        and "(source: trl's package metadata)" in n
        for n in notes
    ), notes
    assert len(notes) == 2, "extras' requirements (trl[deepspeed]) are not checked"


def test_an_active_openmp_wait_on_few_cores_is_warned_unset_is_not() -> None:
    (note,) = known_problems(GOOD.get, {"OMP_WAIT_POLICY": "ACTIVE"}, usable_cpus=2)
    assert "about 20× slower" in note and "platform notes" in note
    assert known_problems(GOOD.get, {"OMP_WAIT_POLICY": "ACTIVE"}, usable_cpus=64) == []
    assert known_problems(GOOD.get, {"OMP_WAIT_POLICY": "passive"}, usable_cpus=2) == []
