"""Several processes (`accelerate launch`, torchrun): one copy of the run per process, work shared.

The launcher sets WORLD_SIZE / RANK / LOCAL_RANK; nothing here does anything in a single process.
- Rollouts: each process plays a share of the episodes (seeds rank, rank + N, ...), then every
  process gathers all of them in seed order, so every process holds the same trajectories, datasets
  and metrics as a single process would (`rollout.rollout`).
- Training: every process holds the same data and draws the same batches; each takes a share of
  every batch, weights its mean loss by its share of the batch's targets, and the gradients are
  summed across processes: the update is the single-process one (`train.make_optimizer`).
- Teacher counters (labels, tokens, cache hits) are summed across processes after each shared piece
  of work, so budgets and metrics count the whole run.
- Files: only the main process writes; the others wait at a barrier before reading what it wrote.
- FSDP2 (`accelerate launch` with `distributed_type: FSDP`, `fsdp_version: 2`): the student being
  trained is sharded with `fully_shard` (`prepare`), FSDP's reduce-scatter replaces the gradient
  all-reduce, and adapters are gathered to full tensors before they are saved (`save_adapter`).
  Rollouts and evaluations load their own unsharded copy, so each process still plays alone.
- DeepSpeed ZeRO-1/2 (`distributed_type: DEEPSPEED`, `zero_stage` 1 or 2): the optimizer state (and
  at stage 2 the gradients) are partitioned by DeepSpeed's engine, which takes the update
  (`deepspeed_step`); the weights stay whole on every process, so rollouts use the student as is.
The process group is gloo on CPU (the test case: `--multi_gpu --num_processes 2` with no GPU) and
NCCL on GPUs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as tdist

COUNTERS = ("queries", "tokens", "hits", "saved_tokens")
_alone = False  # inside `alone()`


def world() -> int:
    return 1 if _alone else int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def alone():
    """Work one process does by itself while the others wait at a barrier (the main process building
    the cached base model): inside it nothing is shared out, gathered or all-reduced."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast(bf16: bool = False):
    """bf16 autocast of a training forward when asked (`train.bf16`) or when the launcher asks for mixed
    precision (accelerate's `mixed_precision: bf16` sets ACCELERATE_MIXED_PRECISION); the weights and
    the optimizer stay as loaded."""
    return torch.autocast(device().type, dtype=torch.bfloat16,
                          enabled=bf16 or os.environ.get("ACCELERATE_MIXED_PRECISION", "no") == "bf16")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def fsdp() -> bool:
    """Whether the launcher asked for FSDP (accelerate sets ACCELERATE_USE_FSDP for `distributed_type: FSDP`)."""
    return world() > 1 and _env_flag("ACCELERATE_USE_FSDP")


def deepspeed() -> bool:
    """Whether the launcher asked for DeepSpeed (accelerate sets ACCELERATE_USE_DEEPSPEED for `distributed_type: DEEPSPEED`)."""
    return world() > 1 and _env_flag("ACCELERATE_USE_DEEPSPEED")


def _zero_stage() -> str:
    """The ZeRO stage a DeepSpeed launch asked for, as accelerate passes it (`_check_deepspeed` allows 1 or 2)."""
    return os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")


def _check_deepspeed() -> None:
    """The DeepSpeed launch configs sftbc runs: ZeRO stage 1 or 2, nothing offloaded, the config from
    the accelerate file's fields (sftbc builds the engine's config itself, `deepspeed_step`)."""
    stage = _zero_stage()
    if stage not in ("1", "2"):
        raise ValueError(f"accelerate config: DeepSpeed zero_stage {stage} is not supported: sftbc runs ZeRO-1 and "
                         "ZeRO-2 (ZeRO-3 partitions the weights, which every process needs whole to play its "
                         "episodes: shard them with recipes/accelerate/fsdp2.yaml)")
    for key in ("OFFLOAD_OPTIMIZER_DEVICE", "OFFLOAD_PARAM_DEVICE"):
        if os.environ.get(f"ACCELERATE_DEEPSPEED_{key}", "none") != "none":
            raise ValueError(f"accelerate config: DeepSpeed {key.lower()} must be none; sftbc does not offload")
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise ValueError("accelerate config: deepspeed_config_file is not read; set zero_stage in "
                         "deepspeed_config (see recipes/accelerate/deepspeed_zero2.yaml)")


def init() -> None:
    """Check what the launcher asked for, then join its process group (a no-op in a single process)."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        _check_deepspeed()
    if fsdp() and os.environ.get("FSDP_VERSION") != "2":
        raise ValueError(f"accelerate config: fsdp_version {os.environ.get('FSDP_VERSION')} is not supported; "
                         "sftbc shards with FSDP2 (fsdp_version: 2)")
    if world() > 1 and not tdist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(device())
        tdist.init_process_group("nccl" if cuda else "gloo")
        how = ", FSDP2" if fsdp() else f", DeepSpeed ZeRO-{_zero_stage()}" if deepspeed() else ""
        print(f"sftbc: process {rank()} of world size {world()} ({'nccl' if cuda else 'gloo'}{how})", flush=True)


def barrier() -> None:
    if world() > 1:
        tdist.barrier()


def gather(obj) -> list:
    """Every process's `obj`, in rank order, on every process (pickled: trajectories, examples)."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    tdist.all_gather_object(out, obj)
    return out


def total(x: float) -> float:
    """The sum of `x` over processes."""
    return sum(gather(x)) if world() > 1 else x


def _counted(teacher):
    """(name, object) for the teacher and, behind a label cache, the teacher it wraps."""
    inner = getattr(teacher, "inner", None)
    return [("", teacher)] + ([("inner.", inner)] if inner is not None else [])


def counters(teacher) -> dict[str, int]:
    return {p + c: getattr(obj, c) for p, obj in _counted(teacher) for c in COUNTERS if hasattr(obj, c)}


def sync_counters(teacher, before: dict[str, int]) -> None:
    """After shared work: every process's teacher counters (and its inner teacher's) become the
    run's totals, i.e. what one process doing all the work would have counted."""
    if world() == 1:
        return
    for p, obj in _counted(teacher):
        for c in COUNTERS:
            if hasattr(obj, c):
                start = before[p + c]
                setattr(obj, c, int(start + total(getattr(obj, c) - start)))


def shard_map(fn, items: list, teacher=None, alone: bool = False) -> list:
    """fn(this process's share of items), gathered back into the items' order on every process, and
    `teacher`'s counters summed. `fn` maps a list to a list of the same length, in order (scoring
    episodes, playing them); with `alone` the main process maps every item and `fn` may drop some
    (a rollout whose label budget cuts episodes before their first step)."""
    if world() == 1:
        return fn(items)
    before = counters(teacher) if teacher is not None else None
    if alone:
        idx = list(range(len(items))) if is_main() else []
    else:
        idx = list(range(rank(), len(items), world()))
    parts = gather(fn([items[i] for i in idx]) if idx else [])
    if teacher is not None:
        sync_counters(teacher, before)
    if alone:
        return parts[0]
    out = [None] * len(items)
    for r, part in enumerate(parts):
        for i, x in zip(range(r, len(items), world()), part):
            out[i] = x
    return out


def share(batch: list, count) -> tuple[list, float]:
    """This process's share of a global batch, and the weight of its mean loss (its share of the
    batch's `count`ed targets): summing the weighted gradients over processes gives the gradient of
    the whole batch's mean loss. A process left without examples runs the first one at weight 0, so
    that every process takes part in every step."""
    if world() == 1:
        return batch, 1.0
    mine = batch[rank()::world()]
    if not mine:
        return batch[:1], 0.0
    return mine, sum(map(count, mine)) / sum(map(count, batch))


def prepare(model):
    """The student to train. Under FSDP every decoder layer is sharded, then the rest of the model
    (each layer's parameters are gathered only while it runs); elsewhere `model` as it is."""
    if not fsdp():
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
    mesh = init_device_mesh(device().type, (world(),))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    layer_types = tuple(getattr(inner, "_no_split_modules", None) or ())  # transformers' name for its blocks
    for module in inner.modules():
        if type(module).__name__ in layer_types:
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(inner, mesh=mesh, reshard_after_forward=reshard)
    inner.set_gradient_divide_factor(1.0)  # each process's loss is already weighted by its share (`share`)
    return model


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters as full tensors, on every process: under FSDP each is gathered from its
    shards, so every process must call this at the same point."""
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach()
            for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, path) -> None:
    """Save a PEFT student's adapter (main process), with its parameters gathered under FSDP."""
    state = trainable_state(model)
    if is_main():
        model.save_pretrained(path, state_dict=state)
    barrier()  # the others may load it next


def deepspeed_step(model, opt, sched):
    """`step(loss) -> {lr, grad_norm}`, one update of `model` by DeepSpeed's ZeRO engine around `opt` and `sched`: it
    reduces the gradients into each process's partition, clips their global norm at 1 (as
    `train.make_optimizer` does), steps its share of the optimizer and gathers the new weights back
    into `model`. The forward pass still runs on `model` itself."""
    import deepspeed as ds

    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": int(_zero_stage())}, "steps_per_print": 2**31 - 1}
    engine, *_ = ds.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=config)

    def step(loss: torch.Tensor) -> dict:
        lr = engine.get_lr()[0]
        # each process's loss is its weighted share of the batch (`share`), so the gradients must be
        # summed over processes; DeepSpeed averages them
        engine.backward(loss * world())
        engine.step()
        norm = engine.get_global_grad_norm()
        return {"lr": lr, "grad_norm": None if norm is None else float(norm)}

    return step


def all_reduce_grads(params) -> None:
    """Sum the gradients over processes (FSDP's backward has already reduce-scattered them)."""
    if world() > 1 and not fsdp():
        for p in params:
            if p.grad is not None:
                tdist.all_reduce(p.grad, op=tdist.ReduceOp.SUM)
