"""Trainer state without pickle: what goes in comes back, and nothing in the files runs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from gspo_cli.base import safestate
from gspo_cli.base.errors import CheckpointError
from gspo_cli.rundir.checkpoint import load_trainer_state
from gspo_cli.rundir.paths import LEGACY_STATE_FILE, STATE_STEM


def _optimiser_after_two_steps() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / 4))
    for _ in range(2):
        model(torch.randn(5, 3)).square().mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_round_trip_keeps_types_keys_and_tensors(tmp_path: Path) -> None:
    """Int keys, tuples, None, NaN, nested lists and tensors (a 0-d one, a uint8 RNG state)
    come back as they were."""
    state = {
        "step": 7,
        "ratio": float("nan"),
        "betas": (0.9, 0.999),
        "by_id": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(6.0).view(2, 3)}},
        "rng": {"python": (3, tuple(range(5)), None), "torch": torch.get_rng_state()},
        "names": ["a", None, True],
    }
    paths = safestate.save_state(state, tmp_path / "s")
    assert [p.name for p in paths] == ["s.json", "s.safetensors"]
    back = safestate.load_state(tmp_path / "s")
    assert back["step"] == 7 and back["ratio"] != back["ratio"]  # NaN
    assert back["betas"] == (0.9, 0.999) and isinstance(back["betas"], tuple)
    assert list(back["by_id"]) == [0]
    assert torch.equal(back["by_id"][0]["exp_avg"], torch.arange(6.0).view(2, 3))
    assert back["by_id"][0]["step"].shape == () and back["by_id"][0]["step"].item() == 3.0
    assert back["rng"]["python"] == (3, (0, 1, 2, 3, 4), None)
    assert torch.equal(back["rng"]["torch"], torch.get_rng_state())
    assert back["names"] == ["a", None, True]


def test_optimiser_and_scheduler_resume_exactly(tmp_path: Path) -> None:
    """An AdamW + LambdaLR state saved and loaded into fresh ones takes the same next step."""
    model, optimizer, scheduler = _optimiser_after_two_steps()
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}  # type: ignore[attr-defined]
    safestate.save_state(state, tmp_path / "t")
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, lambda i: min(1.0, (i + 1) / 4))
    loaded = safestate.load_state(tmp_path / "t")
    twin_opt.load_state_dict(loaded["optimizer"])
    twin_sched.load_state_dict(loaded["scheduler"])
    x = torch.randn(5, 3)
    for m, o, s in ((model, optimizer, scheduler), (twin, twin_opt, twin_sched)):
        m(x).square().mean().backward()
        o.step()
        s.step()  # type: ignore[attr-defined]
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)
    assert twin_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 1e-2


@pytest.mark.parametrize(
    ("value", "problem"),
    [({"$tensor": 1}, "may not start with"), ({"f": print}, "cannot store a builtin")],
)
def test_what_cannot_be_stored_is_refused(tmp_path: Path, value: object, problem: str) -> None:
    with pytest.raises(TypeError, match=problem):
        safestate.save_state(value, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "tree",
    [{"$tensor": "t9"}, {"$items": [[1]]}, {"$eval": "x"}, {"$tuple": "abc"}],
)
def test_a_damaged_json_tree_is_a_format_error(tmp_path: Path, tree: object) -> None:
    safestate.save_state({}, tmp_path / "s")
    (tmp_path / "s.json").write_text(json.dumps(tree))
    with pytest.raises(safestate.StateFormatError):
        safestate.load_state(tmp_path / "s")


class _Payload:
    """A pickle that, when loaded with full unpickling, creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_malicious_old_trainer_state_runs_nothing(tmp_path: Path) -> None:
    """A crafted `trainer_state.pt` (gspo 0.1's format) is refused in one line and its
    payload never runs: only plain data is unpickled."""
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "step_000001"
    checkpoint.mkdir()
    with (checkpoint / LEGACY_STATE_FILE).open("wb") as handle:
        pickle.dump(  # protocol 2, as torch.save writes
            {"step": 1, "prompts_used": 4, "x": _Payload(marker)}, handle, protocol=2
        )
    with pytest.raises(CheckpointError) as caught:
        load_trainer_state(checkpoint)
    assert not marker.exists(), "the pickle's payload ran"
    message = str(caught.value)
    assert "\n" not in message and "nothing from it was run" in message, message


def test_an_old_plain_trainer_state_still_loads(tmp_path: Path) -> None:
    """A benign `trainer_state.pt` written with torch.save (the old format) loads."""
    _, optimizer, scheduler = _optimiser_after_two_steps()
    old = {
        "step": 2,
        "prompts_used": 8,
        "skipped_in_a_row": 0,
        "scheduler": scheduler.state_dict(),  # type: ignore[attr-defined]
        "optimizer": optimizer.state_dict(),
        "rng": {"python": __import__("random").getstate(), "torch": torch.get_rng_state()},
    }
    torch.save(old, tmp_path / LEGACY_STATE_FILE)
    state = load_trainer_state(tmp_path)
    assert state["step"] == 2 and state["prompts_used"] == 8
    assert torch.equal(
        state["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_a_truncated_trainer_state_is_one_line(tmp_path: Path) -> None:
    safestate.save_state(
        {"step": 1, "prompts_used": 4, "t": torch.ones(100)}, tmp_path / STATE_STEM
    )
    tensors = tmp_path / f"{STATE_STEM}.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot read the trainer state") as caught:
        load_trainer_state(tmp_path)
    assert "\n" not in str(caught.value)
