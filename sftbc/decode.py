"""Batched, KV-cached multi-turn decoding.

Every live conversation is one row of a single batch that is kept across turns: each turn we
prefill only the new tokens (the tool results and the next assistant header), then decode the next
assistant turn for all rows at once. Rows are left-padded per chunk, so holes of padding sit in the
middle of a row; they are masked out, and explicit position ids count only real tokens, so a row
sees exactly what a fresh encoding of its conversation would show it.

The cache always holds the canonical rendering of each conversation. When the executed action is
not what the model generated (the teacher acted, or the output was malformed and re-rendered), the
generated tokens are masked out and the canonical action is fed instead, at the same positions.

Greedy turns can take a draft (speculative decoding with a free draft: in a labelled rollout the
teacher's label is known before the student speaks, and a trained student mostly says it). Each
step feeds the draft behind the token decoded, and keeps the longest prefix that greedy decoding
would have produced (see `generate`). The output is the greedy output either way; what changes is
the work. A decode step's cost is mostly reading the KV cache (the model is small, the cache is a
whole episode per row), and a kept draft reads it once for the turn instead of once per token.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from sftbc.render import render, turn_format
from sftbc.types import Message


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values sit at the front of a buffer with spare room, so that a
    decoded token is written in place instead of `torch.cat` copying the whole cache every step
    (which was ~40% of a T=16 evaluation). Anything assigned to `keys`/`values` (batch selection,
    compaction) becomes the new buffer, and the next append regrows it."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        B, H, _, D = key_states.shape
        self.keys = key_states.new_empty(B, H, 0, D)
        self.values = value_states.new_empty(B, H, 0, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add = self._n, key_states.shape[-2]
        if n + add > self._kbuf.shape[-2]:
            cap = max(2 * (n + add), 64)
            for name in ("_kbuf", "_vbuf"):
                old = getattr(self, name)
                new = old.new_empty(*old.shape[:2], cap, old.shape[-1])
                new[:, :, :n] = old[:, :, :n]
                setattr(self, name, new)
        self._kbuf[:, :, n : n + add] = key_states
        self._vbuf[:, :, n : n + add] = value_states
        self._n = n + add
        return self.keys, self.values

    @property
    def keys(self):
        return None if self._kbuf is None else self._kbuf[:, :, : self._n]

    @keys.setter
    def keys(self, t):
        self._kbuf, self._n = t, 0 if t is None else t.shape[-2]

    @property
    def values(self):
        return None if self._vbuf is None else self._vbuf[:, :, : self._n]

    @values.setter
    def values(self, t):
        self._vbuf = t  # keys and values are always assigned together, keys first


_DRAFT_CONTEXT = (Message(role="user"),)  # what `draft` renders a turn after


class BatchedChat:
    def __init__(self, model, tokenizer, conversations: list[tuple[list[Message], list[dict]]]):
        self.model, self.tok = model, tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.end = turn_format(tokenizer).end  # the template's end-of-turn token: decoding stops there
        self.stop_id = tokenizer.convert_tokens_to_ids(self.end)
        self.device = next(model.parameters()).device
        n = len(conversations)
        self.ids = list(range(n))  # row -> conversation id
        self.tools = [tools for _, tools in conversations]
        self.cache = DynamicCache()
        self.cache.layer_class_to_replicate = GrowingLayer
        self.mask = torch.zeros(n, 0, dtype=torch.long, device=self.device)
        self.next_pos = torch.zeros(n, dtype=torch.long, device=self.device)
        self.logits: dict[int, torch.Tensor] = {}  # conversation -> next-token logits
        self.text = [""] * n  # canonical text in the cache, per conversation
        self.pending: dict[int, tuple[list[int], str, int, torch.Tensor]] = {}  # last generation, until synced
        self.prompt_tokens = 0  # tokens prefilled: the cost of keeping the cache
        self.sync({i: msgs for i, (msgs, _) in enumerate(conversations)})

    def _row(self, cid: int) -> int:
        return self.ids.index(cid)

    @torch.no_grad()
    def _forward(self, chunks: dict[int, list[int]], every_position: bool = False) -> torch.Tensor:
        """Feed each row its chunk (left-padded to a common width); returns the last position's logits
        [B, V], or with `every_position` all of them [B, width, V]."""
        width = max(len(c) for c in chunks.values())
        B = len(self.ids)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long, device=self.device)
        real = torch.zeros(B, width, dtype=torch.long, device=self.device)
        for cid, chunk in chunks.items():
            r = self._row(cid)
            if chunk:
                ids[r, width - len(chunk) :] = torch.tensor(chunk, device=self.device)
                real[r, width - len(chunk) :] = 1
        pos = (self.next_pos[:, None] + real.cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, real], dim=1)
        out = self.model(
            input_ids=ids, attention_mask=self.mask, position_ids=pos, past_key_values=self.cache,
            use_cache=True, logits_to_keep=0 if every_position else 1,
        )
        self.next_pos += real.sum(1)
        self.prompt_tokens += int(real.sum())
        return out.logits.float() if every_position else out.logits[:, -1].float()

    def _feed(self, chunks: dict[int, list[int]]):
        chunks = {c: t for c, t in chunks.items() if t}
        if not chunks:
            return
        logits = self._forward(chunks)
        for cid in chunks:
            self.logits[cid] = logits[self._row(cid)]

    def draft(self, action: Message) -> list[int]:
        """The tokens of `action` as the next assistant turn, after its header, up to and including its
        end-of-turn: a draft for `generate`. The template renders an assistant turn the same whatever
        comes before it, so it is rendered after a one-message stand-in, not after the whole
        conversation again (and a draft is only a guess: `generate` checks every token of it)."""
        before = render(self.tok, _DRAFT_CONTEXT, (), add_generation_prompt=True)
        full = render(self.tok, [*_DRAFT_CONTEXT, action], ())
        if not full.startswith(before) or self.end not in full[len(before) :]:
            return []  # a template that renders the turn differently: no draft
        return self._encode(full[len(before) :].split(self.end)[0] + self.end)

    def _compact(self):
        """Squeeze the masked columns (padding, discarded generations) out of the cache. Cached keys
        already carry their rotary positions and the kept columns keep their order, so attention
        is unchanged; only the work per step shrinks."""
        if self.pending:  # a pending generation remembers its column; compact once all are synced
            return
        real = self.mask.bool()
        width = int(real.sum(1).max())
        if self.mask.shape[1] <= width + 32:  # a gather per turn is cheap next to every step's cat over the cache
            return
        idx = torch.sort(real.int(), dim=1, stable=True).indices[:, -width:]  # pads first, real in order
        self.mask = self.mask.gather(1, idx)
        for layer in self.cache.layers:
            full = idx[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys, layer.values = layer.keys.gather(2, full), layer.values.gather(2, full)

    def sync(self, conversations: dict[int, list[Message]]):
        """Bring each conversation's cache up to `render(messages, add_generation_prompt=True)`."""
        chunks = {}
        for cid, messages in conversations.items():
            full = render(self.tok, messages, self.tools[cid], add_generation_prompt=True)
            base = self.text[cid]
            gen = self.pending.pop(cid, None)
            new_tokens = None
            if gen is not None:
                gen_ids, gen_text, start_col, start_pos = gen
                if full.startswith(base + gen_text):
                    rest = self._encode(full[len(base) :])
                    if rest[: len(gen_ids)] == gen_ids:  # keep what the model generated
                        new_tokens = rest[len(gen_ids) :]
                if new_tokens is None:  # mask the generated tokens out and rewind the positions
                    r = self._row(cid)
                    self.mask[r, start_col:] = 0
                    self.next_pos[r] = start_pos
            if not full.startswith(base):
                raise ValueError("conversation history was rewritten; BatchedChat only appends")
            chunks[cid] = new_tokens if new_tokens is not None else self._encode(full[len(base) :])
            self.text[cid] = full
        self._compact()
        self._feed(chunks)

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def generate(self, cids: list[int], max_new_tokens: int = 48, temperature: float = 0.0,
                 generator: torch.Generator | None = None, drafts: dict[int, list[int]] | None = None
                 ) -> dict[int, str]:
        """Decode the next assistant turn for these conversations (until end-of-turn). `drafts` (from
        `draft`; greedy decoding only, ignored when sampling) are guessed turns.

        Each step feeds every active conversation its next token and, behind it, the rest of its draft.
        Draft token j is kept while the argmax before it is that token; the first miss and everything
        after it are masked out and their positions rewound (as `sync` does for a discarded turn), the
        argmax at the miss is the next step's token, and the draft past the missed token is its draft
        (a student that names another door than the teacher writes the same call around it). A step
        that keeps none of its draft drops it. Without drafts a step is one token, as plain decoding."""
        out: dict[int, list[int]] = {c: [] for c in cids}
        start_col = self.mask.shape[1]
        for c in cids:
            self.pending[c] = ([], "", start_col, self.next_pos[self._row(c)].clone())
        rest = {c: list(d) for c, d in (drafts or {}).items() if c in out and d} if temperature == 0 else {}
        active = list(cids)
        while active:
            logits = torch.stack([self.logits[c] for c in active])
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()
            else:
                nxt = logits.argmax(-1).tolist()
            # the token chosen stands in for the draft's next one, whatever that was
            chunks = {c: [t, *rest.get(c, [])[1 : max_new_tokens - len(out[c])]] for c, t in zip(active, nxt)}
            start = self.mask.shape[1]
            every = self._forward(chunks, every_position=True)
            width = every.shape[1]
            for c, chunk in chunks.items():
                r, m = self._row(c), len(chunk)
                row = every[r, width - m :]
                k = 1  # the token chosen; draft token chunk[j] is kept while the argmax before it is chunk[j]
                if m > 1:  # (most rows carry no draft: no per-row tensor work for them)
                    k += int((row[:-1].argmax(-1) == torch.tensor(chunk[1:], device=row.device)).long().cumprod(0).sum())
                if self.stop_id in chunk[:k]:
                    k = chunk.index(self.stop_id) + 1
                self.logits[c] = row[k - 1]
                self.mask[r, start + width - m + k :] = 0
                self.next_pos[r] -= m - k
                out[c] += chunk[:k]
                rest[c] = chunk[k:] if k > 1 else []
            active = [c for c in active if out[c][-1] != self.stop_id and len(out[c]) < max_new_tokens]
        texts = {}
        for c in cids:
            text = self.tok.decode(out[c], skip_special_tokens=False)
            self.pending[c] = (out[c], text, start_col, self.pending[c][3])
            texts[c] = text
        return texts

    def drop(self, cids: list[int]):
        """Forget finished conversations so they cost nothing on later turns."""
        keep = [r for r, c in enumerate(self.ids) if c not in set(cids)]
        if len(keep) == len(self.ids):
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        if keep:
            self.cache.batch_select_indices(idx)
        self.mask, self.next_pos = self.mask[idx], self.next_pos[idx]
        self.ids = [self.ids[r] for r in keep]
        for c in cids:
            self.logits.pop(c, None)
            self.pending.pop(c, None)
