"""One plain training loop for every supervised stage (base pretraining, BC/SFT, DAgger rounds).

Why not TRL's SFTTrainer here: we need the loss on exactly the tokens we choose (the assistant mask,
later relabeled branches and KL targets), length-bucketed batches with a token budget (CPU time is
all padding otherwise), and a loop short enough to read. The datasets we save still train unchanged
in SFTTrainer(assistant_only_loss=True); a test checks that.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sftbc import dist, track
from sftbc.pack import PACKED, pack


@dataclass
class Example:
    """One training sequence. With `branches` it is a packed tree: the first tokens are the trunk (an
    executed conversation) and each branch `(offset, prefix)` is the span from `offset` to the next
    branch, a continuation of the trunk's first `prefix` tokens (a teacher label the student did not
    execute). A branch attends only to that prefix and to itself, at positions prefix, prefix + 1, ...,
    so its tokens see exactly the context they would as a row of their own."""

    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a training target
    branches: list[tuple[int, int]] = field(default_factory=list)  # (offset, prefix) in increasing offset

    def __post_init__(self):
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError("input_ids and loss_mask differ in length")
        trunk, segs = self.segments()
        for start, end, prefix in segs:
            if not (0 < prefix <= trunk <= start < end):
                raise ValueError(f"branch ({start}, {prefix}) does not continue the {trunk}-token trunk")

    def segments(self) -> tuple[int, list[tuple[int, int, int]]]:
        """The trunk's length, and per branch (start, end, prefix) in packed coordinates."""
        trunk = self.branches[0][0] if self.branches else len(self.input_ids)
        ends = [b[0] for b in self.branches[1:]] + [len(self.input_ids)]
        return trunk, [(offset, end, prefix) for (offset, prefix), end in zip(self.branches, ends)]


def make_batches(examples: list[Example], max_tokens: int, rng: random.Random) -> list[list[Example]]:
    """Length-bucketed batches of at most `max_tokens` (padded) tokens, in a shuffled order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), rng.random()))
    batches, cur, cur_max = [], [], 0
    for i in order:
        n = len(examples[i].input_ids)
        if cur and max(cur_max, n) * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(examples[i])
        cur_max = max(cur_max, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(batch: list[Example], pad_id: int) -> dict:
    """Right-padded tensors. `labels[i, t]` is the target predicted from position t - 1, so a branch's
    first token (which continues the trunk at `prefix`, not the token before it in the packed row)
    must not be a target: `to_examples` starts every branch one token before its first label.
    When some example has branches the batch also carries `position_ids` and `tree`: per such row
    (row, its branch tokens' positions, the keys each may attend to), for `model_inputs`."""
    L = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    attn = torch.zeros(len(batch), L, dtype=torch.long)
    labels = torch.full((len(batch), L), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        attn[i, :n] = 1
        mask = torch.tensor(e.loss_mask, dtype=torch.bool)
        labels[i, :n] = torch.where(mask, ids[i, :n], torch.full_like(ids[i, :n], -100))
    out = {"input_ids": ids, "attention_mask": attn, "labels": labels}
    if any(e.branches for e in batch):
        out["position_ids"], out["tree"] = _tree(batch, L)
    return out


def _tree(batch: list[Example], L: int) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor, torch.Tensor]]]:
    """Position ids (B, L), and per row with branches (row, positions (n,), allowed keys (n, len))."""
    pos = torch.arange(L).repeat(len(batch), 1)
    tree = []
    for i, e in enumerate(batch):
        _, segs = e.segments()
        if not segs:
            continue
        rows, allowed = [], []
        for start, end, prefix in segs:
            pos[i, start:end] = torch.arange(prefix, prefix + end - start)
            a = torch.zeros(end - start, len(e.input_ids), dtype=torch.bool)
            a[:, :prefix] = True
            a[:, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
            rows.append(torch.arange(start, end))
            allowed.append(a)
        tree.append((i, torch.cat(rows), torch.cat(allowed)))
    return pos, tree


def tree_mask(batch: dict) -> torch.Tensor:
    """The (B, 1, L, L) boolean mask of a batch with branches, True where a query may attend: causal
    (the trunk comes first, padding last), and each branch token's row replaced by its own keys."""
    B, L = batch["input_ids"].shape
    mask = torch.ones(L, L, dtype=torch.bool).tril().repeat(B, 1, 1)
    for i, positions, allowed in batch["tree"]:
        mask[i, positions] = False
        mask[i, positions, : allowed.shape[1]] = allowed
    return mask[:, None]


def model_inputs(model, batch: dict) -> dict:
    """The model's keyword arguments. A packed batch (`pack.pack`) goes to `pack.packed_attention` with
    its plan (the model is switched to it on first use; without a plan it is SDPA). A dense batch with
    branches gives SDPA a boolean 4D mask, or eager attention one added to the scores (0 / dtype-minimum)."""
    dev = next(model.parameters()).device
    out = {k: batch[k].to(dev) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if "plan" in batch:
        if model.config._attn_implementation != PACKED:
            model.set_attn_implementation(PACKED)
        out["plan"] = batch["plan"].to(dev)
    elif "tree" in batch:
        impl = model.config._attn_implementation
        if impl not in ("sdpa", "eager", PACKED):  # PACKED is SDPA when no plan is given
            raise ValueError(f"branch-masked training needs attn_implementation 'sdpa' or 'eager' (or train.pack), "
                             f"not {impl!r}")
        mask = tree_mask(batch).to(dev)
        if impl == "eager":
            dtype = next(model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=dev).masked_fill_(~mask, torch.finfo(dtype).min)
        out["attention_mask"] = mask
    return out


def packed_logits(model, batch: dict, positions: torch.Tensor) -> torch.Tensor:
    """(len(positions), vocab): the logits at those positions of a packed batch, and nowhere else."""
    dev = next(model.parameters()).device
    return model(**model_inputs(model, batch), logits_to_keep=positions.to(dev)).logits[0]


def token_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the labelled tokens of the batch (mean, or sum). A packed batch
    computes logits only at the positions that predict a target."""
    if "plan" in batch:
        logits = packed_logits(model, batch, batch["src"])
        return F.cross_entropy(logits.float(), batch["tgt"].to(logits.device), reduction=reduction)
    logits = model(**model_inputs(model, batch)).logits
    labels = batch["labels"][:, 1:].flatten().to(logits.device)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels,
                           ignore_index=-100, reduction=reduction)


WARMUP = 0.05  # the share of a decaying schedule's steps spent warming up (BC's training, each distillation iteration)


def make_optimizer(model, lr: float, total_steps: int | None, warmup_steps: int, weight_decay: float = 0.0):
    """`step(loss) -> {lr, grad_norm}`, one update of the trainable parameters: AdamW, gradients clipped at norm 1, linear
    warm-up, then cosine decay to 0 at `total_steps` (None: constant, for loops that may stop early,
    such as a teacher-token budget running out). Under several processes `loss` is this process's
    weighted share of the batch (`dist.share`), so the summed gradients are the whole batch's."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, warmup_steps)
    decay = (lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))) if total_steps else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, decay(s)))
    if dist.deepspeed():
        return dist.deepspeed_step(model, opt, sched)

    def step(loss: torch.Tensor) -> dict:
        lr = sched.get_last_lr()[0]
        loss.backward()
        dist.all_reduce_grads(params)
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return {"lr": lr, "grad_norm": float(norm)}  # what this update used and saw (for tracking)

    return step


def train(model, examples: list[Example], *, pad_id: int, epochs: float, lr: float, max_tokens: int,
          seed: int, min_steps: int = 0, warmup: float = WARMUP, weight_decay: float = 0.0, packed: bool = False,
          grad_accum: int = 1, bf16: bool = False, desc: str = "train") -> dict:
    """Train the trainable parameters of `model` in place for `epochs` passes, or `min_steps` optimizer
    steps if that is more; returns token counts, losses and wall time. `packed`: each batch as one
    trie-packed sequence (`pack.pack`) instead of padded rows; the same batches, loss and gradients.
    `grad_accum`: batches per optimizer step, the step's loss the mean over all their targets. `bf16`:
    forwards under bf16 autocast (`dist.autocast`)."""
    if not examples:
        raise ValueError("no training examples")
    if grad_accum > 1 and dist.deepspeed():
        raise ValueError("train.grad_accum > 1 under DeepSpeed: set gradient_accumulation_steps in its config instead")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    per_epoch = make_batches(examples, max_tokens, rng)
    total = max(1, min_steps, math.ceil(len(per_epoch) * epochs / grad_accum))
    step = make_optimizer(model, lr, total, int(total * warmup), weight_decay)
    model.train()
    t0, tokens, target_tokens, losses = time.time(), 0, 0, []
    batches = []
    bar = tqdm(range(total), desc=desc, leave=False, mininterval=1.0, disable=not dist.is_main())  # one display per launch
    for _ in bar:
        group = []
        for _ in range(grad_accum):
            if not batches:
                batches = make_batches(examples, max_tokens, rng) if losses or group else list(per_epoch)
            group.append(batches.pop())
        targets = [sum(sum(e.loss_mask) for e in batch) for batch in group]
        step_loss = 0.0
        for k, batch in enumerate(group):
            mine, weight = dist.share(batch, lambda e: sum(e.loss_mask))
            # weighted by its share of the step's targets: the accumulated gradient is the whole step's mean
            with dist.autocast(bf16):
                loss = token_loss(model, pack(mine) if packed else collate(mine, pad_id))
            loss = loss * weight * (targets[k] / sum(targets))
            if k < len(group) - 1:
                loss.backward()  # the last one's backward is the optimizer step's
            step_loss += loss.item()
        update = step(loss)
        tokens += sum(len(e.input_ids) for batch in group for e in batch)
        target_tokens += sum(targets)
        losses.append(dist.total(step_loss))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        track.log_step({"train/loss": losses[-1], "train/lr": update["lr"], "train/grad_norm": update["grad_norm"],
                        "train/tokens_per_s": tokens / (time.time() - t0)})
    model.eval()
    return {"tokens": tokens, "target_tokens": target_tokens, "steps": total, "loss_first": losses[0],
            "loss_last": sum(losses[-10:]) / len(losses[-10:]), "wall_s": round(time.time() - t0, 2)}
