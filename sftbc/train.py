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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a training target

    def __post_init__(self):
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError("input_ids and loss_mask differ in length")


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


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
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
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def token_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of the batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def make_optimizer(model, lr: float, total_steps: int | None, warmup_steps: int, weight_decay: float = 0.0):
    """AdamW on the trainable parameters; linear warm-up, then cosine decay to 0 at `total_steps`
    (None: constant, for loops that may stop early, such as a teacher-token budget running out)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, warmup_steps)
    decay = (lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))) if total_steps else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, decay(s)))
    return params, opt, sched


def optimizer_step(loss: torch.Tensor, params, opt, sched):
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def train(model, examples: list[Example], *, pad_id: int, epochs: float, lr: float, max_tokens: int,
          seed: int, min_steps: int = 0, warmup: float = 0.05, weight_decay: float = 0.0, desc: str = "train") -> dict:
    """Train the trainable parameters of `model` in place for `epochs` passes, or `min_steps` optimizer
    steps if that is more; returns token counts, losses and wall time."""
    if not examples:
        raise ValueError("no training examples")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    per_epoch = make_batches(examples, max_tokens, rng)
    total = max(1, min_steps, math.ceil(len(per_epoch) * epochs))
    params, opt, sched = make_optimizer(model, lr, total, int(total * warmup), weight_decay)
    model.train()
    t0, tokens, target_tokens, losses = time.time(), 0, 0, []
    batches = []
    bar = tqdm(range(total), desc=desc, leave=False, mininterval=1.0)
    for _ in bar:
        if not batches:
            batches = make_batches(examples, max_tokens, rng) if losses else list(per_epoch)
        batch = collate(batches.pop(), pad_id)
        loss = token_loss(model, batch)
        optimizer_step(loss, params, opt, sched)
        tokens += int(batch["attention_mask"].sum())
        target_tokens += int((batch["labels"] != -100).sum())
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return {"tokens": tokens, "target_tokens": target_tokens, "steps": total, "loss_first": losses[0],
            "loss_last": sum(losses[-10:]) / len(losses[-10:]), "wall_s": round(time.time() - t0, 2)}
