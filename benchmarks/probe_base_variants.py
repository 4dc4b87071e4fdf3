"""Candidate fixes for a tiny base that does not copy (issue 30), built and probed without changing sftbc.

    python benchmarks/probe_base_variants.py VARIANT [tiny overrides ...] [every=K]

VARIANT: `default`; `words` (a pre-tokenizer that keeps a word the same token whatever precedes it:
letter runs, single digits and punctuation runs split apart); `lessons` (copy lessons, below, 0.5 per
env episode, mixed into the corpus); `echo` (1.0 lesson per episode, half of their calls echoing 3-8
values verbatim); `lessons+words`; `actions` (the base's loss on the assistant's tokens only);
`renamed:SHARE` (SHARE x the corpus added again, each episode's copied values renamed to words that
cannot be guessed, only copied: `rename_values`); `recall:STEPS:ROWS` and `induction:STEPS:ROWS` (first STEPS optimizer steps of ROWS synthetic rows each,
associative recall or a repeated random span, the loss on what only copying predicts; then the
env corpus as usual). Builds into benchmarks/results/bases/<variant>-<overrides>/, prints
the copy probe on maze, maze_smudged, calc, dispatch, and on held-out lessons, and writes
benchmarks/results/probe_base_variants.jsonl. None of them made the base copy (docs/experiments/copy_probe.md).
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from tokenizers import Regex, pre_tokenizers

import sftbc.models as models
from sftbc import track
from sftbc.config import load_config
from sftbc.probe import copied_values, copy_probe, value_scores
from sftbc.render import to_chat
from sftbc.train import Example
from sftbc.types import Message, ToolCall, tool_call

TOOLS = ("open", "send", "pick", "set", "use", "find", "move", "mark", "read", "book", "route", "check")
FIELDS = ("id", "name", "key", "code", "item", "door", "room", "user", "tag", "slot", "desk", "color", "amount",
          "order", "city", "label", "file", "step", "level", "target")
STYLES = ('{k}: {v}', '{k}={v}', '{k} "{v}"', '{k} is {v}')
ENVS = ["maze", "maze_smudged", "calc", "examples/dispatch/dispatch.py:Dispatch"]
OUT = Path(__file__).parent / "results"


def value_pool(texts: list[str], rng: random.Random, size: int = 400) -> list[str]:
    """Words of the envs' transcripts, numbers, and made-up ids the tokenizer splits into pieces."""
    words = sorted({w.lower() for t in texts for w in re.findall(r"[A-Za-z][A-Za-z_]+", t)})
    words = rng.sample(words, min(len(words), size // 2))
    numbers = [str(rng.randint(0, 9999)) for _ in range(size // 4)]
    ids = ["".join(rng.choice("abcdefghjkmnpqrstuvwxyz0123456789") for _ in range(rng.randint(3, 6)))
           for _ in range(size // 4)]
    return words + numbers + ids


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


def with_extra_episodes(tag: str, seed: int, extra):
    """Base pretraining on the corpus plus `extra(conversations, rng, values)`: the rng seeded by `tag`
    and `seed`, `values` the corpus's `value_pool` drawn from it first."""
    plain = models.noisy_transcripts

    def transcripts(envs, n, max_horizon, s):
        conversations = plain(envs, n, max_horizon, s)
        renderer = models._train_tokenizer([""], 300)
        texts = [renderer.apply_chat_template(to_chat(m), tools=t, tokenize=False) for m, t in conversations]
        rng = random.Random(f"{tag}-{seed}")
        return conversations + extra(conversations, rng, value_pool(texts, rng))

    models.noisy_transcripts = transcripts


def with_lessons(per_episode: float, echo: float, seed: int):
    with_extra_episodes("lessons", seed, lambda conversations, rng, values: [
        copy_lesson(rng, values, echo) for _ in range(round(per_episode * len(conversations)))])


def rename_values(messages: list[Message], rng: random.Random, pool: list[str]) -> list[Message]:
    """The episode with every value its calls copy from an observation (a string argument found
    verbatim in an earlier system, user or tool message) replaced, everywhere in the episode and
    consistently, by a word of `pool`: a value that cannot be guessed, only copied."""
    values = {v for vs in copied_values(messages) for v in vs if isinstance(v, str)}
    if not values:
        return messages
    seen = "\n".join(m.content for m in messages if m.role != "assistant")
    new = dict(zip(sorted(values), rng.sample([w for w in pool if w not in seen], len(values))))
    word = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, sorted(new, key=len, reverse=True))) + r")(?!\w)")
    text = lambda t: word.sub(lambda x: new[x.group(1)], t)

    def args(a):
        if isinstance(a, dict):
            return {k: args(v) for k, v in a.items()}
        if isinstance(a, list):
            return [args(v) for v in a]
        return new.get(a, a) if isinstance(a, str) else a

    return [replace(m, content=text(m.content), tool_calls=tuple(ToolCall(c.name, args(c.arguments)) for c in m.tool_calls))
            for m in messages]


def with_renamed_values(share: float, seed: int):
    """Add `share` x the corpus of its own episodes again with their copied values renamed (`rename_values`)."""
    if not 0 < share <= 1:
        raise ValueError(f"renamed:{share}: the share of episodes renamed must be in (0, 1]")
    with_extra_episodes("renamed", seed, lambda conversations, rng, pool: [
        (rename_values(m, rng, pool), t) for m, t in rng.sample(conversations, round(share * len(conversations)))])


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
    values = value_pool(["alpha beta gamma delta omega sigma kappa"], rng)
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
    tiny = load_config(None, [f"tiny.{o}" for o in overrides]).tiny
    curve = probe_during_pretraining(every[0], tiny.envs) if every else None
    if "words" in variant:
        words_tokenizer()
    if variant.startswith(("lessons", "echo")):
        with_lessons(1.0 if variant == "echo" else 0.5, 0.5 if variant == "echo" else 0.0, tiny.seed)
    if variant.startswith(("recall", "induction")):  # recall:STEPS:ROWS, induction:STEPS:ROWS
        kind, steps, rows = variant.split(":")
        with_synthetic_phase(int(steps), int(rows), tiny.seed, recall_row if kind == "recall" else induction_row)
    if variant.startswith("renamed"):  # renamed:SHARE
        with_renamed_values(float(variant.split(":")[1]), tiny.seed)
    if variant == "actions":
        actions_loss()
    out = OUT / "bases" / "-".join([variant, *overrides]).replace("/", "_")
    models.build_tiny(tiny, out, force=bool(every))
    tok, model = models.load_tokenizer(str(out)), models.load_model(str(out))
    row = {"variant": variant, "overrides": overrides,
           "steps": json.loads((out / "sftbc_base.json").read_text())["train"]["steps"]}
    for env in ENVS:
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
