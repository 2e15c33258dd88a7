"""Several processes, one model: torchrun's environment, FSDP2 sharding, and the few
collectives the training loop needs.

`torchrun` starts one process per device and tells each its place in `WORLD_SIZE`, `RANK`
and `LOCAL_RANK`. `from_env` reads them into a `Cluster`; without them (a plain `gspo
train`) the cluster is one process, and every helper here is the identity or a no-op, so a
single-process run takes the code path it always took.

What is shared how:
- The model is sharded with FSDP2 (`fully_shard`): each decoder layer is one unit and the
  `LogProbModel` wrapper is the root (embedding, final norm, head). Parameters, gradients
  and AdamW state exist only as 1/N shards outside a layer's forward and backward.
- For generation and π_old log-probs (no gradients) `unsharded` gathers every unit once and
  keeps it whole until the rollout is done: no collective runs while ranks decode
  completions of different lengths, so none can wait on another.
- Each rank samples an equal, contiguous share of the step's prompts (all G completions of
  each), then the rollout batch is all-gathered so every rank holds the whole batch; each
  rank computes gradients for its own rows only (see `train.accumulate_gradients`).

Process-group start-up and shutdown live in `session`; the CLI enters it once.
"""

from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from gspo_cli.base.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """This process's place among the processes of one training run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def share(self, n: int) -> range:
        """This rank's contiguous share of `n` items; `n` must divide by the world size."""
        if n % self.world_size:
            raise ValueError(f"{n} items do not split evenly over {self.world_size} processes")
        per = n // self.world_size
        return range(self.rank * per, (self.rank + 1) * per)

    def uneven_share(self, n: int) -> range:
        """A contiguous share of `n` items; shares differ in length by at most one."""
        return range(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def device(self) -> torch.device:
        """`cuda:LOCAL_RANK` when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


SINGLE = Cluster()


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer") from None


def from_env() -> Cluster:
    """The cluster torchrun describes in the environment, or one process without it."""
    world = _env_int("WORLD_SIZE")
    if world is None or world == 1:
        return SINGLE
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if world < 1 or rank is None or not 0 <= rank < world:
        raise UserError(
            f"WORLD_SIZE={world} needs RANK in 0..{world - 1} (got {rank}); start several "
            "processes with torchrun or `gspo train --nproc N`"
        )
    return Cluster(rank=rank, world_size=world, local_rank=local if local is not None else 0)


@contextmanager
def session(cluster: Cluster) -> Iterator[Cluster]:
    """Start the process group (gloo on CPU; NCCL for CUDA tensors, gloo for CPU ones), and
    shut it down cleanly whatever happens.

    Shutdown releases everything first: a gloo process group destroyed while a sharded
    model is still alive can abort the process at exit. A model referenced only from an
    exception's traceback is released by clearing those frames.
    """
    if not cluster.is_distributed:
        yield cluster
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(cluster.local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield cluster
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        gc.collect()
        dist.destroy_process_group()


# --- collectives (identities in one process) ---------------------------------------------


def barrier(cluster: Cluster) -> None:
    if cluster.is_distributed:
        dist.barrier()


@contextmanager
def main_first(cluster: Cluster) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. building a shared cache); the others then follow."""
    if not cluster.is_main:
        barrier(cluster)
    yield
    if cluster.is_main:
        barrier(cluster)


def broadcast(cluster: Cluster, value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not cluster.is_distributed:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    result: T = box[0]
    return result


def gather_objects(cluster: Cluster, value: T) -> list[T]:
    """Every rank's `value`, in rank order."""
    if not cluster.is_distributed:
        return [value]
    out: list[Any] = [None] * cluster.world_size
    dist.all_gather_object(out, value)
    return out


def all_reduce(cluster: Cluster, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`tensor` reduced over ranks in place (`sum`, `max` or `min`), and returned."""
    if cluster.is_distributed:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def max_int(cluster: Cluster, value: int) -> int:
    """The largest `value` over ranks."""
    return int(all_reduce(cluster, torch.tensor([value]), "max").item())


def any_rank(cluster: Cluster, flag: bool) -> bool:
    """True when `flag` is true on any rank."""
    return max_int(cluster, int(flag)) > 0


def max_floats(cluster: Cluster, values: dict[str, float]) -> dict[str, float]:
    """Each value's maximum over ranks (timings: the slowest rank sets the pace)."""
    if not cluster.is_distributed:
        return values
    keys = sorted(values)
    reduced = all_reduce(cluster, torch.tensor([values[k] for k in keys], dtype=torch.float64))
    return dict(zip(keys, reduced.tolist(), strict=True))


def gather_rows(cluster: Cluster, tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `[n, ...]` tensor (same shape on all ranks), concatenated in rank order."""
    if not cluster.is_distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(cluster.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


# --- FSDP2 ----------------------------------------------------------------------------------


def shard(policy: torch.nn.Module, model: Any) -> None:
    """Shard `policy` (a `LogProbModel` around `model`) with FSDP2, in place: each decoder
    layer (the classes the model lists in `_no_split_modules`) is one unit and `policy` is
    the root. Then one tiny forward through the root, so that FSDP takes `policy` as its
    root before generation runs the layers without it, and a reshard, so that the optimiser
    built next sees the sharded parameters."""
    from torch.distributed.fsdp import fully_shard

    layer_types = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layer_types:
            fully_shard(module)
    fully_shard(policy)
    device = next(policy.parameters()).device
    ids = torch.ones(1, 2, dtype=torch.long, device=device)  # a prompt token + a completion
    with torch.no_grad():
        policy(ids, torch.ones_like(ids), 1)
    policy.reshard()  # type: ignore[operator]  # a root keeps its parameters whole after forward


@contextmanager
def unsharded(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Gather every FSDP unit of `modules` once and keep the parameters whole inside the
    block (for no-grad work: generation, π_old log-probs, evaluation); reshard on exit.

    Inside, forwards run no collective at all, so ranks may call `generate` on batches that
    finish after different numbers of tokens without waiting on one another.
    """
    from torch.distributed.fsdp import FSDPModule

    roots = [m for m in modules if m is not None and isinstance(m, FSDPModule)]
    units = [u for root in roots for u in root.modules() if isinstance(u, FSDPModule)]
    for root in roots:
        root.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for root in roots:
            root.set_reshard_after_forward(True)
            root.set_reshard_after_forward(False, recurse=False)  # FSDP's default for roots


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU (empty on the other ranks); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights: dict[str, torch.Tensor] = get_model_state_dict(model, options=options)  # type: ignore[assignment]
    # Tied parameters (an embedding shared with the head) come back as separate copies; make
    # them one tensor again so `save_pretrained` stores them once, as it does unsharded.
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        original = first.setdefault(id(param), name)
        if original != name and original in weights:
            weights[name] = weights[original]
    return weights


def save_optimizer(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, stem: Path) -> None:
    """This rank's optimiser shard at `stem` (`safestate`: JSON + safetensors, no pickle).
    Sharded tensors are stored as this rank's local part."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from gspo_cli.base.safestate import save_state

    save_state(_local_parts(get_optimizer_state_dict(policy, optimizer)), stem)


def load_optimizer(policy: torch.nn.Module, optimizer: torch.optim.Optimizer, stem: Path) -> None:
    """Load this rank's shard written by `save_optimizer` into `optimizer`: each local part
    becomes a sharded tensor again with the mesh and placement of the optimiser's own."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    from gspo_cli.base.safestate import load_state

    template = get_optimizer_state_dict(policy, optimizer)
    set_optimizer_state_dict(policy, optimizer, _sharded_like(template, load_state(stem)))


def _local_parts(tree: Any) -> Any:
    """`tree` with every DTensor replaced by this rank's local tensor."""
    from torch.distributed.tensor import DTensor

    if isinstance(tree, DTensor):
        return tree.to_local()
    if isinstance(tree, dict):
        return {k: _local_parts(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_local_parts(v) for v in tree)
    return tree


def _sharded_like(template: Any, loaded: Any) -> Any:
    """`loaded` with each tensor in a DTensor's place in `template` made that DTensor again."""
    from torch.distributed.tensor import DTensor

    if isinstance(template, DTensor) and isinstance(loaded, torch.Tensor):
        local = loaded.to(template.to_local().device, template.dtype)
        return DTensor.from_local(
            local,
            template.device_mesh,
            template.placements,
            shape=template.shape,
            stride=template.stride(),
        )
    if isinstance(loaded, dict):
        by_key = template if isinstance(template, dict) else {}
        return {k: _sharded_like(by_key.get(k), v) for k, v in loaded.items()}
    if isinstance(loaded, list | tuple):
        seq = template if isinstance(template, list | tuple) else []
        pairs = [(seq[i] if i < len(seq) else None, v) for i, v in enumerate(loaded)]
        return type(loaded)(_sharded_like(t, v) for t, v in pairs)
    return loaded


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: the full value of a replicated DTensor (e.g. a clipped grad norm)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
