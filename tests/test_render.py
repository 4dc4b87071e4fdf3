import json

from sftbc.envs import make_env
from sftbc.render import IM_END, parse_action, render, tokenize_conversation, to_chat
from sftbc.types import Message, tool_call


def test_parse_round_trip():
    text = '<tool_call>{"name": "go", "arguments": {"door": "red"}}</tool_call><|im_end|>'
    assert parse_action(text) == tool_call("go", door="red")
    # OpenAI-style string arguments inside the call are decoded too
    text = '<tool_call>{"name": "go", "arguments": "{\\"door\\": \\"red\\"}"}</tool_call>'
    assert parse_action(text) == tool_call("go", door="red")


def test_parse_never_raises_on_garbage():
    for text in ["", "hello", "<tool_call>", "<tool_call>{nope}</tool_call>", "<tool_call>[1,2]</tool_call>",
                 '<tool_call>{"name": 3}</tool_call>', '<tool_call>{"name": "go", "arguments": 5}</tool_call>',
                 "<tool_call>" + "[" * 5000 + "</tool_call>", "x" * 10000, "\x00\ud800"]:
        m = parse_action(text)
        assert m.role == "assistant" and not m.tool_calls


def test_template_masks_exactly_the_assistant_turns(tiny):
    _, tok = tiny
    env = make_env("maze", 3)
    msgs, tools = env.reset(0)
    for _ in range(3):
        a = env.oracle_action()
        msgs += [a, *env.step(a).messages]
    ids, mask = tokenize_conversation(tok, to_chat(msgs), tools)
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    expected = "".join(render(tok, [m], []).split("assistant\n", 1)[1].rstrip("\n") for m in msgs if m.role == "assistant")
    assert trained == expected
    assert trained.count(IM_END) == 3  # end-of-turn is trained, so the model learns to stop
    assert "You are in" not in trained and "Trust only" not in trained  # tool outputs and prompt are not


def test_string_and_dict_arguments_render_identically(tiny):
    _, tok = tiny
    msgs = [Message("user", "hi"), tool_call("go", door="red"), Message("tool", "ok", name="go")]
    as_dicts = [m.to_dict() for m in msgs]
    as_strings = [m.to_dict(json_arguments=True) for m in msgs]
    tools = make_env("maze", 1).reset(0)[1]
    a = tok.apply_chat_template(as_dicts, tools=tools, tokenize=False)
    b = tok.apply_chat_template(as_strings, tools=json.loads(json.dumps(tools)), tokenize=False)
    assert a == b and '"arguments": {"door": "red"}' in a
