import math

import pytest

from sftbc.rollout import Student, rollout, teacher_acts
from sftbc.teachers import OracleTeacher


def test_demonstrations_are_all_teacher():
    trajs = rollout("maze", 4, list(range(10)), OracleTeacher())
    assert all(t.success and t.stop_reason == "answer" and len(t.steps) == 4 for t in trajs)
    assert all(s.actor == "teacher" and s.agrees and s.student_action is None for t in trajs for s in t.steps)


def test_beta_coin_rate_is_within_binomial_bounds():
    n, beta = 20000, 0.3
    hits = sum(teacher_acts(7, seed, turn, beta) for seed in range(1000) for turn in range(20))
    sd = math.sqrt(n * beta * (1 - beta))
    assert abs(hits - n * beta) < 4 * sd
    assert all(teacher_acts(0, s, 0, 1.0) for s in range(50)) and not any(teacher_acts(0, s, 0, 0.0) for s in range(50))


def test_mixed_rollout_records_labels_everywhere_and_is_reproducible(tiny):
    model, tok = tiny
    student = Student(model, tok, max_new_tokens=32)
    seeds = list(range(6))
    a = rollout("maze", 3, seeds, OracleTeacher(), student, beta=0.5, coin_seed=3)
    b = rollout("maze", 3, seeds, OracleTeacher(), student, beta=0.5, coin_seed=3)
    assert [t.messages for t in a] == [t.messages for t in b]
    oracle = OracleTeacher()
    for t in a:
        for turn, s in enumerate(t.steps):
            assert s.actor == ("teacher" if teacher_acts(3, t.seed, turn, 0.5) else "student")
            assert s.label == oracle.label([s.context])[0]  # the stored label is the teacher's action there
            if s.actor == "student":
                assert s.action == s.student_action
            else:
                assert s.action == s.label


def test_shadowed_rollout_asks_the_student_at_every_teacher_state(tiny):
    model, tok = tiny
    trajs = rollout("calc", 3, [0, 1], OracleTeacher(), Student(model, tok, max_new_tokens=32), beta=1.0, shadow=True)
    steps = [s for t in trajs for s in t.steps]
    assert len(steps) == 6 and all(s.student_action is not None and s.actor == "teacher" for s in steps)


def test_label_drafts_leave_every_rollout_unchanged(lm_teacher, monkeypatch):
    """The student acting alone, and mixed with the teacher and shadowing it, labelled by the oracle
    (it mostly disagrees: the drafts are rejected) and by an LM teacher that is the student itself (the
    drafts are its own turns, kept): the same trajectories, student actions included, as decoding
    without drafts, and no more forwards."""
    from sftbc.decode import BatchedChat
    from sftbc.models import load_model, load_tokenizer
    from sftbc.teachers import HFTeacher

    student = Student(load_model(lm_teacher), load_tokenizer(lm_teacher), max_new_tokens=32)
    forward = BatchedChat._forward
    calls = []
    monkeypatch.setattr(BatchedChat, "_forward", lambda self, *a, **k: calls.append(self) or forward(self, *a, **k))

    def play(teacher):
        calls.clear()
        out = [rollout(env, 3, list(range(4)), teacher, student, beta=beta, shadow=shadow, coin_seed=1)
               for env in ("maze", "calc") for beta, shadow in ((0.0, False), (0.5, True))]
        return out, sum(chat.model is student.model for chat in calls)  # the student's forwards

    teachers = {"oracle": OracleTeacher, "itself": lambda: HFTeacher(lm_teacher, max_new_tokens=32)}
    drafted = {name: play(make()) for name, make in teachers.items()}
    monkeypatch.setattr(BatchedChat, "draft", lambda self, action: [])
    for name, make in teachers.items():
        plain, n_plain = play(make())
        got, n_drafted = drafted[name]
        assert [[(t.steps, t.messages) for t in r] for r in got] == [[(t.steps, t.messages) for t in r] for r in plain], name
        # a rejected draft rides along with the token decoded anyway: never an extra forward
        assert n_drafted < n_plain if name == "itself" else n_drafted <= n_plain, name
    kept = [s for r in drafted["itself"][0] for t in r for s in t.steps if s.student_action is not None]
    assert sum(s.student_action == s.label for s in kept) > len(kept) / 2


def test_student_rollouts_need_a_student():
    with pytest.raises(ValueError, match="student"):
        rollout("maze", 2, [0], OracleTeacher(), beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        rollout("maze", 2, [0], OracleTeacher(), beta=1.5)


def test_dart_noise_executes_random_valid_calls_but_keeps_the_clean_label():
    p, oracle = 0.3, OracleTeacher()
    trajs = rollout("maze", 8, list(range(150)), oracle, noise=p, coin_seed=1)
    steps = [s for t in trajs for s in t.steps]
    # the coin is flipped at every teacher turn except the code room (nothing valid to perturb to there)
    flips = [s for s in steps if s.context.messages[-1].content.count("doors") or len(s.context.messages) > 1]
    noisy = [s for s in steps if s.actor == "noise"]
    sd = math.sqrt(len(flips) * p * (1 - p))
    assert abs(len(noisy) - p * len(flips)) < 4 * sd
    assert all(not s.action.content and s.action.tool_calls[0].name in ("go", "back") for s in noisy)
    for s in steps[:300]:
        assert s.label == oracle.label([s.context])[0]
    # perturbed episodes still recover: the oracle's labels lead back, so every episode ends in the code
    assert sum(t.success for t in trajs) / len(trajs) > 0.5 and any(not s.agrees for s in noisy)


def test_label_budget_is_exact_and_cuts_the_episodes_that_overflow_it():
    teacher = OracleTeacher()
    # 7 episodes advance in lockstep: 3 turns cost 21 labels, the 4th turn has room for 5 of the 7
    trajs = rollout("maze", 4, list(range(7)), teacher, max_labels=26)
    assert teacher.queries == 26 == sum(len(t.steps) for t in trajs)
    assert [t.stop_reason for t in trajs] == ["answer"] * 5 + ["budget"] * 2
    assert [len(t.steps) for t in trajs] == [4] * 5 + [3] * 2 and not any(t.success for t in trajs[5:])
    # a budget smaller than one turn leaves out the episodes it never reached
    assert [t.seed for t in rollout("maze", 4, list(range(7)), OracleTeacher(), max_labels=3)] == [0, 1, 2]


def test_collect_ends_the_budget_on_whole_episodes_even_when_they_run_long(tmp_path):
    from sftbc.bc import collect
    from sftbc.config import load_config

    # DART's recoveries make episodes longer than T: the waves still finish all but at most one
    cfg = load_config(None, ["collect.horizons=[6]", "collect.labels_per_horizon=100", "collect.noise=0.3"])
    teacher = OracleTeacher()
    trajs, next_seeds, spent = collect(cfg, teacher)
    assert teacher.queries == 100 == sum(len(t.steps) for t in trajs)
    assert sum(t.stop_reason == "budget" for t in trajs) <= 1 and trajs[-2].stop_reason != "budget"
    assert max(len(t.steps) for t in trajs) > 6  # recoveries did make episodes longer than T
    assert [t.seed for t in trajs] == list(range(len(trajs))) and next_seeds == {6: len(trajs)}
    assert spent == {6: 0}  # the oracle reads no tokens
    again, _, _ = collect(cfg, OracleTeacher(), first_seeds=next_seeds)  # the next round continues the seeds
    assert again[0].seed == len(trajs)
