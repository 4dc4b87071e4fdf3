"""Candidate fixes for a tiny base that does not copy (issue 30), built and probed without changing sftbc.

    python benchmarks/probe_base_variants.py VARIANT [tiny overrides ...] [every=K]

Every variant starts from the tiny base before the fix (`BEFORE_THE_FIX`: no renaming, 2 epochs of
2048-token batches), so the commands in docs/experiments/copy_probe.md keep their meaning.

VARIANT: `default`; `words` (a pre-tokenizer that keeps a word the same token whatever precedes it:
letter runs, single digits and punctuation runs split apart); `lessons` (copy lessons, below, 0.5 per
env episode, mixed into the corpus); `echo` (1.0 lesson per episode, half of their calls echoing 3-8
values verbatim); `lessons+words`; `actions` (the base's loss on the assistant's tokens only);
`default renamed=SHARE` (the fix that went into sftbc, `tiny.renamed`: that share of the corpus
episodes with their copied values renamed to values that cannot be guessed, only copied);
`recall:STEPS:ROWS` and `induction:STEPS:ROWS` (first STEPS optimizer steps of ROWS synthetic rows
each, associative recall or a repeated random span, the loss on what only copying predicts; then
the env corpus as usual). Builds into benchmarks/results/bases/<variant>-<overrides>/, prints
the copy probe on maze, maze_smudged, calc, dispatch, the base's own envs, and on held-out lessons, and writes
benchmarks/results/probe_base_variants.jsonl. Only renamed values made the base copy the maze
(docs/experiments/copy_probe.md).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

from tokenizers import Regex, pre_tokenizers

import sftbc.models as models
from sftbc import track
from sftbc.config import load_config
from sftbc.models import value_pool
from sftbc.probe import copy_probe, value_scores
from sftbc.train import Example
from sftbc.types import Message, tool_call

TOOLS = ("open", "send", "pick", "set", "use", "find", "move", "mark", "read", "book", "route", "check")
FIELDS = ("id", "name", "key", "code", "item", "door", "room", "user", "tag", "slot", "desk", "color", "amount",
          "order", "city", "label", "file", "step", "level", "target")
STYLES = ('{k}: {v}', '{k}={v}', '{k} "{v}"', '{k} is {v}')
ENVS = ["maze", "maze_smudged", "calc", "examples/dispatch/dispatch.py:Dispatch"]
OUT = Path(__file__).parent / "results"
# Every variant starts from the base as it was when these candidates were tried; overrides change it.
BEFORE_THE_FIX = ["renamed=0.0", "epochs=2.0", "max_tokens=2048"]


def copy_lesson(rng: random.Random, values: list[str], echo: float) -> tuple[list[Message], list[dict]]:
    """1-4 calls; each observation shows 2-4 fields and names the one to pass (or, with probability
    `echo`, asks for 3-8 values verbatim): every call copies a value that can only be copied."""
    names, arg, style = rng.sample(TOOLS, 2), rng.choice(FIELDS), rng.choice(STYLES)
    tools = [{"type": "function", "function": {"name": n, "description": "", "parameters": {
        "type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]}}} for n in names]
    messages, role = [], "user"
    for _ in range(rng.randint(1, 4)):
        if echo and rng.random() < echo:
            text, tool = " ".join(rng.choice(values) for _ in range(rng.randint(3, 8))), rng.choice(names)
            messages += [Message(role=role, content=f"{tool} this {arg}: {text}"), tool_call(tool, **{arg: text})]
        else:
            fields = rng.sample([f for f in FIELDS if f != arg], rng.randint(2, 4))
            shown = {f: rng.choice(values) for f in fields}
            want, tool = rng.choice(fields), rng.choice(names)
            pairs = ", ".join(style.format(k=k, v=v) for k, v in shown.items())
            messages += [Message(role=role, content=f"{pairs}. {tool} the {want} as {arg}."),
                         tool_call(tool, **{arg: shown[want]})]
        role = "tool"
    return messages + [Message(role="tool", content="done.")], tools


def lesson_values(texts: list[str], rng: random.Random) -> list[str]:
    """What the lessons copy: `models.value_pool`'s words, ids and numbers in one list. (The lesson rows
    of docs/experiments/copy_probe.md were measured at commit a946515, whose pool drew its numbers as
    0-9999 and its words from the rendered transcripts: the same kinds, other draws.)"""
    pool = value_pool(texts, rng)
    return pool["words"] + pool["digits"]


def with_lessons(per_episode: float, echo: float, seed: int):
    """Base pretraining on the corpus plus `per_episode` copy lessons per corpus episode."""
    plain = models.noisy_transcripts

    def transcripts(envs, n, max_horizon, s):
        conversations = plain(envs, n, max_horizon, s)
        rng = random.Random(f"lessons-{seed}")
        values = lesson_values(models._render(conversations), rng)
        return conversations + [copy_lesson(rng, values, echo) for _ in range(round(per_episode * len(conversations)))]

    models.noisy_transcripts = transcripts


def words_tokenizer():
    """Swap the ByteLevel pre-tokenizer that models._train_tokenizer builds for a word-keeping one."""
    byte_level = pre_tokenizers.ByteLevel

    def words(**_):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}|[^\p{L}\p{N}]+"), behavior="isolated"),
                                        byte_level(add_prefix_space=False, use_regex=False)])

    words.alphabet = byte_level.alphabet
    models.pre_tokenizers = SimpleNamespace(ByteLevel=words)


def recall_row(tok, rng: random.Random) -> "models.Example":
    """Associative recall in plain text: 3-8 made-up keys with made-up values, then 4 queries
    `key -> value`; the loss is on the answered values only, which can only be predicted by finding
    the key in the row and copying what follows it."""
    word = lambda: "".join(rng.choice("abcdefghjkmnpqrstuvwxyz0123456789") for _ in range(rng.randint(2, 7)))
    pairs = {word(): word() for _ in range(rng.randint(3, 8))}
    ids = tok.encode(", ".join(f"{k}: {v}" for k, v in pairs.items()) + ".")
    mask = [0] * len(ids)
    for k in rng.choices(list(pairs), k=4):
        q, a = tok.encode(f" {k} ->"), tok.encode(f" {pairs[k]};")
        ids, mask = ids + q + a, mask + [0] * len(q) + [1] * len(a)
    return models.Example(ids, mask)


def induction_row(tok, rng: random.Random) -> "models.Example":
    """40 random tokens with a 10-token span inside, then the span again; the loss on the repeat after
    its first token, which only copying predicts (benchmarks/probe_induction.py with a masked loss)."""
    vocab = len(tok)
    draw = lambda n: [rng.randrange(len(models.SPECIAL), vocab) for _ in range(n)]
    pre, span = draw(40), draw(10)
    ids = pre[:20] + span + pre[20:] + span
    return models.Example(ids, [0] * (len(ids) - 9) + [1] * 9)


def with_synthetic_phase(steps: int, rows: int, seed: int, make_row):
    """Before the env corpus, `steps` optimizer steps of `rows` synthetic rows each."""
    plain_train, plain_tok = models.train, models._train_tokenizer
    toks = []

    def tokenizer(texts, vocab_size):
        toks.append(plain_tok(texts, vocab_size))
        return toks[-1]

    def train(model, examples, **kw):
        rng = random.Random(f"synthetic-{seed}")
        synthetic = [make_row(toks[-1], rng) for _ in range(steps * rows)]
        longest = max(len(e.input_ids) for e in synthetic)
        plain_train(model, synthetic, **{**kw, "epochs": 1.0, "max_tokens": rows * longest, "desc": "synthetic phase"})
        return plain_train(model, examples, **kw)

    models._train_tokenizer, models.train = tokenizer, train


def actions_loss():
    """Base pretraining with the loss on the assistant's tokens only (the actions), not on every token:
    the copied values are then a larger share of what the base is trained to predict."""
    plain = models.tokenize_conversation
    masks = []

    def tokenize(tok, messages, tools):
        ids, mask = plain(tok, messages, tools)
        masks.append(mask)
        return ids, mask

    models.tokenize_conversation = tokenize
    models.Example = lambda ids, _every_token: Example(ids, masks[-1])


def lesson_score(model, tok) -> tuple[float, float, int]:
    """The probe's figures on 30 held-out lessons whose values (Greek letters, numbers, ids) are new."""
    rng = random.Random(123)
    values = lesson_values(["alpha beta gamma delta omega sigma kappa"], rng)
    scores = []
    for _ in range(30):
        messages, tools = copy_lesson(rng, values, 0.5)
        scores += value_scores(model, tok, SimpleNamespace(messages=messages, tools=tools))
    n = len(scores)
    return round(sum(x for x, _ in scores) / n, 3), round(sum(r for _, r in scores) / n, 3), n


def probe_during_pretraining(every: int, envs) -> list[dict]:
    """Probe the base being built every `every` optimizer steps; returns the (filling) curve."""
    curve, state, real_tokenizer, log_step = [], {"steps": 0}, models._train_tokenizer, track.log_step

    def tokenizer(texts, vocab_size):  # build_tiny's second call trains the tokenizer the base uses
        state["tok"] = real_tokenizer(texts, vocab_size)
        return state["tok"]

    def train(model, examples, **kw):
        state["model"] = model
        return real_train(model, examples, **kw)

    def probed_log_step(values):
        log_step(values)
        state["steps"] += 1
        if state["steps"] % every == 0:
            state["model"].eval()
            row = {"step": state["steps"], "loss": round(values["train/loss"], 4)}
            for env in envs:
                s = copy_probe(state["model"], state["tok"], env)
                row[env] = (s.nll, s.accuracy)
            print(json.dumps(row), flush=True)
            curve.append(row)
            state["model"].train()

    real_train = models.train
    models._train_tokenizer, models.train, track.log_step = tokenizer, train, probed_log_step
    return curve


def main(variant: str, overrides: list[str]) -> dict:
    every = [int(o.split("=")[1]) for o in overrides if o.startswith("every=")]
    overrides = [o for o in overrides if not o.startswith("every=")]
    tiny = load_config(None, [f"tiny.{o}" for o in [*BEFORE_THE_FIX, *overrides]]).tiny
    curve = probe_during_pretraining(every[0], tiny.envs) if every else None
    if "words" in variant:
        words_tokenizer()
    if variant.startswith(("lessons", "echo")):
        with_lessons(1.0 if variant == "echo" else 0.5, 0.5 if variant == "echo" else 0.0, tiny.seed)
    if variant.startswith(("recall", "induction")):  # recall:STEPS:ROWS, induction:STEPS:ROWS
        kind, steps, rows = variant.split(":")
        with_synthetic_phase(int(steps), int(rows), tiny.seed, recall_row if kind == "recall" else induction_row)
    if variant == "actions":
        actions_loss()
    out = OUT / "bases" / "-".join([variant, *overrides]).replace("/", "_")
    models.build_tiny(tiny, out, force=bool(every))
    tok, model = models.load_tokenizer(str(out)), models.load_model(str(out))
    row = {"variant": variant, "overrides": overrides,
           "steps": json.loads((out / "sftbc_base.json").read_text())["train"]["steps"]}
    for env in dict.fromkeys([*ENVS, *tiny.envs]):  # the base's own envs too
        s = copy_probe(model, tok, env)
        row[env] = (s.nll, s.accuracy, s.values)
    row["held-out lessons"] = lesson_score(model, tok)
    if curve is not None:
        row["curve"] = curve
    print(json.dumps(row))
    with open(OUT / "probe_base_variants.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
