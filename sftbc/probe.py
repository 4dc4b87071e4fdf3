"""The copy probe: can a model copy a value from an observation into a tool call?

Tool-use policies mostly copy: a door named by a note, an id a lookup returned, the reading a meter
showed. A base model that cannot copy gives a fine-tuned student that learns nothing, whatever the
method, so `sftbc base` measures the skill before any training is spent on it.

The probe plays the env's oracle on held-out seeds and feeds each episode to the model once
(teacher forcing). For every argument of every expert call whose value (a string or number)
appears verbatim in an earlier observation, it scores the value's tokens: their summed negative
log-likelihood (for one value among k equally likely candidates, ln k) and whether the model's
argmax is right at every one of them, i.e. whether greedy decoding writes the value.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch

from sftbc import dist
from sftbc.envs import env_class, eval_seeds
from sftbc.render import render
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher

ASSISTANT = "<|im_start|>assistant\n"
MIN_ACCURACY = 0.5  # a base that copies writes most values (SmolLM2-135M zero-shot: 72-82% on maze, calc, greenhouse); the tiny base before renamed values 0-25% on the maze, the default one 70-100% (docs/experiments/copy_probe.md)


@dataclass
class CopyScore:
    env: str
    """the env reference probed"""
    values: int
    """argument values the expert copied from an observation"""
    nll: float
    """mean negative log-likelihood of one value (nats, summed over its tokens)"""
    accuracy: float
    """fraction of values the model's argmax writes exactly"""

    @property
    def copies(self) -> bool:
        return self.values > 0 and self.accuracy >= MIN_ACCURACY

    def line(self) -> str:
        if not self.values:
            return f"copy probe, {self.env}: the expert copies no argument from an observation (nothing to score)"
        return (f"copy probe, {self.env}: {self.values} copied values, NLL {self.nll:.3f} nats per value, "
                f"greedy writes {self.accuracy:.0%} of them")

    def warning(self) -> str:
        return (f"warning: the base copies {self.accuracy:.0%} of the values the expert copies from observations "
                f"in {self.env} (NLL {self.nll:.2f} nats per value): a student fine-tuned from it is likely to "
                "learn nothing. Use a pretrained student that copies, model=smollm2-135m (after `sftbc models "
                "fetch smollm2-135m`), or try another tiny.seed (README: When the base does not copy)")


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield value


def copied_values(messages):
    """Per assistant message, in order: the argument values of its calls that an earlier observation
    (system, user or tool message) shows verbatim; a number as json.dumps writes it."""
    seen = ""  # observations so far

    def shown(v) -> bool:
        s = v if isinstance(v, str) else json.dumps(v)
        return bool(s.strip()) and s in seen

    for m in messages:
        if m.role != "assistant":
            seen += "\n" + (m.content or "")
            continue
        yield [v for call in m.tool_calls for v in _leaves(call.arguments) if shown(v)]


def copied_spans(tokenizer, traj) -> tuple[str, list[tuple[int, int]]]:
    """The rendered episode, and the character span of every argument value the expert copied
    (`copied_values`), located inside the rendered call as json.dumps writes it (for a string, its
    characters without the quotes)."""
    text = render(tokenizer, traj.messages, traj.tools)
    spans, cursor = [], 0
    for values in copied_values(traj.messages):
        cursor = text.index(ASSISTANT, cursor) + len(ASSISTANT)
        for v in values:
            enc = json.dumps(v)
            at = text.index(enc, cursor)
            quote = int(isinstance(v, str))
            spans.append((at + quote, at + len(enc) - quote))
            cursor = at + len(enc)
    return text, spans


@torch.no_grad()
def value_scores(model, tokenizer, traj) -> list[tuple[float, bool]]:
    """(NLL, greedy writes it) of every value the expert copied in one episode (`copied_spans`), from
    one forward pass over the rendered episode."""
    text, spans = copied_spans(tokenizer, traj)
    if not spans:
        return []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]], device=next(model.parameters()).device)
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    out = []
    for a, b in spans:
        pos = [q for q, (s, e) in enumerate(enc["offset_mapping"]) if s < b and e > a and q > 0]
        out.append((-sum(logp[q - 1, ids[0, q]].item() for q in pos),
                    all(logp[q - 1].argmax().item() == ids[0, q].item() for q in pos)))
    return out


def copy_probe(model, tokenizer, env: str, horizons=(1, 4), episodes: int = 8) -> CopyScore:
    """Score `model` on the values the oracle copies in `episodes` held-out episodes per horizon."""
    scores = []
    if callable(getattr(env_class(env), "oracle_action", None)):
        for T in horizons:
            for traj in rollout(env, T, eval_seeds(episodes), OracleTeacher(), None, beta=1.0):
                scores += value_scores(model, tokenizer, traj)
    if not scores:
        return CopyScore(env, 0, float("nan"), float("nan"))
    n = len(scores)
    return CopyScore(env, n, round(sum(x for x, _ in scores) / n, 3), round(sum(r for _, r in scores) / n, 3))


def probe_envs(model, tokenizer, envs) -> dict[str, dict]:
    """The probe on every env, as plain dicts (what sftbc_base.json stores; an env with nothing to score
    is stored too, so it is never probed again)."""
    return {env: asdict(copy_probe(model, tokenizer, env)) for env in envs}


def base_copy_scores(path: str, envs) -> list[CopyScore]:
    """A tiny base's probe scores for `envs` that have values to score: those measured when it was built
    (sftbc_base.json), the others measured now."""
    stored = json.loads((Path(path) / "sftbc_base.json").read_text()).get("copy_probe", {})
    missing = [e for e in envs if e not in stored]
    if missing:
        from sftbc.models import load_model, load_tokenizer

        stored |= probe_envs(load_model(path), load_tokenizer(path), missing)
    return [CopyScore(**stored[e]) for e in envs if stored[e]["values"]]


def report_copying(path: str, envs, verbose: bool = False):
    """Warn on stderr for each env where the base at `path` does not copy; `verbose` also prints every
    env's probe line."""
    for score in base_copy_scores(path, envs):
        if verbose:
            print(score.line())
        if not score.copies and dist.is_main():
            print(score.warning(), file=sys.stderr)


@cache
def warn_if_no_copy(path: str, env: str):
    """Say so, once per process, when the tiny base at `path` does not copy in `env`: before any
    training is spent on it, not as a silent zero later."""
    report_copying(path, [env])
