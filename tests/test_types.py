import pytest

from sftbc.types import Context, Episode, Message, Step, ToolCall, Trajectory, same_action, tool_call


def test_message_round_trip_keeps_dict_arguments():
    m = tool_call("go", door="red")
    d = m.to_dict()
    assert d["tool_calls"][0]["function"]["arguments"] == {"door": "red"}
    assert Message.from_dict(d) == m


def test_json_string_arguments_are_decoded():
    d = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "go", "arguments": '{"door": "red"}'}}]}
    assert Message.from_dict(d) == tool_call("go", door="red")
    assert Message.from_dict(tool_call("go", door="red").to_dict(json_arguments=True)) == tool_call("go", door="red")


@pytest.mark.parametrize("bad, match", [
    ({"role": "robot", "content": "x"}, "role"),
    ({"role": "user", "content": 3}, "content"),
    ({"role": "tool", "content": "", "tool_calls": [{"function": {"name": "go", "arguments": {}}}]}, "tool_calls"),
    ({"role": "assistant", "tool_calls": [{"function": {"name": "go", "arguments": "{not json"}}]}, "JSON"),
    ({"role": "assistant", "tool_calls": [{"function": {"name": "", "arguments": {}}}]}, "name"),
    ({"content": "no role"}, "role"),
])
def test_invalid_messages_fail_on_construction(bad, match):
    with pytest.raises(ValueError, match=match):
        Message.from_dict(bad)


def test_step_and_trajectory_validate():
    ep = Episode("maze", 1, 0)
    ctx = Context((Message("user", "hi"),), (), ep)
    with pytest.raises(ValueError, match="actor"):
        Step(ctx, tool_call("back"), tool_call("back"), "robot")
    with pytest.raises(ValueError, match="assistant"):
        Step(ctx, Message("user", "x"), tool_call("back"), "teacher")
    with pytest.raises(ValueError, match="end before an assistant"):
        Context((Message("user", "hi"), tool_call("back")), (), ep)
    with pytest.raises(ValueError, match="horizon"):
        Episode("maze", 0, 0)
    step = Step(ctx, tool_call("back"), tool_call("back"), "teacher")
    with pytest.raises(ValueError, match="assistant messages"):
        Trajectory(ep, (step,), (Message("user", "hi"),), (), True, "answer")
    with pytest.raises(ValueError, match="stop_reason"):
        Trajectory(ep, (step,), (Message("user", "hi"), tool_call("back")), (), True, "tired")


def test_same_action_ignores_surrounding_text():
    a = Message("assistant", "thinking...", (ToolCall("go", {"door": "red"}),))
    assert same_action(a, tool_call("go", door="red"))
    assert not same_action(a, tool_call("go", door="blue"))
    assert not same_action(Message("assistant", "hello"), tool_call("back"))
