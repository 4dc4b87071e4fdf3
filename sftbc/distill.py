"""On-policy distillation (GKD, Agarwal et al. 2024) over multi-turn tool use.

Each iteration, at every horizon T:
  1. the current student plays `distill.episodes` whole episodes in the environment, sampling its turns
     at `distill.temperature`, with the tools executed between turns; a fraction 1 - lam of the
     episodes is played by the teacher instead (GKD's mixture of on-policy and teacher-generated data);
  2. the teacher LM scores every token of each episode in one forward pass;
  3. the student takes one optimizer step per batch (`distill.passes` passes) on the generalized JSD
     between its next-token distribution and the teacher's, on assistant tokens only: prompts and tool
     outputs are masked. The batches hold the fresh episodes and `distill.aggregate` times as many
     scored episodes of earlier iterations, drawn at random, so states the student already handles
     stay in the loss. With `distill.restart` each iteration has its own optimizer and learning-rate
     schedule (warm-up, cosine decay to 0), as each DAgger round does, so the run may stop after any
     iteration: one optimizer at a constant lr diverged within an iteration after quiet ones, and
     the student collapsed (docs/experiments/distill_stability.md). With `distill.undo_worse` an
     iteration whose training raised the loss on its own episodes is undone: on a few episodes the
     student already solved, a fresh AdamW's steps of about lr per weight once diverged and collapsed it.
With `distill.sft_share` a share of the teacher budget is spent first on demonstrations and BC (the
same data and student as DAgger's round 0 on that share), and distillation starts from that student:
a base model's first samples are mostly malformed turns, costly to score and of little use.
No hard labels and no action parsing in the loss: the teacher grades every token the student wrote,
in the states the student's own choices led to. The teacher's cost is its forward tokens: one pass over
each episode, where hard labels (a greedy decode at every state) cost a whole context per state.

An episode is scored as sftbc's chat template renders it. That is the sampled token sequence whenever
the student's turn is a well-formed call in canonical form (which is what a trained student writes); a
malformed turn is scored as the text it was kept as. A privileged teacher (`teacher.privileged`) scores
the same assistant tokens in its own rendering of the episode, its observations from the privileged view.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sftbc import dist, track
from sftbc.bc import collect, load_student, run_dir, train_student, write_metrics
from sftbc.config import ConfigError, RunConfig
from sftbc.data import load_data, save_dataset, to_dataset
from sftbc.envs import make_env, train_seeds
from sftbc.evaluate import evaluate
from sftbc.models import load_tokenizer, student_model, student_path
from sftbc.pack import pack
from sftbc.render import render, tokenize_conversation, to_chat
from sftbc.rollout import Student, coin, rollout
from sftbc.teachers import TokenDist, cache_stats, make_teacher
from sftbc.train import WARMUP, Example, collate, make_batches, make_optimizer, model_inputs, packed_logits
from sftbc.types import Trajectory, tool_call


def _log_probs(student_logits: torch.Tensor, teacher_logp: torch.Tensor, teacher_idx: torch.Tensor | None):
    """Both distributions as log-probabilities over the same support (the teacher's top k, if given)."""
    if teacher_idx is not None:
        student_logits = student_logits.gather(-1, teacher_idx)
    return F.log_softmax(student_logits.float(), dim=-1), F.log_softmax(teacher_logp.float(), dim=-1)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per token, from log-probabilities."""
    return F.kl_div(q, p, reduction="none", log_target=True).sum(-1)


def token_diagnostics(student_logits: torch.Tensor, teacher_logp: torch.Tensor,
                      teacher_idx: torch.Tensor | None = None) -> dict:
    """Means over the scored tokens, without gradient: KL(student || teacher) (the reverse KL, on the
    student's own tokens) and the student's entropy, over the support the loss sees. A collapsing
    student shows as its entropy falling while the reverse KL grows."""
    with torch.no_grad():
        s, t = _log_probs(student_logits, teacher_logp, teacher_idx)
        return {"reverse_kl": kl(s, t).mean().item(), "entropy": -(s.exp() * s).sum(-1).mean().item()}


def generalized_jsd(student_logits: torch.Tensor, teacher_logp: torch.Tensor, teacher_idx: torch.Tensor | None = None,
                    beta: float = 1.0) -> torch.Tensor:
    """Mean over tokens of the generalized JSD (Agarwal et al. 2024, eq. 1, in TRL's convention): beta = 0 is
    KL(teacher || student), beta = 1 is KL(student || teacher), in between the beta-weighted KLs of each to
    the mixture beta * teacher + (1 - beta) * student. With `teacher_idx` (a served teacher's top k) both
    distributions are renormalised over those k tokens.  Shapes: [N, V] (or [N, k] with teacher_idx [N, k])."""
    s, t = _log_probs(student_logits, teacher_logp, teacher_idx)
    if beta == 0:
        d = kl(t, s)
    elif beta == 1:
        d = kl(s, t)
    else:
        m = torch.logsumexp(torch.stack([s + math.log1p(-beta), t + math.log(beta)]), dim=0)
        d = beta * kl(t, m) + (1 - beta) * kl(s, m)
    return d.mean()


@dataclass
class Scored(Example):
    """A tokenized episode with the teacher's distribution at each position that predicts an assistant token."""

    positions: list[int] | None = None
    teacher: TokenDist | None = None


def _assistant_positions(mask: list[int]) -> list[int]:
    return [p for p in range(len(mask) - 1) if mask[p + 1]]  # logits at p predict token p+1


def score(teacher, tokenizer, trajs: list[Trajectory], top_k: int) -> list[Scored]:
    seqs, masks = zip(*(tokenize_conversation(tokenizer, to_chat(t.messages), t.tools) for t in trajs))
    positions = [_assistant_positions(m) for m in masks]
    shown, at = list(seqs), positions
    if hasattr(teacher, "view"):  # a privileged teacher scores the same assistant tokens in its own view of each episode
        shown, tmasks = map(list, zip(*(tokenize_conversation(tokenizer, to_chat(teacher.view(t)), t.tools) for t in trajs)))
        at = [_assistant_positions(m) for m in tmasks]
        for t, s, pos, ts, tpos in zip(trajs, seqs, positions, shown, at):
            if [s[p + 1] for p in pos] != [ts[p + 1] for p in tpos]:
                raise ValueError(f"{t.episode}: the student's turns tokenize differently in the teacher's view")
    dists = teacher.score(shown, at, top_k)
    return [Scored(list(s), list(m), positions=pos, teacher=d) for s, m, pos, d in zip(seqs, masks, positions, dists)]


def within_budget(trajs: list[Trajectory], tokenizer, room: float | None) -> list[Trajectory]:
    """The first episodes whose scoring passes (at most one teacher token per token of the episode)
    fit in `room` teacher tokens, and the one that crosses it: a token budget overshoots by at most
    one episode, as a labelling budget does (`bc.collect`). The rest are not scored."""
    if room is None:
        return trajs
    kept = []
    for t in trajs:
        if room <= 0:
            break
        kept.append(t)
        room -= len(tokenize_conversation(tokenizer, to_chat(t.messages), t.tools)[0])
    return kept


def distill_loss(model, batch: list[Scored], pad_id: int, beta: float, packed: bool = False) -> tuple[torch.Tensor, dict]:
    """The generalized JSD on a batch of scored episodes, and its token diagnostics."""
    if packed:  # logits only at the scored positions of the packed sequence
        inputs = pack(batch)
        student = packed_logits(model, inputs, torch.cat([w[e.positions] for w, e in zip(inputs["where"], batch)]))
    else:
        logits = model(**model_inputs(model, collate(batch, pad_id))).logits
        student = torch.cat([logits[r, e.positions] for r, e in enumerate(batch)])
    teacher = torch.cat([e.teacher.logp for e in batch]).to(student.device)
    idx = torch.cat([e.teacher.idx for e in batch]).to(student.device) if batch[0].teacher.idx is not None else None
    return generalized_jsd(student, teacher, idx, beta), token_diagnostics(student, teacher, idx)


def mean_loss(model, batches: list[list[Scored]], pad_id: int, beta: float, packed: bool, bf16: bool) -> float:
    """The mean over `batches` of their distillation loss (as an iteration logs it), without gradient or
    dropout; every process takes part."""
    model.eval()
    losses = []
    with torch.no_grad():
        for batch in batches:
            part, weight = dist.share(batch, lambda e: len(e.positions))
            with dist.autocast(bf16):
                losses.append(dist.total(distill_loss(model, part, pad_id, beta, packed)[0].item() * weight))
    return sum(losses) / len(losses)


def check_teacher(teacher, tokenizer, cfg: RunConfig):
    """Distillation needs an LM teacher that tokenizes exactly as the student does: fail before any work.
    The probe is an opening and a call of its first tool (any call renders as a tool call: no policy is asked)."""
    if not hasattr(teacher, "score"):
        raise ConfigError("config: teacher.kind must be hf or openai for distillation (the oracle has no token distribution)")
    msgs, tools = make_env(cfg.env, cfg.collect.horizons[0]).reset(0)
    fn = tools[0]["function"]
    call = tool_call(fn["name"], **{p: "x" for p in fn["parameters"].get("required", [])})
    probe = render(tokenizer, [*msgs, call], tools)
    mine, theirs = tokenizer(probe, add_special_tokens=False)["input_ids"], teacher.encode(probe)
    if mine != theirs:
        at = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        raise ValueError(f"teacher and student tokenizers differ (first at token {at} of a rendered episode): "
                         "distillation needs a shared tokenizer")


def sft_first(cfg: RunConfig, teacher, base_path: str, tokenizer, d: Path, given=None) -> tuple[dict, dict, dict]:
    """Spend `distill.sft_share` of each horizon's teacher-token budget on demonstrations (or take the
    user's `given` data, at no teacher cost), train BC on them into <run>/sft/adapter. Returns the tokens
    spent and the next unused seed per T, and the metrics."""
    c = copy.deepcopy(cfg)
    c.collect.teacher_tokens_per_horizon = int(cfg.collect.teacher_tokens_per_horizon * cfg.distill.sft_share)
    q0 = teacher.queries
    if given is not None:
        ds, next_seed, spent = given, {T: cfg.collect.seed_start for T in cfg.collect.horizons}, {T: 0 for T in cfg.collect.horizons}
    else:
        trajs, next_seed, spent = collect(c, teacher)
        ds = to_dataset(trajs)
    save_dataset(ds, d / "sft" / "data")
    stats = train_student(cfg, base_path, tokenizer, ds, d / "sft")
    return spent, next_seed, {"teacher_labels": teacher.queries - q0, "teacher_tokens": sum(spent.values()),
                              "rows": len(ds), "train": stats}


@dataclass
class ValidationWatch:
    """Distillation's learning curve on validation episodes: its best point so far, and every point
    whose success fell more than `drop` below that best (a collapse, said in the log and the metrics)."""

    drop: float
    best: dict = field(default_factory=lambda: {"success_rate": -1.0})
    collapses: list[dict] = field(default_factory=list)

    def see(self, point: dict) -> bool:
        """Record a curve point; True when it is a new best."""
        if point["success_rate"] > self.best["success_rate"]:
            self.best = point
            return True
        if point["success_rate"] < self.best["success_rate"] - self.drop:
            self.collapses.append({k: point.get(k) for k in ("iteration", "teacher_tokens", "success_rate")}
                                  | {"best": self.best["success_rate"]})
            print(f"warning: distillation is collapsing: validation success {point['success_rate']:.2f} at "
                  f"iteration {point.get('iteration')}, down from its best {self.best['success_rate']:.2f} "
                  f"(distill.keep_best=true keeps the best validated student)", flush=True)
        return False


@track.tracked
def run_distill(cfg: RunConfig) -> dict:
    t0 = time.time()
    given = load_data(cfg.data) if cfg.data else None  # bad paths and rows fail before any work
    base_path = student_path(cfg)
    tokenizer = load_tokenizer(base_path, cfg.chat_template)
    teacher = make_teacher(cfg.teacher, Path(cfg.runs_dir) / cfg.name)
    check_teacher(teacher, tokenizer, cfg)
    d = run_dir(cfg)
    dc, budget = cfg.distill, cfg.collect.teacher_tokens_per_horizon
    spent = {T: 0 for T in cfg.collect.horizons}  # teacher tokens per horizon
    next_seed = {T: cfg.collect.seed_start for T in cfg.collect.horizons}
    sft, curve = None, []
    if dc.sft_share or given is not None:
        spent, next_seed, sft = sft_first(cfg, teacher, base_path, tokenizer, d, given)
        model = student_model(cfg, base_path, str(d / "sft" / "adapter"), trainable=True)
    else:
        torch.manual_seed(cfg.train.seed)
        model = student_model(cfg, base_path, trainable=True)
    # A sharded forward is collective, and each process plays its own episodes: under FSDP they sample
    # with an unsharded copy of the student, refreshed after every training phase.
    sampler = copy.deepcopy(model) if dist.fsdp() else model
    model = dist.prepare(model)
    if dc.undo_worse and not dc.restart and dist.deepspeed():
        raise ConfigError("config: distill.undo_worse needs distill.restart under DeepSpeed (one engine for the "
                          "run keeps its own master copy of the weights that undoing would not restore)")
    lr = dc.lr or cfg.train.lr
    step = None if dc.restart else make_optimizer(model, lr, None, dc.iterations // 10)  # may stop early: constant lr
    student = Student(sampler, tokenizer, cfg.eval.max_new_tokens, dc.temperature)
    rng = random.Random(cfg.train.seed)

    watch = ValidationWatch(dc.collapse_drop)

    def curve_point(**where):
        """The current student, greedy, on validation episodes (never the held-out ones): success,
        mistakes and eps against the tokens spent; with `keep_best`, each new best adapter is saved."""
        sampler.eval()
        greedy = Student(sampler, tokenizer, cfg.eval.max_new_tokens, cfg.eval.temperature)
        ev = evaluate(cfg, greedy, teacher, dc.curve_episodes, split="validation",
                      keep=d / "curve" / f"point-{len(curve):03d}.jsonl")
        point = {**where, "teacher_tokens": sum(spent.values()), "eval": ev,
                 "success_rate": sum(r["success_rate"] for r in ev) / len(ev)}
        curve.append(point)
        if watch.see(point) and dc.keep_best:
            dist.save_adapter(model, d / "best" / "adapter")

    if sft and dc.curve_every:
        curve_point(sft=True)  # where distillation starts
    # states the teacher acted in (demonstrations, its own episodes); evaluations are not training cost
    labels = sft["teacher_labels"] if sft else 0
    log, past = [], []  # past: every scored episode of earlier iterations
    train_tokens, steps, train_s = (sft["train"]["tokens"], sft["train"]["steps"], sft["train"]["wall_s"]) if sft else (0, 0, 0.0)
    for it in range(dc.iterations):
        horizons = [T for T in cfg.collect.horizons if not budget or spent[T] < budget]
        if not horizons:
            break
        sampler.eval()
        examples, own = [], []
        for T in horizons:
            before, asked = teacher.tokens, teacher.queries
            seeds = train_seeds(dc.episodes, next_seed[T])
            next_seed[T] += dc.episodes
            mine = [s for s in seeds if coin(dc.lam, "lam", cfg.train.seed, s)]
            trajs = rollout(cfg.env, T, mine, None, student, beta=0.0, coin_seed=it) if mine else []
            own += trajs
            theirs = [s for s in seeds if s not in mine]
            trajs += rollout(cfg.env, T, theirs, teacher, beta=1.0) if theirs else []
            trajs = within_budget(trajs, tokenizer, budget - spent[T] - (teacher.tokens - before) if budget else None)
            examples += dist.shard_map(lambda ts: score(teacher, tokenizer, ts, dc.top_k), trajs, teacher)
            spent[T] += teacher.tokens - before
            labels += teacher.queries - asked
        if not examples:  # the teacher's own episodes spent what was left
            break
        again = rng.sample(past, min(len(past), round(dc.aggregate * len(examples))))
        if dc.aggregate:
            past += examples
        losses, diag, t1 = [], [], time.time()
        passes = [make_batches(examples + again, cfg.train.max_tokens, rng) for _ in range(dc.passes)]
        own_loss = lambda: mean_loss(model, passes[0], tokenizer.pad_token_id, dc.jsd_beta, cfg.train.pack, cfg.train.bf16)
        before = after = None  # the loss on this iteration's episodes (each once) before and after it
        if dc.undo_worse:
            start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            before = own_loss()
        model.train()
        if dc.restart:  # this iteration's own schedule: the student it ends on is settled, wherever the budget stops
            total = sum(map(len, passes))
            step = make_optimizer(model, lr, total, int(total * WARMUP))
        for batches in passes:
            for batch in batches:
                part, weight = dist.share(batch, lambda e: len(e.positions))
                with dist.autocast(cfg.train.bf16):
                    loss, stats = distill_loss(model, part, tokenizer.pad_token_id, dc.jsd_beta, cfg.train.pack)
                update = step(loss * weight)
                losses.append(dist.total(loss.item() * weight))
                diag.append({k: dist.total(v * weight) for k, v in stats.items()} | {"grad_norm": update["grad_norm"]})
                train_tokens += sum(len(e.input_ids) for e in batch)
                track.log_step({"distill/loss": losses[-1], "train/lr": update["lr"],
                                "distill/teacher_tokens": sum(spent.values())}
                               | {f"distill/{k}": v for k, v in diag[-1].items()})
        if dc.undo_worse:
            after = own_loss()
        undone = after is not None and after > before
        if undone:  # the training diverged on the episodes it was fitting: back to where it began
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in start:
                        p.copy_(start[n])
        steps, train_s = steps + len(losses), train_s + time.time() - t1
        if sampler is not model:
            sampler.load_state_dict(dist.trainable_state(model), strict=False)  # only the adapter changed
        mean = lambda key: (sum(x[key] for x in diag) / len(diag)) if all(x[key] is not None for x in diag) else None
        log.append({"iteration": it, "episodes": len(examples), "aggregated": len(again), "on_policy": len(own), "undone": undone,
                    "success_rate": sum(t.success for t in own) / len(own) if own else None,
                    "loss": sum(losses) / len(losses), "loss_before": before, "loss_after": after,
                    "teacher_tokens": sum(spent.values()),
                    **{k: mean(k) for k in ("reverse_kl", "entropy", "grad_norm")}})
        print(f"distill iteration {it}: loss {log[-1]['loss']:.4f}, reverse KL {log[-1]['reverse_kl']:.4f}, "
              f"entropy {log[-1]['entropy']:.3f}, sampled success {log[-1]['success_rate']}, "
              f"teacher tokens {log[-1]['teacher_tokens']}" + (" (undone: its episodes' loss rose)" if undone else ""),
              flush=True)
        if dc.curve_every and (it + 1) % dc.curve_every == 0:
            curve_point(iteration=it)
    if dc.keep_best and (d / "best" / "adapter").exists():  # chosen on validation episodes only
        if dist.is_main():
            shutil.copytree(d / "best" / "adapter", d / "adapter", dirs_exist_ok=True)
        dist.barrier()
    else:
        dist.save_adapter(model, d / "adapter")  # the evaluation below loads it
    kept = {k: watch.best.get(k) for k in ("iteration", "sft", "teacher_tokens", "success_rate")} if dc.keep_best else None
    metrics = {"method": "distill", "env": cfg.env, "model": cfg.model, "train_horizon": cfg.collect.horizons,
               "teacher_labels": labels, "teacher_tokens": sum(spent.values()), "sft": sft, "iterations": log, "curve": curve,
               "collapses": watch.collapses, "kept": kept,
               "train": {"tokens": train_tokens, "steps": steps, "wall_s": round(train_s, 2)},
               "eval": evaluate(cfg, load_student(cfg, base_path, str(d / "adapter")), teacher, keep=d / "episodes.jsonl")}
    metrics.update(cache_stats(teacher), wall_s=round(time.time() - t0, 2))
    write_metrics(d, metrics)
    return metrics

