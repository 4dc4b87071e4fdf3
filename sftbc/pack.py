"""Trie packing: a training batch as one sequence of its distinct tokens (`train.pack`).

The rows of a batch often begin alike. Every row of an environment opens with the same system prompt
and task preamble (45 of the 84 tokens of a one-step maze row), and a relabelled trajectory's rows
(the executed conversation and each `train.Example` branch) repeat the conversation up to each
label. Folded into a prefix trie, a token that several rows share is embedded, projected and fed
through the MLPs once, and logits are computed only where a loss term needs them. Attention still
shows every row exactly its own context: each segment of the trie (a run of tokens without a fork)
attends to the keys of its own root-to-segment path, at the positions it has in its rows.

Loss terms are (position, target) pairs, so a shared position that predicts different next tokens in
different rows (the last token before rows diverge) serves each of them, and a shared token that
several rows train on counts once per row. The loss and gradients are those of the rows trained one
by one, to float rounding (tests/test_train.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED = "sftbc_packed"


@dataclass(frozen=True)
class Plan:
    """How `packed_attention` attends a packed sequence of N tokens, in up to three SDPA calls:
    - `paths` (R, L): whole root-to-leaf paths, attended causally. They are chosen longest first, each
      kept if at least half of it is not on a path kept before, and they cover every token on them.
    - `near_queries` (S, Q), `near_keys` (S, K), `near_allowed` (S, 1, Q, K): each other segment whose
      path is short (at most N / 4 tokens) attends to that path's keys, gathered into a row of its own.
    - `far_queries` (F,), `far_allowed` (1, 1, F, N): the tokens of the remaining segments (a label
      branching off a long conversation) attend to the packed keys in place, masked to their paths:
      gathering a long path per segment would copy it once per segment.
    `take` (N,): where each packed token's output lies in the calls' outputs, laid end to end. Rows are
    right-padded with index 0, whose outputs are never taken."""

    paths: torch.Tensor | None
    near_queries: torch.Tensor | None
    near_keys: torch.Tensor | None
    near_allowed: torch.Tensor | None
    far_queries: torch.Tensor | None
    far_allowed: torch.Tensor | None
    take: torch.Tensor

    def to(self, device) -> Plan:
        return Plan(*(None if (t := getattr(self, f.name)) is None else t.to(device) for f in fields(self)))


def pack(batch: list) -> dict:
    """A batch of `train.Example`s as one packed sequence: `input_ids` and `position_ids` (1, N), the
    attention `plan`, the loss terms `src` (M,) (the packed position whose logits predict each target)
    and `tgt` (M,), and `where`: per example, the packed position of each of its tokens."""
    token: list[int] = []                # per trie node: its token
    children: list[dict[int, int]] = []  # per trie node: token -> child node
    roots: dict[int, int] = {}

    def insert(ids: list[int], parent: int | None) -> list[int]:
        """Walk (and extend) the trie from `parent` along `ids`; returns their nodes."""
        level, nodes = (roots if parent is None else children[parent]), []
        for t in ids:
            if t not in level:
                level[t] = len(token)
                token.append(t)
                children.append({})
            nodes.append(level[t])
            level = children[nodes[-1]]
        return nodes

    nodes_of, prev_of = [], []  # per example, in its own coordinates: each token's node and its predecessor's
    for e in batch:
        trunk, segs = e.segments()
        nodes = insert(e.input_ids[:trunk], None)
        prev = [None, *nodes[:-1]]
        for start, end, prefix in segs:  # a branch continues the trunk's first `prefix` tokens
            branch = insert(e.input_ids[start:end], nodes[prefix - 1])
            nodes += branch
            prev += [nodes[prefix - 1], *branch[:-1]]
        nodes_of.append(nodes)
        prev_of.append(prev)

    # Lay the trie out depth first; a segment runs until a node forks or ends. A node's depth is its position.
    packed = [0] * len(token)
    ids, pos, segments = [], [], []  # segments: (start, end, parent segment or -1)
    stack = [(n, -1, 0) for n in reversed(roots.values())]
    while stack:
        node, parent, depth = stack.pop()
        start = len(ids)
        while True:
            packed[node] = len(ids)
            ids.append(token[node])
            pos.append(depth)
            depth += 1
            if len(children[node]) != 1:
                break
            (node,) = children[node].values()
        segments.append((start, len(ids), parent))
        stack += [(c, len(segments) - 1, depth) for c in reversed(children[node].values())]

    src, tgt = [], []
    for e, prev in zip(batch, prev_of):
        for t, (m, p) in enumerate(zip(e.loss_mask, prev)):
            if m and p is not None:  # nothing predicts a row's first token
                src.append(packed[p])
                tgt.append(e.input_ids[t])
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "plan": _plan(segments),
            "src": torch.tensor(src, dtype=torch.long), "tgt": torch.tensor(tgt, dtype=torch.long),
            "where": [torch.tensor([packed[n] for n in nodes]) for nodes in nodes_of]}


def _plan(segments: list[tuple[int, int, int]]) -> Plan:
    n, parent = segments[-1][1] if segments else 0, [p for _, _, p in segments]
    paths = []
    for start, end, up in segments:
        paths.append((paths[up] if up >= 0 else []) + list(range(start, end)))
    # Whole paths, causal: attending a path's covered part again costs no more than its new half, and the causal
    # kernel skips the blocks above the diagonal that a masked call computes.
    leaves = sorted(set(range(len(segments))) - set(parent), key=lambda s: -len(paths[s]))
    covered, whole = [False] * len(segments), []
    for leaf in leaves:
        up = leaf
        while up >= 0 and not covered[up]:
            up = parent[up]
        if 2 * (len(paths[leaf]) - (len(paths[up]) if up >= 0 else 0)) >= len(paths[leaf]):
            whole.append(leaf)
            up = leaf
            while up >= 0 and not covered[up]:
                covered[up] = True
                up = parent[up]
    rest = [s for s in range(len(segments)) if not covered[s]]
    near = [s for s in rest if 4 * len(paths[s]) <= n]
    far = [s for s in rest if 4 * len(paths[s]) > n]

    take, base = torch.empty(n, dtype=torch.long), 0
    rows = near_q = near_k = near_allowed = far_q = far_allowed = None
    if whole:
        L = max(len(paths[s]) for s in whole)
        rows = torch.zeros(len(whole), L, dtype=torch.long)
        for r, s in enumerate(whole):
            p = torch.tensor(paths[s])
            rows[r, : len(p)] = p
            take[p] = r * L + torch.arange(len(p))  # a token on several rows: any of them, the outputs are equal
        base = rows.numel()
    if near:
        Q, K = max(segments[s][1] - segments[s][0] for s in near), max(len(paths[s]) for s in near)
        near_q, near_k = torch.zeros(len(near), Q, dtype=torch.long), torch.zeros(len(near), K, dtype=torch.long)
        near_allowed = torch.zeros(len(near), 1, Q, K, dtype=torch.bool)
        near_allowed[..., 0] = True  # padded queries see the root, so no row of the softmax is empty
        for i, s in enumerate(near):
            (a, b, _), p = segments[s], paths[s]
            near_q[i, : b - a] = torch.arange(a, b)
            near_k[i, : len(p)] = torch.tensor(p)
            near_allowed[i, 0, : b - a, : len(p)] = _causal(b - a, len(p))
            take[a:b] = base + i * Q + torch.arange(b - a)
        base += near_q.numel()
    if far:
        far_q = torch.cat([torch.arange(segments[s][0], segments[s][1]) for s in far])
        far_allowed = torch.zeros(1, 1, len(far_q), n, dtype=torch.bool)
        i = 0
        for s in far:
            (a, b, _), p = segments[s], torch.tensor(paths[s])
            far_allowed[0, 0, i : i + b - a, p] = _causal(b - a, len(p))
            i += b - a
        take[far_q] = base + torch.arange(len(far_q))
    return Plan(rows, near_q, near_k, near_allowed, far_q, far_allowed, take)


def _causal(queries: int, keys: int) -> torch.Tensor:
    """(queries, keys): the last `queries` of `keys` tokens, each attending to itself and what precedes it."""
    return torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     plan: Plan | None = None, **kwargs):
    """Attention over a packed sequence (registered as attn_implementation PACKED): the query, key and
    value rows of each path are gathered from the packed tokens, attended by SDPA, and each token's
    output taken from its own row. The gathers' backward adds a shared key's gradients from every row
    that attends to it. Without a `plan` (decoding, unpacked batches) it is transformers' SDPA."""
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise ValueError("train.pack attends every token to its whole context; this model's attention has a "
                         "sliding window or a logit softcap")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q, k, v = (x.transpose(1, 2)[0] for x in (query, key, value))  # (N, heads, dim)

    def rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (R, heads, L, dim): x at the packed `index` (R, L)
        return x.index_select(0, index.flatten()).unflatten(0, tuple(index.shape)).transpose(1, 2)

    outs = []
    if plan.paths is not None:
        p = plan.paths
        outs.append(F.scaled_dot_product_attention(rows(q, p), rows(k, p), rows(v, p), dropout_p=dropout,
                                                   scale=scaling, is_causal=True))
    if plan.near_queries is not None:
        outs.append(F.scaled_dot_product_attention(rows(q, plan.near_queries), rows(k, plan.near_keys),
                                                   rows(v, plan.near_keys), attn_mask=plan.near_allowed,
                                                   dropout_p=dropout, scale=scaling))
    if plan.far_queries is not None:
        outs.append(F.scaled_dot_product_attention(rows(q, plan.far_queries[None]), key, value,
                                                   attn_mask=plan.far_allowed, dropout_p=dropout, scale=scaling))
    flat = torch.cat([o.transpose(1, 2).flatten(0, 1) for o in outs])  # (rows x length, heads, dim)
    return flat.index_select(0, plan.take)[None], None


AttentionInterface.register(PACKED, packed_attention)
AttentionMaskInterface.register(PACKED, sdpa_mask)  # masks as for SDPA wherever no plan is given
