"""Teachers: anything that says what to do in a state, batched: `label(contexts) -> actions`.

- OracleTeacher: the environment's optimal policy. It rebuilds the exact state by replaying the
  context's assistant actions in a fresh, identically seeded environment, so it can label states the
  expert itself would never reach (which is the whole point of DAgger).
- HFTeacher: a local causal LM; greedy next assistant turn, parsed into a tool call.
- OpenAITeacher: any OpenAI-compatible chat-completions server with tools (vLLM, SGLang, llama.cpp,
  Ollama). The API key comes from an environment variable and is never stored.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sftbc.config import TeacherArgs
from sftbc.envs import make_env
from sftbc.render import parse_action
from sftbc.types import Context, Message, ToolCall


class Teacher(Protocol):
    queries: int  # states labelled so far

    def label(self, contexts: list[Context]) -> list[Message]: ...


class OracleTeacher:
    def __init__(self):
        self.queries = 0

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
    def __init__(self, path: str, adapter: str | None = None, batch_size: int = 64, max_new_tokens: int = 48):
        from sftbc.models import load_model, load_tokenizer

        self.tok = load_tokenizer(path)
        self.model = load_model(path, adapter)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.queries = 0

    def label(self, contexts: list[Context]) -> list[Message]:
        from sftbc.decode import BatchedChat

        self.queries += len(contexts)
        out = []
        for i in range(0, len(contexts), self.batch_size):
            chunk = contexts[i : i + self.batch_size]
            chat = BatchedChat(self.model, self.tok, [(list(c.messages), list(c.tools)) for c in chunk])
            texts = chat.generate(list(range(len(chunk))), self.max_new_tokens)
            out += [parse_action(texts[j]) for j in range(len(chunk))]
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


class OpenAITeacher:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_retries: int = 3, concurrency: int = 8):
        from openai import OpenAI

        # Local servers accept any key; the real one, if any, is read here and kept only in memory.
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                             timeout=timeout, max_retries=max_retries)
        self.model, self.concurrency = model, concurrency
        self.queries = 0

    def _one(self, ctx: Context) -> Message:
        resp = self.client.chat.completions.create(
            model=self.model, messages=to_openai(ctx.messages), tools=list(ctx.tools), temperature=0.0)
        return from_openai(resp.choices[0].message)

    def label(self, contexts: list[Context]) -> list[Message]:
        self.queries += len(contexts)
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, contexts))


def make_teacher(args: TeacherArgs) -> Teacher:
    if args.kind == "oracle":
        return OracleTeacher()
    if args.kind == "hf":
        from sftbc.models import resolve_model_path

        # the same names a student takes: "tiny", "smollm2-135m" or a model directory
        return HFTeacher(resolve_model_path(args.path), batch_size=args.batch_size)
    if args.kind == "openai":
        return OpenAITeacher(args.base_url, args.model, args.api_key_env, args.timeout, args.max_retries,
                             args.batch_size)
    raise ValueError(f"unknown teacher kind {args.kind!r}")
