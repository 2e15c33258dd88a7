"""`python kill_worker.py STEP gspo-args...`: run the gspo CLI, and SIGKILL this process
in the middle of writing checkpoint STEP (after its model file, before its trainer state).
For the fault-injection tests: a crash at the worst moment of a checkpoint."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from gspo_cli.base import safestate
from gspo_cli.cli import app

KILL_AT = f"step_{int(sys.argv[1]):06d}"
real_save = safestate.save_state


def save_then_die(state: Any, stem: Path) -> list[Path]:
    if stem.parent.name.startswith(f".{KILL_AT}"):  # inside the staging directory
        half = stem.with_name(stem.name + safestate.TENSORS_SUFFIX)
        half.write_bytes(b"\0" * 4096)  # a partial file, as a kill mid-write leaves
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(state, stem)


safestate.save_state = save_then_die  # type: ignore[assignment]
sys.argv = ["gspo", *sys.argv[2:]]
app()
