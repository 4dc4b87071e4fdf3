import torch

from sftbc.decode import BatchedChat
from sftbc.envs import make_env
from sftbc.render import render


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


def test_cached_multi_turn_equals_fresh_encoding(tiny):
    """Across turns, with generated tokens kept or masked out, each row sees what a fresh encode sees."""
    model, tok = tiny
    envs = [make_env("maze", 4), make_env("calc", 4), make_env("maze", 2)]
    convs = [list(e.reset(7 + i)[0]) for i, e in enumerate(envs)]
    tools = [e.reset(7 + i)[1] for i, e in enumerate(envs)]
    chat = BatchedChat(model, tok, list(zip(convs, tools)))
    live = [0, 1, 2]
    for turn in range(3):
        for i in live:
            torch.testing.assert_close(chat.logits[i], fresh_logits(model, tok, convs[i], tools[i]), atol=1e-4, rtol=1e-4)
        chat.generate(live, max_new_tokens=24)
        for i in live:  # the teacher acts: the student's generated turn is replaced
            a = envs[i].oracle_action()
            convs[i] += [a, *envs[i].step(a).messages]
        if turn == 1:
            chat.drop([2])
            live = [0, 1]
        chat.sync({i: convs[i] for i in live})
