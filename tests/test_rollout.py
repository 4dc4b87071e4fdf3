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


def test_student_rollouts_need_a_student():
    with pytest.raises(ValueError, match="student"):
        rollout("maze", 2, [0], OracleTeacher(), beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        rollout("maze", 2, [0], OracleTeacher(), beta=1.5)
