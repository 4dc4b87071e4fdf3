import pytest
import torch

from sftbc.decode import BatchedChat
from sftbc.envs import make_env
from sftbc.render import parse_action, render


def fresh_logits(model, tok, messages, tools):
    ids = tok(render(tok, messages, tools, add_generation_prompt=True), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0, -1]


def test_greedy_turn_matches_hf_generate(tiny):
    model, tok = tiny
    convs = [make_env("maze", T).reset(s) for T, s in [(1, 0), (3, 1), (5, 2)]]
    chat = BatchedChat(model, tok, convs)
    ours = chat.generate([0, 1, 2], max_new_tokens=30)
    for i, (msgs, tools) in enumerate(convs):
        ids = tok(render(tok, msgs, tools, add_generation_prompt=True), add_special_tokens=False, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=30, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        assert ours[i] == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)


@pytest.mark.parametrize("drafted", [False, True])
def test_cached_multi_turn_equals_fresh_encoding(tiny, drafted):
    """Across turns, with generated tokens kept or masked out (and drafts' rejected tokens with them),
    each row sees what a fresh encode sees."""
    model, tok = tiny
    envs = [make_env("maze", 4), make_env("calc", 4), make_env("maze", 2)]
    convs = [list(e.reset(7 + i)[0]) for i, e in enumerate(envs)]
    tools = [e.reset(7 + i)[1] for i, e in enumerate(envs)]
    chat = BatchedChat(model, tok, list(zip(convs, tools)))
    live = [0, 1, 2]
    for turn in range(3):
        for i in live:
            torch.testing.assert_close(chat.logits[i], fresh_logits(model, tok, convs[i], tools[i]), atol=1e-4, rtol=1e-4)
        drafts = {i: chat.draft(envs[i].oracle_action()) for i in live} if drafted else None
        texts = chat.generate(live, max_new_tokens=24, drafts=drafts)
        for i in live:  # the teacher acts (the student's turn is replaced), or on the second turn the student
            a = parse_action(texts[i]) if drafted and turn == 1 else envs[i].oracle_action()
            convs[i] += [a, *envs[i].step(a).messages]
        if turn == 1:
            chat.drop([2])
            live = [0, 1]
        chat.sync({i: convs[i] for i in live})

def test_drafts_change_the_work_not_the_greedy_output(tiny):
    """Whatever the draft (the turn itself, one token off, the oracle's call, junk, too long), the
    turn decoded is the plain greedy one; the turn itself as its draft takes one forward."""
    model, tok = tiny
    envs = [make_env("maze", 4), make_env("calc", 3), make_env("maze", 6)]
    convs = [e.reset(3 + i) for i, e in enumerate(envs)]
    plain = BatchedChat(model, tok, convs)
    want = plain.generate([0, 1, 2], max_new_tokens=40)
    own = {c: plain.pending[c][0] for c in range(3)}
    assert all(len(d) > 2 for d in own.values())
    drafts = {
        "own": own,
        "one token off": {c: [d[0], (d[1] + 1) % len(tok), *d[2:]] for c, d in own.items()},
        "oracle": {c: plain.draft(e.oracle_action()) for c, e in enumerate(envs)},
        "junk": {c: list(range(5, 45)) for c in range(3)},
        "too long": {c: d + d for c, d in own.items()},
    }
    assert all(d and d[-1] == plain.stop_id for d in drafts["oracle"].values())
    for name, d in drafts.items():
        chat = BatchedChat(model, tok, convs)
        calls = []
        forward = chat._forward
        chat._forward = lambda chunks, every_position=False: calls.append(chunks) or forward(chunks, every_position)
        assert chat.generate([0, 1, 2], max_new_tokens=40, drafts=d) == want, name
        if name == "own":
            assert len(calls) == 1
    # sampling ignores drafts: the same draws as without
    texts = [BatchedChat(model, tok, convs).generate([0, 1, 2], 40, 1.0, torch.Generator().manual_seed(0), drafts=d)
             for d in (None, own)]
    assert texts[0] == texts[1]
