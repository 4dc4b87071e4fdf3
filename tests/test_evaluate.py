from sftbc.evaluate import horizon_metrics
from sftbc.types import Context, Episode, Message, Step, Trajectory, tool_call

EP = Episode("maze", 2, 0)
CTX = Context((Message("user", "task"),), (), EP)


def traj(pairs, success, shadow=False, tool_errors=0):
    """pairs: (executed-or-shadowed action, label) per step; label None: no teacher was asked."""
    steps, msgs = [], [Message("user", "task")]
    for a, label in pairs:
        if shadow:
            steps.append(Step(CTX, label, label, "teacher", student_action=a))
            msgs += [label, Message("tool", "ok")]
        else:
            steps.append(Step(CTX, a, label, "student", student_action=a))
            msgs += [a, Message("tool", "ok")]
    return Trajectory(EP, tuple(steps), tuple(msgs[:-1]), (), success, "answer", tool_errors)


def test_metrics_count_what_they_say():
    go, back = tool_call("go", door="red"), tool_call("back")
    own = [traj([(go, go), (go, go)], True), traj([(go, back), (go, back), (go, back), (back, back)], False, tool_errors=2)]
    expert = [traj([(go, go), (back, go)], True, shadow=True), traj([(go, go), (go, go)], True, shadow=True)]
    m = horizon_metrics(2, own, expert)
    assert m == {"horizon": 2, "episodes": 2, "success_rate": 0.5, "mistakes_mean": 1.5, "eps": 0.25,
                 "eps_steps": 4, "steps_mean": 3.0, "tool_errors": 2}


def test_without_a_teacher_only_what_needs_none_is_measured():
    go = tool_call("go", door="red")
    own = [traj([(go, None)], True), traj([(go, None), (go, None)], False, tool_errors=1)]
    assert horizon_metrics(2, own, None) == {"horizon": 2, "episodes": 2, "success_rate": 0.5, "steps_mean": 1.5,
                                             "tool_errors": 1}
