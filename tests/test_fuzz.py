"""Model output is untrusted input: random text and random tool calls never raise, are never executed,
and always become an error observation (or a valid call, answered normally)."""

import json
import os

from hypothesis import HealthCheck, given, settings, strategies as st

from sftbc.envs import ENVS, make_env
from sftbc.render import CALL_CLOSE, CALL_OPEN, parse_action
from sftbc.types import Message, ToolCall

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)
tool_names = st.sampled_from(["go", "back", "submit", "add", "mul", "answer", "read", "__import__", "eval",
                              "os.system", ""]) | st.text(max_size=12)
# what a model might put between the call tags: JSON of any shape, broken JSON, huge or deeply nested payloads
call_bodies = st.one_of(
    st.builds(lambda n, a: json.dumps({"name": n, "arguments": a}), tool_names, json_values),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.integers(0, 5000).map(lambda d: "[" * d + "]" * d),  # nesting deeper than json's recursion limit
    st.integers(0, 3000).map(lambda d: '{"name": "go", "arguments": ' + '{"a": ' * d + "1" + "}" * d + "}"),
    st.integers(1, 20_000).map(lambda n: json.dumps({"name": "go", "arguments": {"door": "x" * n}})),
)
generations = st.lists(st.one_of(st.text(max_size=80), call_bodies.map(lambda b: CALL_OPEN + b + CALL_CLOSE),
                                 st.just(CALL_OPEN), st.just("<|im_end|>")), max_size=4).map("".join)


def _run_everywhere(action: Message) -> list:
    """Step every built-in environment with the action, from a fresh episode; returns the results."""
    out = []
    for name in ENVS:
        env = make_env(name, 3)
        env.reset(1)
        r = env.step(action)
        assert r.messages and all(m.role == "tool" and isinstance(m.content, str) for m in r.messages)
        if "error" in r.info:
            assert not r.done and r.messages[0].content.startswith("error:")
        out.append(r)
    return out


@SETTINGS
@given(generations)
def test_any_generated_text_parses_without_raising_and_steps_every_env(text):
    cwd = sorted(os.listdir("."))
    action = parse_action(text)
    assert action.role == "assistant"
    _run_everywhere(action)
    assert sorted(os.listdir(".")) == cwd  # nothing written next to us


@SETTINGS
@given(tool_names, st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_any_tool_call_is_answered_never_raised(name, arguments):
    try:
        call = ToolCall(name, arguments)
    except ValueError:
        return  # an empty name is rejected where the call is built (parse_action keeps such text as content)
    _run_everywhere(Message(role="assistant", tool_calls=(call,)))


@SETTINGS
@given(st.lists(st.builds(ToolCall, st.sampled_from(["go", "back", "submit", "add"]),
                          st.dictionaries(st.sampled_from(["door", "code", "a", "b", "x"]), json_values, max_size=3)),
                min_size=2, max_size=4))
def test_several_calls_in_one_turn_are_one_error(calls):
    for r in _run_everywhere(Message(role="assistant", tool_calls=tuple(calls))):
        assert r.info.get("error")
