"""A torchrun worker for test_distributed.py: a checkpoint whose write fails on one rank.

Both ranks write checkpoint 1, then checkpoint 2 with rank 1's part raising ENOSPC. Every
rank must raise a StorageError (none may wait for the other forever), the staging directory
must be gone and checkpoint 1 intact. Usage: torchrun --nproc_per_node 2 checkpoint_worker.py RUN
"""

from __future__ import annotations

import sys
from pathlib import Path

from gspo_cli.base import distributed
from gspo_cli.base.errors import StorageError
from gspo_cli.rundir.checkpoint import complete_checkpoints, damage, save_checkpoint


def main() -> None:
    run = Path(sys.argv[1])
    with distributed.session(distributed.from_env()) as cluster:
        rank = cluster.rank

        def part(directory: Path) -> None:
            (directory / f"part{rank}.bin").write_bytes(bytes([rank]) * 100)

        def full_on_rank_1(directory: Path) -> None:
            if rank == 1:
                raise OSError(28, "No space left on device")
            part(directory)

        if cluster.is_main:
            run.mkdir(parents=True, exist_ok=True)
        distributed.barrier(cluster)
        save_checkpoint(run, 1, part, keep_last=1, cluster=cluster)
        try:
            save_checkpoint(run, 2, full_on_rank_1, keep_last=1, cluster=cluster)
        except StorageError as exc:
            print(f"rank {rank} stopped: {exc}", flush=True)
        distributed.barrier(cluster)
        kept = complete_checkpoints(run)
        assert [p.name for p in kept] == ["step_000001"], kept
        assert damage(kept[0]) is None
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        print(f"rank {rank} sees step 1 intact", flush=True)


if __name__ == "__main__":
    main()
