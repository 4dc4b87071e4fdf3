import random

import pytest

from sftbc.envs import ENVS, EVAL_SEED_OFFSET, eval_seeds, make_env, train_seeds
from sftbc.types import Message, tool_call

HORIZONS = [1, 2, 5, 16, 32]


def play(env, policy, seed):
    msgs, tools = env.reset(seed)
    log = [m.content for m in msgs]
    for _ in range(env.max_steps):
        r = env.step(policy())
        log += [m.content for m in r.messages]
        if r.done:
            return r.info["success"], log
    return False, log


@pytest.mark.parametrize("name", sorted(ENVS))
@pytest.mark.parametrize("T", HORIZONS)
def test_oracle_solves_in_exactly_T_decisions(name, T):
    for seed in range(20):
        env = make_env(name, T)
        env.reset(seed)
        for t in range(T):
            r = env.step(env.oracle_action())
            assert r.done == (t == T - 1), f"{name} T={T} seed={seed}: done at decision {t + 1}"
        assert r.info["success"]


@pytest.mark.parametrize("name", sorted(ENVS))
def test_same_seed_same_episode_and_seeds_matter(name):
    a, b, c = make_env(name, 6), make_env(name, 6), make_env(name, 6)
    assert play(a, a.oracle_action, 3) == play(b, b.oracle_action, 3)
    assert a.reset(3)[0] != c.reset(4)[0]


def beside_plain_maze(name, seeds):
    """Yields (plain maze, variant, the variant's intro) with both reset to each seed in turn."""
    plain, variant = make_env("maze", 8), make_env(name, 8)
    for seed in seeds:
        plain.reset(seed)
        yield plain, variant, variant.reset(seed)[0][0].content


def test_rival_maze_is_the_plain_layout_with_a_wrong_untrusted_note_in_every_room():
    orders = set()
    for plain, rivals, intro in beside_plain_maze("maze_rivals", range(20)):
        assert (rivals.rooms, rivals.path, rivals.code) == (plain.rooms, plain.path, plain.code)  # same expert
        assert intro.count("note by") == 2
        for room, (doors, signer, note) in rivals.rooms.items():
            notes = rivals._notes(room)
            rival = [n for n in notes if n != (signer, note)]
            assert len(notes) == 2 and len(rival) == 1
            assert rival[0][0] != rivals.trusted and rival[0][1] != note
            assert not doors or rival[0][1].split('"')[1] in doors  # a real door, just not the trusted one
            orders.add(notes[0] == (signer, note))
    assert orders == {True, False}  # the trusted note is shown first or second


def test_fixed_trust_maze_is_the_plain_layout_with_dee_as_the_only_trusted_signer():
    untrusted = set()
    for plain, fixed, intro in beside_plain_maze("maze_fixed", range(30)):
        assert "Trust only notes by dee;" in intro
        assert (fixed.path, fixed.code) == (plain.path, plain.code)
        assert {r: v[0] for r, v in fixed.rooms.items()} == {r: v[0] for r, v in plain.rooms.items()}  # same doors
        for room, (_, signer, note) in fixed.rooms.items():
            assert note == plain.rooms[room][2]  # same notes, so the same expert
            assert (signer == "dee") == (room in fixed.path)
            untrusted |= {signer} - {"dee"}
    assert len(untrusted) >= 5  # the others still vary: only the trusted name is fixed


def test_the_trail_maze_is_the_smudged_maze_with_every_note_clean():
    # maze_trail is maze_smudged's privileged view: the same episode per seed, nothing smudged
    env, trail = make_env("maze_smudged", 16), make_env("maze_trail", 16)
    smudged = 0
    for seed in range(40):
        env.reset(seed), trail.reset(seed)
        assert (trail.rooms, trail.path, trail.code, trail.smudged) == (env.rooms, env.path, env.code, set())
        smudged += len(env.smudged)
        for room in env.rooms:
            if room not in env.smudged:
                assert trail._describe(room) == env._describe(room)
            else:
                assert trail._describe(room).endswith(f'go "{env.rooms[room][2].split(chr(34))[1]}".')
    assert smudged > 0


def test_smudged_maze_blurs_some_notes_marks_the_rooms_off_the_trail_and_locks_a_door_taken_off_it():
    fixed, env = make_env("maze_fixed", 32), make_env("maze_smudged", 32)
    smudged = recovered = 0
    for seed in range(60):
        fixed.reset(seed)
        env.reset(seed)
        assert (env.rooms, env.path, env.code) == (fixed.rooms, fixed.path, fixed.code)  # same expert
        smudged += len(env.smudged)
        assert env.path[-1] not in env.smudged  # the code is always readable
        for room in env.rooms:
            text = env._describe(room)
            assert text.endswith("Off the trail.") == (room not in env.path)
            assert (" or " in text) == (room in env.smudged)  # a smudged note names every door of its room
        if not env.smudged:
            continue
        while env.stack[-1] not in env.smudged:  # the oracle walks to the first smudged room
            env.step(env.oracle_action())
        here = env.stack[-1]
        right = env.oracle_action().tool_calls[0].arguments["door"]
        wrong = next(d for d in env.rooms[here][0] if d != right)
        assert env.step(tool_call("go", door=wrong)).messages[0].content.endswith("Off the trail.")
        assert env.oracle_action() == tool_call("back")
        back_in = env.step(tool_call("back")).messages[0].content
        assert back_in.endswith(f'doors "{right}"; note by dee (trusted: dee): go "{right}".')  # the wrong door locked
        env.step(tool_call("go", door=right))
        env.step(tool_call("back"))  # back along the trail: that door stays open
        assert set(env.rooms[here][0]) == {right}
        recovered += 1
    assert 0.03 < smudged / (60 * 31) < 0.07 and recovered >= 30


def test_eval_seeds_are_disjoint_from_training_seeds():
    assert set(train_seeds(1000)).isdisjoint(eval_seeds(1000))
    assert min(eval_seeds(5)) == EVAL_SEED_OFFSET
    with pytest.raises(ValueError):
        train_seeds(10, start=EVAL_SEED_OFFSET - 5)


MALFORMED = [
    Message("assistant", "I think we should go east"),  # no tool call at all
    tool_call("fly", door="red"),  # unknown tool
    tool_call("go", direction="red"),  # wrong argument name
    tool_call("go"),  # missing argument
    tool_call("go", door="purple"),  # not a door here
    tool_call("add", n="__import__('os')"),  # not an integer (and never evaluated)
    tool_call("half", x="1"),  # unexpected argument
    Message("assistant", "", (tool_call("back").tool_calls[0], tool_call("back").tool_calls[0])),  # two calls
    tool_call("go", door=["red"]),  # wrong type
]


@pytest.mark.parametrize("name", sorted(ENVS))
@pytest.mark.parametrize("action", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_calls_are_error_observations_not_exceptions(name, action):
    env = make_env(name, 4)
    env.reset(0)
    before = env.oracle_action()
    r = env.step(action)
    assert not r.done
    assert r.messages[0].role == "tool" and r.messages[0].content.startswith("error:")
    assert "error" in r.info
    assert env.oracle_action() == before, "a wasted step must not change the state"


@pytest.mark.parametrize("name", sorted(ENVS))
def test_episode_ends_at_step_limit_with_failure(name):
    env = make_env(name, 3)
    assert env.max_steps == 2 * 3 + 4
    ok, log = play(env, lambda: Message("assistant", "hmm"), 0)
    assert not ok and len([line for line in log if line.startswith("error")]) == env.max_steps


def test_maze_oracle_backs_out_of_untrusted_rooms_and_recovers():
    env = make_env("maze", 5)
    env.reset(11)
    right = env.oracle_action().call.arguments["door"]
    wrong = next(d for d in sorted(env.rooms[env.stack[-1]][0]) if d != right)
    r = env.step(tool_call("go", door=wrong))
    assert "note by " + env.trusted not in r.messages[0].content
    detour = env.oracle_action()  # untrusted note: the oracle does not follow it
    assert detour == tool_call("back")
    wrong2 = sorted(env.rooms[env.stack[-1]][0])[0]
    env.step(tool_call("go", door=wrong2))  # two rooms deep: two backs
    assert env.oracle_action() == tool_call("back")
    env.step(tool_call("back"))
    assert env.oracle_action() == tool_call("back")
    env.step(tool_call("back"))
    assert env.oracle_action() == tool_call("go", door=right)
    for _ in range(5):
        r = env.step(env.oracle_action())
        if r.done:
            break
    assert r.info["success"]


def test_calc_oracle_undoes_wrong_operations():
    env = make_env("calc", 6)
    env.reset(5)
    good = env.oracle_action()
    wrong = tool_call("add", n="2") if good.call.name == "half" else tool_call("add", n="100")
    env.step(wrong)
    assert env.oracle_action() == tool_call("undo")
    env.step(tool_call("undo"))
    assert env.oracle_action() == good
    # submitting the right number after a wrong path still fails: the path matters
    env2 = make_env("calc", 2)
    env2.reset(5)
    env2.step(tool_call("add", n="2") if env2.oracle_action().call.name == "half" else tool_call("add", n="100"))
    r = env2.step(tool_call("submit", value=str(env2.correct[-1])))
    assert r.done and not r.info["success"]


def test_decisions_depend_on_observations():
    """Two maze episodes with the same task text can need different moves after the first tool result."""
    env = make_env("maze", 3)
    moves = set()
    for seed in range(40):
        env.reset(seed)
        env.step(env.oracle_action())
        moves.add(env.oracle_action().call.arguments["door"])
    assert len(moves) >= 6


@pytest.mark.parametrize("name", sorted(ENVS))
def test_random_actions_are_valid_non_final_moves_and_the_oracle_recovers(name):
    rng = random.Random(0)
    for seed in range(30):
        env = make_env(name, 6)
        env.reset(seed)
        for _ in range(rng.randint(1, 5)):  # wander off at random ...
            action = env.random_action(rng)
            if action is None:
                break
            r = env.step(action)
            assert not r.done and "error" not in r.info, f"{name} seed={seed}: {action} was not a valid move"
        for _ in range(env.max_steps):  # ... and the oracle brings the episode home from wherever it is
            r = env.step(env.oracle_action())
            if r.done:
                break
        assert r.done and r.info["success"]


def test_maze_code_room_at_T1_has_no_random_move():
    env = make_env("maze", 1)
    env.reset(0)
    assert env.random_action(random.Random(0)) is None


@pytest.mark.parametrize("name", ["maze", "maze_fixed", "maze_smudged", "maze_rivals"])
def test_random_walks_of_valid_moves_never_raise(name):
    # off-trail rooms lead back into each other: a sampled student walked maze_smudged round such a loop
    # (seed 0, T = 32) and backed out through a door that had already locked, which raised StopIteration
    for seed in range(300):
        rng = random.Random(seed)
        env = make_env(name, rng.choice([2, 8, 32]))
        env.reset(seed)
        for _ in range(80):
            doors = sorted(env.rooms[env.stack[-1]][0])
            go = doors and rng.random() > 0.4
            result = env.step(tool_call("go", door=rng.choice(doors)) if go else tool_call("back"))
            assert len(result.messages) == 1
            if result.done:
                break
