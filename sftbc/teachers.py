"""Teachers: anything that says what to do in a state, batched: `label(contexts) -> actions`.

- OracleTeacher: the environment's optimal policy. It rebuilds the exact state by replaying the
  context's assistant actions in a fresh, identically seeded environment, so it can label states the
  expert itself would never reach (which is the whole point of DAgger).
- HFTeacher: a local causal LM; greedy next assistant turn, parsed into a tool call.
- OpenAITeacher: any OpenAI-compatible chat-completions server with tools (vLLM, SGLang, llama.cpp,
  Ollama). The API key comes from an environment variable and is never stored.
- PrivilegedTeacher (`teacher.privileged`): an LM teacher shown each state in the env's privileged
  view, so it knows what the student cannot see (as the oracle does).

LM teachers also `score(sequences, positions, top_k)`: their next-token log-probabilities at the
given positions of token sequences (on-policy distillation), and `encode(text)` so that a tokenizer
mismatch with the student is caught before any work. Every teacher counts `queries` (states
labelled) and `tokens` (tokens its forward passes processed: the teacher cost that distillation and
hard labels are compared by; the oracle's is 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from sftbc.config import TeacherArgs
from sftbc.decode import BatchedChat
from sftbc.envs import make_env, privileged_messages
from sftbc.render import parse_action
from sftbc.types import Context, Episode, Message, ToolCall, Trajectory


class Teacher(Protocol):
    queries: int  # states labelled so far
    tokens: int  # tokens processed by the teacher's forward passes so far

    def label(self, contexts: list[Context]) -> list[Message]: ...


@dataclass
class TokenDist:
    """A teacher's next-token log-probabilities at the scored positions of one sequence: over the whole
    vocabulary (`idx` None, logp [n, V]) or over its top-k tokens (`idx` and logp [n, k])."""

    logp: torch.Tensor
    idx: torch.Tensor | None = None


class OracleTeacher:
    def __init__(self):
        self.queries = 0
        self.tokens = 0  # no model: labels cost no forward tokens

    def label(self, contexts: list[Context]) -> list[Message]:
        self.queries += len(contexts)
        return [self._label(c) for c in contexts]

    @staticmethod
    def _label(ctx: Context) -> Message:
        ep = ctx.episode
        env = make_env(ep.env, ep.horizon)
        env.reset(ep.seed)
        for m in ctx.messages:
            if m.role == "assistant":
                if env.step(m).done:
                    raise ValueError(f"context of {ep} continues past the end of its episode")
        return env.oracle_action()


class HFTeacher:
    """Greedy next assistant turn from a local causal LM.

    Like a server's prefix cache, it keeps the KV cache of every episode it labelled in its last call:
    rollouts ask about all live episodes once per turn, so a state that continues one of those
    episodes is labelled by feeding only the tokens appended since (the executed action, unless it is
    the teacher's own generation, and the tool results). `tokens` counts what the forward passes
    actually processed, so a T-step episode costs the teacher O(T) tokens, not O(T^2) re-encoding."""

    SCORE_TOKENS = 8192  # padded tokens per scoring forward: bounds the [tokens, vocab] logits in memory

    def __init__(self, path: str, adapter: str | None = None, batch_size: int = 64, max_new_tokens: int = 48,
                 chat_template: str = "auto", temperature: float = 0.0):
        from sftbc.models import load_model, load_tokenizer

        self.tok = load_tokenizer(path, chat_template)  # its own format: its labels are messages
        self.model = load_model(path, adapter, merge=True)
        self.batch_size, self.max_new_tokens, self.temperature = batch_size, max_new_tokens, temperature
        self.generator = torch.Generator(self.model.device).manual_seed(0)  # sampled labels reproduce
        self.queries = self.tokens = 0
        self.rows: dict[Episode, tuple[BatchedChat, int, tuple[Message, ...]]] = {}  # last call's episodes

    def label(self, contexts: list[Context]) -> list[Message]:
        self.queries += len(contexts)
        last, self.rows = self.rows, {}
        chats: dict[BatchedChat, dict[int, int]] = {}  # chat -> its row id -> index of the context it labels
        fresh = []
        for j, c in enumerate(contexts):
            row = last.pop(c.episode, None)
            if row and c.messages[: len(row[2])] == row[2] and row[0].tools[row[1]] == list(c.tools):
                chats.setdefault(row[0], {})[row[1]] = j
            else:
                fresh.append(j)
        stale: dict[BatchedChat, list[int]] = {}  # episodes not asked about again (finished, or cached labels)
        for chat, cid, _ in last.values():
            stale.setdefault(chat, []).append(cid)
        for chat, cids in stale.items():
            chat.drop(cids)
        start = {chat: chat.prompt_tokens for chat in chats}
        for chat, rows in chats.items():  # continued episodes: feed what was appended since
            chat.sync({cid: list(contexts[j].messages) for cid, j in rows.items()})
        for i in range(0, len(fresh), self.batch_size):  # the others: a new chat prefills them whole
            chunk = fresh[i : i + self.batch_size]
            chat = BatchedChat(self.model, self.tok, [(list(contexts[j].messages), list(contexts[j].tools)) for j in chunk])
            chats[chat] = dict(enumerate(chunk))
        out: list[Message | None] = [None] * len(contexts)
        for chat, rows in chats.items():
            texts = chat.generate(list(rows), self.max_new_tokens, self.temperature, self.generator)
            for cid, j in rows.items():
                out[j] = parse_action(texts[cid], self.tok)
                self.rows[contexts[j].episode] = (chat, cid, contexts[j].messages)
        # the tokens fed: new ones of continued episodes, whole fresh contexts, every generated token fed back
        self.tokens += sum(chat.prompt_tokens - start.get(chat, 0) for chat in chats)
        return out

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def score(self, seqs: list[list[int]], positions: list[list[int]], top_k: int = 0) -> list[TokenDist]:
        """Log-probabilities of the next token at `positions` of each sequence (full vocabulary if top_k is 0)."""
        out, i = [], 0
        while i < len(seqs):
            j = i + 1  # greedy chunks under the padded-token budget, in order
            while j < len(seqs) and max(map(len, seqs[i : j + 1])) * (j + 1 - i) <= self.SCORE_TOKENS:
                j += 1
            L = max(map(len, seqs[i:j]))
            ids = torch.full((j - i, L), self.tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros(j - i, L, dtype=torch.long)
            for r, s in enumerate(seqs[i:j]):
                ids[r, : len(s)], attn[r, : len(s)] = torch.tensor(s), 1
            dev = next(self.model.parameters()).device
            logits = self.model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits.cpu()
            for r, pos in enumerate(positions[i:j]):
                lp = torch.log_softmax(logits[r, pos].float(), dim=-1)
                out.append(TokenDist(*lp.topk(top_k, dim=-1)) if top_k else TokenDist(lp))
            self.tokens += int(attn.sum())
            i = j
        return out


def to_openai(messages) -> list[dict]:
    """HF-format messages -> OpenAI chat messages (JSON-string arguments, call ids linking results)."""
    out, last_ids = [], []
    for i, m in enumerate(messages):
        if m.role == "assistant":
            last_ids = [f"call_{i}_{j}" for j in range(len(m.tool_calls))]
            d = {"role": "assistant", "content": m.content or None}
            if m.tool_calls:
                d["tool_calls"] = [
                    {"id": cid, "type": "function",
                     "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                    for cid, c in zip(last_ids, m.tool_calls)
                ]
            out.append(d)
        elif m.role == "tool":
            out.append({"role": "tool", "content": m.content, "tool_call_id": last_ids[0] if last_ids else "call_0"})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def from_openai(msg) -> Message:
    """An OpenAI response message -> our Message; malformed arguments become plain content, never an exception."""
    calls = []
    for c in msg.tool_calls or []:
        try:
            calls.append(ToolCall.from_dict({"function": {"name": c.function.name, "arguments": c.function.arguments}}))
        except ValueError:
            return Message(role="assistant", content=f"{c.function.name}({c.function.arguments})")
    if not calls:  # some servers leave tool calls in the text: parse them the way we parse our own models
        return parse_action(msg.content or "")
    return Message(role="assistant", content=msg.content or "", tool_calls=tuple(calls))


def _forward_tokens(usage) -> int:
    """Tokens the server's forward passes processed: a prompt prefix it had cached (vLLM with
    --enable-prefix-caching and --enable-prompt-tokens-details reports it) costs nothing, as in HFTeacher."""
    if usage is None:
        return 0
    details = getattr(usage, "prompt_tokens_details", None)
    return usage.total_tokens - (getattr(details, "cached_tokens", None) or 0)


class TeacherError(RuntimeError):
    """A teacher endpoint failed for good: a non-retryable answer, or the retry budget is spent."""


class MalformedResponse(ValueError):
    """A 200 answer without the fields we need: retried like a 5xx, never turned into a label."""


class OpenAITeacher:
    """Hard labels from chat completions with tools; scores from `/v1/completions` on token ids with
    vLLM's `prompt_logprobs` (the top-k log-probabilities at every prompt position), and `encode` from
    vLLM's `/tokenize`.

    Every request is retried on timeouts, dropped connections, 408/409/429/5xx and malformed answers,
    up to `max_retries` times with exponential backoff (`backoff` * 2^attempt, jittered, at most
    `max_backoff` seconds; a 429's Retry-After is honoured up to the same bound); anything else, or a
    spent budget, is a `TeacherError` naming the endpoint and the cause. The retries are ours, not the
    openai client's, so that a malformed 200 is retried too and the policy is one place to read."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, concurrency: int = 8, backoff: float = 0.5, max_backoff: float = 30.0,
                 temperature: float = 0.0, max_tokens: int | None = None, extra_body: dict | None = None):
        from openai import OpenAI

        # Local servers accept any key; the real one, if any, is read here and kept only in memory.
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                             timeout=timeout, max_retries=0)
        self.model, self.concurrency = model, concurrency
        # what every chat completion asks besides the conversation (extra_body: server-specific fields)
        self.sampling = {"temperature": temperature, **({"max_tokens": max_tokens} if max_tokens else {}),
                         **({"extra_body": extra_body} if extra_body else {})}
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.queries = self.tokens = 0

    def _retry_after(self, err: Exception) -> float | None:
        """Seconds to wait before retrying `err`, or None when it is not worth retrying."""
        import openai

        if isinstance(err, (openai.APIConnectionError, MalformedResponse, json.JSONDecodeError,
                            openai.APIResponseValidationError)):
            return 0.0
        if isinstance(err, openai.APIStatusError) and (err.status_code in (408, 409, 429) or err.status_code >= 500):
            try:
                return max(0.0, float(err.response.headers.get("retry-after", 0)))
            except ValueError:  # an HTTP-date: fall back to our own backoff
                return 0.0
        return None

    def _call(self, what: str, fn):
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except Exception as err:
                wait = self._retry_after(err)
                if wait is None or attempt == self.max_retries:
                    why = "not retryable" if wait is None else f"gave up after {attempt + 1} attempts"
                    raise TeacherError(f"teacher endpoint {self.client.base_url} {what}: {why}: "
                                       f"{type(err).__name__}: {str(err)[:200]}") from None
                backoff = self.backoff * 2**attempt * random.uniform(0.5, 1.0)
                time.sleep(min(self.max_backoff, max(wait, backoff)))

    def _one(self, ctx: Context) -> tuple[Message, int]:
        def ask():
            resp = self.client.chat.completions.create(
                model=self.model, messages=to_openai(ctx.messages), tools=list(ctx.tools), **self.sampling)
            try:
                msg = resp.choices[0].message
                tokens = _forward_tokens(resp.usage)
            except (AttributeError, IndexError, TypeError) as e:
                raise MalformedResponse(f"no choices[0].message in the answer ({e})") from None
            return from_openai(msg), tokens

        return self._call("chat completion", ask)

    def label_iter(self, contexts: list[Context]) -> Iterator[tuple[int, Message, int]]:
        """(index, label, tokens) as each request finishes, so a caller can persist labels one by one:
        when a request fails for good, every other label is still delivered before the error is raised."""
        failed = None
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self._one, c): i for i, c in enumerate(contexts)}
            for f in as_completed(futures):
                if f.exception() is not None:
                    failed = failed or f.exception()
                    continue
                msg, n = f.result()
                self.queries, self.tokens = self.queries + 1, self.tokens + n  # here, not in the threads
                yield futures[f], msg, n
        if failed is not None:
            raise failed

    def label(self, contexts: list[Context]) -> list[Message]:
        out: list[Message | None] = [None] * len(contexts)
        for i, msg, _ in self.label_iter(contexts):
            out[i] = msg
        return out

    def encode(self, text: str) -> list[int]:
        root = str(self.client.base_url).rstrip("/").removesuffix("/v1")  # vLLM serves /tokenize at the root
        resp = self._call("tokenize", lambda: self.client.post(
            f"{root}/tokenize", cast_to=object, body={"model": self.model, "prompt": text, "add_special_tokens": False}))
        return list(resp["tokens"])

    def _score_one(self, seq: list[int], positions: list[int], top_k: int) -> TokenDist:
        resp = self._call("prompt logprobs", lambda: self.client.completions.create(
            model=self.model, prompt=seq, max_tokens=1, temperature=0.0, extra_body={"prompt_logprobs": top_k}))
        plp = (resp.choices[0].model_extra or {}).get("prompt_logprobs")
        if not isinstance(plp, list) or len(plp) != len(seq):
            raise ValueError(f"teacher endpoint returned no prompt_logprobs for {len(seq)} prompt tokens "
                             "(a vLLM-compatible /v1/completions is needed)")
        idx, logp = [], []
        for p in positions:  # entry p+1 is the distribution of token p+1 given tokens 0..p
            entry = plp[p + 1] or {}
            # vLLM returns the top-k plus the prompt's own token when it is not among them: keep the top k
            best = sorted(((v["logprob"], int(t)) for t, v in entry.items()), reverse=True)[:top_k]
            if len(best) < top_k:
                raise ValueError(f"teacher endpoint returned {len(best)} logprobs at position {p + 1}, expected {top_k}")
            logp.append([lp for lp, _ in best])
            idx.append([t for _, t in best])
        return TokenDist(torch.tensor(logp, dtype=torch.float32), torch.tensor(idx, dtype=torch.long))

    def score(self, seqs: list[list[int]], positions: list[list[int]], top_k: int = 0) -> list[TokenDist]:
        if top_k < 1:
            raise ValueError("a served teacher returns top-k logprobs only: set distill.top_k >= 1")
        with ThreadPoolExecutor(self.concurrency) as pool:
            out = list(pool.map(lambda a: self._score_one(*a, top_k), zip(seqs, positions)))
        self.tokens += sum(map(len, seqs))
        return out


class PrivilegedTeacher:
    """An LM teacher that sees more than its student: each state is shown to `inner` as the env's
    privileged view gives it (`envs.privileged_messages`; for maze_smudged, every note clean), as the
    oracle, which knows the layout, always does. Labels are actions, the same in either view, so the
    student learns them in its own view; distillation scores the student's tokens in the teacher's view
    (`view`). Counters are the inner teacher's (`_inner`, not `inner`: `dist` must sync them once)."""

    def __init__(self, inner: Teacher):
        self._inner = inner
        if hasattr(inner, "score"):
            self.score, self.encode = inner.score, inner.encode
        if hasattr(inner, "label_iter"):  # an endpoint streams its labels: keep it streaming
            self.label_iter = lambda contexts: inner.label_iter(self._shown(contexts))

    queries = property(lambda self: self._inner.queries, lambda self, v: setattr(self._inner, "queries", v))
    tokens = property(lambda self: self._inner.tokens, lambda self, v: setattr(self._inner, "tokens", v))

    @staticmethod
    def _shown(contexts: list[Context]) -> list[Context]:
        return [Context(privileged_messages(c.episode, c.messages), c.tools, c.episode) for c in contexts]

    def label(self, contexts: list[Context]) -> list[Message]:
        return self._inner.label(self._shown(contexts))

    @staticmethod
    def view(traj: Trajectory) -> tuple[Message, ...]:
        return privileged_messages(traj.episode, traj.messages)


class CachedTeacher:
    """A teacher whose labels are kept by a hash of the exact context (messages, tools, episode) and
    appended to a JSONL file as they arrive: no state is labelled twice across DAgger rounds, the cells
    of a comparison (which evaluate on the same held-out seeds) or a resumed run, and labels already
    paid for survive a crash. A hit is charged the tokens the label cost when it was computed, so teacher
    budgets mean the same with or without the cache; `hits` and `saved_tokens` say what it saved."""

    def __init__(self, inner: Teacher, path: Path):
        self.inner, self.path = inner, Path(path)
        self.labels: dict[str, tuple[Message, int]] = {}
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # torn by a crash: new records must start on a line of their own
                with self.path.open("a") as f:
                    f.write("\n")
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                    self.labels[rec["key"]] = (Message.from_dict(rec["label"]), int(rec["tokens"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash mid-write: that label is simply asked again
        self.queries = self.tokens = self.hits = self.saved_tokens = 0
        if hasattr(inner, "score"):  # an LM teacher: scores pass through (sequences never repeat), costs counted
            self.score = self._score
        if hasattr(inner, "view"):  # a privileged teacher: distillation renders episodes as it sees them
            self.view = inner.view

    @staticmethod
    def key(ctx: Context) -> str:
        blob = json.dumps([[m.to_dict(json_arguments=True) for m in ctx.messages], list(ctx.tools),
                           [ctx.episode.env, ctx.episode.horizon, ctx.episode.seed]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def label(self, contexts: list[Context]) -> list[Message]:
        keys = [self.key(c) for c in contexts]
        todo = {k: c for k, c in zip(keys, contexts) if k not in self.labels}
        paid = 0
        if todo:
            todo_keys = list(todo)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                for i, m, c in labels_as_they_come(self.inner, list(todo.values())):
                    self.labels[todo_keys[i]] = (m, c)
                    f.write(json.dumps({"key": todo_keys[i], "label": m.to_dict(), "tokens": c}) + "\n")
                    f.flush()  # on disk before the next one arrives: a failure later in the batch loses nothing
                    paid += c
        charged = sum(self.labels[k][1] for k in keys)
        self.queries, self.tokens = self.queries + len(keys), self.tokens + charged
        self.hits, self.saved_tokens = self.hits + len(keys) - len(todo), self.saved_tokens + charged - paid
        return [self.labels[k][0] for k in keys]

    def _score(self, *args, **kwargs):
        t0 = self.inner.tokens
        out = self.inner.score(*args, **kwargs)
        self.tokens += self.inner.tokens - t0
        return out

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)


def labels_as_they_come(teacher: Teacher, contexts: list[Context]) -> Iterator[tuple[int, Message, int]]:
    """(index, label, tokens) per context: as each arrives for a teacher that streams (an endpoint),
    else after the batch, its token cost split over its labels."""
    if hasattr(teacher, "label_iter"):
        yield from teacher.label_iter(contexts)
        return
    t0 = teacher.tokens
    fresh = teacher.label(contexts)
    paid, n = teacher.tokens - t0, len(contexts)
    for i, m in enumerate(fresh):
        yield i, m, paid // n + (i < paid % n)


def make_teacher(args: TeacherArgs, run_dir: Path | None = None) -> Teacher:
    """The configured teacher (shown the privileged view with teacher.privileged), behind the label cache (teacher.cache) when there is a run directory."""
    if args.kind == "oracle":
        teacher = OracleTeacher()
    elif args.kind == "hf":
        from sftbc.models import resolve_model_path

        # the same names a student takes: "tiny", "smollm2-135m" or a model directory
        teacher = HFTeacher(resolve_model_path(args.path), batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            chat_template=args.chat_template, temperature=args.temperature)
    elif args.kind == "openai":
        teacher = OpenAITeacher(args.base_url, args.model, args.api_key_env, args.timeout, args.max_retries,
                                args.batch_size, temperature=args.temperature, max_tokens=args.max_new_tokens,
                                extra_body=dict(args.extra_body))
    else:
        raise ValueError(f"unknown teacher kind {args.kind!r}")
    if args.privileged:
        teacher = PrivilegedTeacher(teacher)
    if args.cache == "none" or (run_dir is None and not args.cache):
        return teacher
    return CachedTeacher(teacher, Path(args.cache) if args.cache else Path(run_dir) / "label_cache.jsonl")


def cache_stats(teacher) -> dict:
    """Label-cache use over a run (its evaluations included)."""
    if not isinstance(teacher, CachedTeacher):
        return {}
    return {"label_cache": {"queries": teacher.queries, "hits": teacher.hits,
                            "hit_rate": round(teacher.hits / teacher.queries, 4) if teacher.queries else None,
                            "saved_tokens": teacher.saved_tokens}}
