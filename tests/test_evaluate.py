from sftbc.evaluate import horizon_metrics
from sftbc.types import Context, Episode, Message, Step, Trajectory, tool_call

EP = Episode("maze", 2, 0)
CTX = Context((Message("user", "task"),), (), EP)


def traj(pairs, success, shadow=False, tool_errors=0, stop="answer"):
    """pairs: (executed-or-shadowed action, label) per step; label None: no teacher was asked."""
    steps, msgs = [], [Message("user", "task")]
    for a, label in pairs:
        if shadow:
            steps.append(Step(CTX, label, label, "teacher", student_action=a))
            msgs += [label, Message("tool", "ok")]
        else:
            steps.append(Step(CTX, a, label, "student", student_action=a))
            msgs += [a, Message("tool", "ok")]
    return Trajectory(EP, tuple(steps), tuple(msgs[:-1]), (), success, stop, tool_errors)


def test_metrics_count_what_they_say():
    go, back = tool_call("go", door="red"), tool_call("back")
    own = [traj([(go, go), (go, go)], True),
           traj([(go, back), (go, back), (go, back), (back, back)], False, tool_errors=2, stop="step_limit")]
    expert = [traj([(go, go), (back, go)], True, shadow=True), traj([(go, go), (go, go)], True, shadow=True)]
    m = horizon_metrics(2, own, expert)
    per_episode = m.pop("per_episode")
    assert m == {"horizon": 2, "episodes": 2, "success_rate": 0.5, "mistakes_mean": 1.5, "eps": 0.25,
                 "eps_steps": 4, "steps_mean": 3.0, "tool_errors": 2, "step_limit_rate": 0.5}
    # what a comparison recomputes its intervals from: each episode's outcome
    assert per_episode == [{"seed": 0, "success": True, "steps": 2, "stop": "answer", "mistakes": 0},
                           {"seed": 0, "success": False, "steps": 4, "stop": "step_limit", "mistakes": 3}]


def test_without_a_teacher_only_what_needs_none_is_measured():
    go = tool_call("go", door="red")
    own = [traj([(go, None)], True), traj([(go, None), (go, None)], False, tool_errors=1)]
    m = horizon_metrics(2, own, None)
    assert [e["mistakes"] for e in m.pop("per_episode")] == [None, None]
    assert m == {"horizon": 2, "episodes": 2, "success_rate": 0.5, "steps_mean": 1.5, "tool_errors": 1,
                 "step_limit_rate": 0.0}
