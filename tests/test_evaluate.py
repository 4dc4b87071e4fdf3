import json

from sftbc.envs import make_env
from sftbc.evaluate import first_mistake, horizon_metrics
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
    # the second episode errs at steps 1-3 and agrees at its last; this context offers no tools, so its
    # first mistake is a call to an unknown tool: malformed
    assert {k: m.pop(k) for k in ("first_mistake_mean", "mistakes_after_first_mean", "recovery_rate", "rejoin_rate")} \
        == {"first_mistake_mean": 1.0, "mistakes_after_first_mean": 2.0, "recovery_rate": 0.0, "rejoin_rate": 1.0}
    assert m.pop("first_mistakes") == {"malformed": 1, "ended_early": 0, "did_not_end": 0, "wrong_tool": 0,
                                       "wrong_arguments": 0}
    per_episode = m.pop("per_episode")
    assert m == {"horizon": 2, "episodes": 2, "success_rate": 0.5, "mistakes_mean": 1.5, "eps": 0.25,
                 "eps_steps": 4, "steps_mean": 3.0, "tool_errors": 2, "step_limit_rate": 0.5}
    # what a comparison recomputes its intervals from: each episode's outcome
    assert per_episode == [{"seed": 0, "success": True, "steps": 2, "stop": "answer", "mistakes": 0,
                            "first_mistake": None, "first_mistake_kind": None},
                           {"seed": 0, "success": False, "steps": 4, "stop": "step_limit", "mistakes": 3,
                            "first_mistake": 1, "first_mistake_kind": "malformed"}]


def test_without_a_teacher_only_what_needs_none_is_measured():
    go = tool_call("go", door="red")
    own = [traj([(go, None)], True), traj([(go, None), (go, None)], False, tool_errors=1)]
    m = horizon_metrics(2, own, None)
    assert [(e["mistakes"], e["first_mistake"]) for e in m.pop("per_episode")] == [(None, None), (None, None)]
    assert m == {"horizon": 2, "episodes": 2, "success_rate": 0.5, "steps_mean": 1.5, "tool_errors": 1,
                 "step_limit_rate": 0.0}


def played(T: int, seed: int, choose) -> Trajectory:
    """A calc episode in which the student plays `choose(i, label)` at step i and the oracle labels every state."""
    env, ep = make_env("calc", T), Episode("calc", T, seed)
    msgs, tools = env.reset(seed)
    msgs, steps = list(msgs), []
    for i in range(env.max_steps):
        label = env.oracle_action()
        action = choose(i, label)
        steps.append(Step(Context(tuple(msgs), tuple(tools), ep), action, label, "student", student_action=action))
        r = env.step(action)
        msgs += [action, *r.messages]
        if r.done:
            return Trajectory(ep, tuple(steps), tuple(msgs), tuple(tools), r.info["success"], "answer")
    return Trajectory(ep, tuple(steps), tuple(msgs), tuple(tools), False, "step_limit")


def odd_start() -> int:
    """A calc seed whose start value is odd: the oracle's first call is add(n=k)."""
    return next(s for s in range(50) if played(3, s, lambda i, label: label).steps[0].label.tool_calls[0].name == "add")


def test_the_first_mistake_is_found_and_classified_from_the_actions_alone():
    odd = odd_start()
    at = lambda step, wrong: (lambda i, label: wrong(label) if i == step else label)
    k = lambda label: label.tool_calls[0].arguments["n"]
    cases = {
        None: played(3, odd, lambda i, label: label),
        "malformed": played(3, odd, at(0, lambda label: Message("assistant", "the value is odd, so add"))),
        "ended_early": played(3, odd, at(0, lambda label: tool_call("submit", value="7"))),
        "wrong_tool": played(3, odd, at(0, lambda label: tool_call("half"))),
        "wrong_arguments": played(3, odd, at(0, lambda label: tool_call("add", n=str(int(k(label)) + 2)))),
        "did_not_end": played(3, odd, at(2, lambda label: tool_call("undo"))),  # the oracle submits at step 2
    }
    for kind, t in cases.items():
        assert (first_mistake(t) or (None, None))[1] == kind, kind
    # the env refuses these calls (an error observation), but the student chose a real tool: what the
    # choice was, not "malformed" (a hand count on the demo found `back(door=...)` counted as malformed)
    two = lambda label: Message("assistant", tool_calls=(*label.tool_calls, *label.tool_calls))
    for kind, wrong in [("wrong_tool", lambda label: tool_call("half", n="3")),  # half takes no arguments
                        ("wrong_arguments", lambda label: tool_call("add")),  # add without its n
                        ("malformed", lambda label: tool_call("double", n="3")),  # not a tool
                        ("malformed", two)]:
        assert first_mistake(played(3, odd, at(0, wrong)))[1] == kind, kind
    assert first_mistake(cases["did_not_end"])[0] == 2 and first_mistake(cases["wrong_tool"])[0] == 0


def test_recovery_is_told_apart_from_compounding():
    odd = odd_start()
    # a wrong add at step 0, then the oracle's own way back (undo) and on: a recovery
    recovered = played(3, odd, lambda i, label: tool_call("add", n="99") if i == 0 else label)
    # the wrong add, then adding again and again until the step limit: compounding
    lost = played(3, odd, lambda i, label: tool_call("add", n="99"))
    m = horizon_metrics(3, [recovered, lost], None)
    assert recovered.success and not lost.success and recovered.steps[1].label.tool_calls[0].name == "undo"
    assert m["recovery_rate"] == 0.5 and m["rejoin_rate"] == 0.5 and m["first_mistake_mean"] == 1.0
    assert m["mistakes_after_first_mean"] == (0 + sum(not s.agrees for s in lost.steps[1:])) / 2
    assert m["first_mistakes"]["wrong_arguments"] == 2


def test_kept_episodes_read_back_with_the_first_mistake_marked(tmp_path, capsys):
    from types import SimpleNamespace

    import sftbc.evaluate as ev
    from sftbc.cli import main

    odd = odd_start()
    good = played(3, odd, lambda i, label: label)
    bad = played(3, odd, lambda i, label: tool_call("add", n="99") if i >= 1 else label)  # adds where it should halve
    cfg = SimpleNamespace(env="calc", eval=SimpleNamespace(teacher_metrics=True, episodes=2, horizons=[3], keep_episodes=1))
    # evaluate as a run does, with its rollouts replaced by the two episodes above (one per held-out seed)
    fake = lambda env, T, seeds, teacher, student, beta, shadow=False, desc=None: [bad, good] if not shadow else None
    original = ev.rollout
    try:
        ev.rollout = fake
        rows = ev.evaluate(cfg, None, None, eps=False, keep=tmp_path / "cell" / "episodes.jsonl")
    finally:
        ev.rollout = original
    [kept] = (tmp_path / "cell" / "episodes.jsonl").read_text().splitlines()  # keep_episodes=1: the failure first
    record = json.loads(kept)
    assert record["success"] is False and record["first_mistake"] == 2 and record["first_mistake_kind"] == "wrong_tool"
    assert len(record["steps"]) == len(bad.steps) and rows[0]["episodes"] == 2
    assert main(["show", str(tmp_path / "cell"), "--failed", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 failed episodes" in out and "first mistake at step 2: wrong_tool" in out
    marked = next(line for line in out.splitlines() if "<- first mistake" in line)
    assert out.count("<- first mistake") == 1 and "teacher: half()" in marked and 'student: add(n="99")' in out

    # the same episodes as a static page, failures first, the mistakes in red, the first one in bold
    from html.parser import HTMLParser

    from sftbc.show import html_page, load_episodes

    class Spans(HTMLParser):
        def __init__(self):
            super().__init__()
            self.style, self.spans, self.title = "", [], ""

        def handle_starttag(self, tag, attrs):
            self.style = dict(attrs).get("style", "") if tag == "span" else self.style

        def handle_data(self, data):
            self.spans.append((self.style, data))

    page = Spans()
    page.feed(html_page(load_episodes(tmp_path / "cell") + [json.loads(kept) | {"success": True, "seed": 7}], "cell"))
    text = "".join(d for _, d in page.spans)
    assert text.index("== seed") < text.index("failed") < text.index("solved")  # the failure first
    firsts = [style for style, d in page.spans if "<- first mistake" in d]
    assert len(firsts) == 2 and all("font-weight: bold" in st and "color" in st for st in firsts)
