from sftbc.evaluate import horizon_metrics
from sftbc.types import Context, Episode, Message, Step, Trajectory, tool_call

EP = Episode("maze", 2, 0)
CTX = Context((Message("user", "task"),), (), EP)


def traj(pairs, success, shadow=False):
    """pairs: (executed-or-shadowed action, label) per step."""
    steps, msgs = [], [Message("user", "task")]
    for a, label in pairs:
        if shadow:
            steps.append(Step(CTX, label, label, "teacher", student_action=a))
            msgs += [label, Message("tool", "ok")]
        else:
            steps.append(Step(CTX, a, label, "student", student_action=a))
            msgs += [a, Message("tool", "ok")]
    return Trajectory(EP, tuple(steps), tuple(msgs[:-1]), (), success, "answer")


def test_metrics_count_what_they_say():
    go, back = tool_call("go", door="red"), tool_call("back")
    own = [traj([(go, go), (go, go)], True), traj([(go, back), (go, back), (go, back), (back, back)], False)]
    expert = [traj([(go, go), (back, go)], True, shadow=True), traj([(go, go), (go, go)], True, shadow=True)]
    m = horizon_metrics(2, own, expert)
    assert m == {"horizon": 2, "episodes": 2, "success_rate": 0.5, "mistakes_mean": 1.5, "eps": 0.25,
                 "eps_steps": 4, "steps_mean": 3.0}
