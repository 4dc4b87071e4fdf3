import json

import pytest
from conftest import JSONHandler, serve

from sftbc.envs import make_env
from sftbc.rollout import rollout
from sftbc.config import TeacherArgs
from sftbc.teachers import HFTeacher, OpenAITeacher, OracleTeacher, make_teacher
from sftbc.types import Context, Episode, Message, tool_call


def contexts_along_a_wrong_path(T=4, seed=0):
    """States of one maze episode where a student took a wrong door first."""
    env = make_env("maze", T)
    msgs, tools = env.reset(seed)
    right = env.oracle_action().call.arguments["door"]
    wrong = next(d for d in sorted(env.rooms[env.stack[-1]][0]) if d != right)
    out = [Context(tuple(msgs), tuple(tools), Episode("maze", T, seed))]
    for a in [tool_call("go", door=wrong), tool_call("back")]:
        msgs = msgs + [a, *env.step(a).messages]
        out.append(Context(tuple(msgs), tuple(tools), Episode("maze", T, seed)))
    return out, right


def test_oracle_labels_states_the_expert_never_visits():
    ctxs, right = contexts_along_a_wrong_path()
    teacher = OracleTeacher()
    assert teacher.label(ctxs) == [tool_call("go", door=right), tool_call("back"), tool_call("go", door=right)]
    assert teacher.queries == 3


class FakeServer(JSONHandler):
    """An OpenAI-compatible /v1/chat/completions that acts like the maze oracle, reading only the text."""

    requests: list = []
    mode = "ok"

    def do_POST(self):
        body = self.body()
        FakeServer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        last = body["messages"][-1]["content"]
        word = last.split('"')[-2]  # the note's quoted door or code
        if ': code "' in last:
            call = {"name": "submit", "arguments": json.dumps({"code": word})}
        else:
            call = {"name": "go", "arguments": json.dumps({"door": word})}
        if FakeServer.mode == "bad_json":
            call["arguments"] = "{door: east"
        msg = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "type": "function", "function": call}]}
        # usage as vLLM with prefix caching reports it: 10 tokens a message, all but the last two cached
        n = len(body["messages"])
        usage = {"prompt_tokens": 10 * n, "completion_tokens": 5, "total_tokens": 10 * n + 5,
                 "prompt_tokens_details": {"cached_tokens": 10 * max(0, n - 2)}}
        self.reply({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls"}], "usage": usage})


@pytest.fixture
def server():
    FakeServer.requests, FakeServer.mode = [], "ok"
    url, httpd = serve(FakeServer)
    yield url
    httpd.shutdown()


def test_endpoint_teacher_drives_a_rollout(server, monkeypatch):
    monkeypatch.setenv("SFTBC_TEST_KEY", "sk-secret-123")
    teacher = OpenAITeacher(server, "fake", api_key_env="SFTBC_TEST_KEY", timeout=5, max_retries=0)
    trajs = rollout("maze", 3, [0, 1, 2], teacher, beta=1.0)
    assert all(t.success for t in trajs) and teacher.queries == 9
    # what the server's forward passes processed, cached prompt tokens free: 3 first turns of one message
    # (15 tokens), then 6 turns of two new messages each (25)
    assert teacher.tokens == 3 * 15 + 6 * 25
    req = FakeServer.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-secret-123"
    body = req["body"]
    assert {t["function"]["name"] for t in body["tools"]} == {"go", "back", "submit"}
    asst = [m for m in body["messages"] if m["role"] == "assistant"]
    tool = [m for m in body["messages"] if m["role"] == "tool"]
    assert isinstance(asst[0]["tool_calls"][0]["function"]["arguments"], str)  # OpenAI wants JSON strings
    assert tool[0]["tool_call_id"] == asst[0]["tool_calls"][0]["id"]


def test_endpoint_malformed_arguments_never_raise(server):
    FakeServer.mode = "bad_json"
    teacher = OpenAITeacher(server, "fake", timeout=5, max_retries=0)
    ctxs, _ = contexts_along_a_wrong_path()
    labels = teacher.label(ctxs[:1])
    assert labels[0].role == "assistant" and not labels[0].tool_calls
    env = make_env("maze", 4)
    env.reset(0)
    assert env.step(labels[0]).messages[0].content.startswith("error:")


def test_endpoint_requests_carry_the_configured_sampling(server):
    """teacher.temperature, max_new_tokens (the request's max_tokens) and extra_body, from a config."""
    from sftbc.config import load_config

    cfg = load_config(None, ["teacher.kind=openai", f"teacher.base_url={server}", "teacher.model=fake",
                             "teacher.cache=none", "teacher.temperature=0.7", "teacher.max_new_tokens=64",
                             "teacher.extra_body={chat_template_kwargs: {enable_thinking: false}}"])
    make_teacher(cfg.teacher).label(contexts_along_a_wrong_path()[0][:1])
    body = FakeServer.requests[-1]["body"]
    assert body["temperature"] == 0.7 and body["max_tokens"] == 64
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_hf_teacher_labels_with_a_local_model(tiny_path):
    teacher = HFTeacher(tiny_path, batch_size=2)
    ctxs, _ = contexts_along_a_wrong_path()
    labels = teacher.label(ctxs)
    assert len(labels) == 3 and all(isinstance(m, Message) and m.role == "assistant" for m in labels)
    assert teacher.queries == 3


class ReEncoding(HFTeacher):
    """The same teacher with nothing kept between calls: every state encoded from scratch."""

    def label(self, contexts):
        self.rows = {}
        return super().label(contexts)


def test_hf_teacher_continues_episodes_from_its_cache(tiny_path, lm_teacher):
    from sftbc.rollout import Student
    from sftbc.models import load_model, load_tokenizer

    student = Student(load_model(tiny_path), load_tokenizer(tiny_path), max_new_tokens=16)
    cached, fresh = HFTeacher(lm_teacher, batch_size=3, max_new_tokens=16), ReEncoding(lm_teacher, max_new_tokens=16)
    # beta 0.5: some turns execute the teacher's own generation (kept in its cache), others the student's
    # (the teacher's generation is masked out and the executed action fed instead)
    a = rollout("maze", 4, list(range(8)), cached, student, beta=0.5, coin_seed=1)
    b = rollout("maze", 4, list(range(8)), fresh, student, beta=0.5, coin_seed=1)
    assert {s.actor for t in a for s in t.steps} == {"teacher", "student"}
    assert [s.label for t in a for s in t.steps] == [s.label for t in b for s in t.steps]
    assert [t.messages for t in a] == [t.messages for t in b]
    assert cached.queries == fresh.queries and cached.tokens < fresh.tokens / 2
    # states of episodes it has not followed (another episode, a turn skipped) are encoded from scratch
    ctxs, _ = contexts_along_a_wrong_path()
    assert cached.label(ctxs[::2]) == fresh.label(ctxs[::2])
    assert cached.label(ctxs[2:]) == fresh.label(ctxs[2:])  # the same state again: no tokens to add


def test_hf_teacher_paths_resolve_like_student_paths(tiny_path):
    assert isinstance(make_teacher(TeacherArgs(kind="hf", path=tiny_path)), HFTeacher)
    with pytest.raises(FileNotFoundError, match="/no/such/model"):
        make_teacher(TeacherArgs(kind="hf", path="/no/such/model"))


def test_label_cache_asks_each_state_once_and_survives_a_torn_last_line(tmp_path, tiny_path):
    from sftbc.teachers import CachedTeacher

    ctxs, _ = contexts_along_a_wrong_path()
    path = tmp_path / "cache.jsonl"
    teacher = CachedTeacher(HFTeacher(tiny_path), path)
    first = teacher.label(ctxs + ctxs[:1])  # a repeat inside one batch is asked once too
    assert teacher.inner.queries == 3 and teacher.queries == 4 and teacher.hits == 1
    paid = teacher.inner.tokens
    assert len(path.read_text().splitlines()) == 3
    assert teacher.label(ctxs) == first[:3] and teacher.inner.queries == 3 and teacher.hits == 4
    # hits are charged what the labels cost, so budgets do not depend on what is cached
    assert teacher.tokens == paid + sum(json.loads(x)["tokens"] for x in path.read_text().splitlines()) \
        + json.loads(path.read_text().splitlines()[0])["tokens"]
    assert teacher.saved_tokens == teacher.tokens - paid
    # a crash mid-write leaves a torn last line: it is skipped (that label is asked again), the rest reused
    path.write_text(path.read_text()[:-20])
    again = CachedTeacher(HFTeacher(tiny_path), path)
    assert again.label(ctxs) == first[:3] and again.inner.queries == 1 and again.hits == 2
    third = CachedTeacher(HFTeacher(tiny_path), path)  # the label asked again was written on a line of its own
    assert third.label(ctxs) == first[:3] and third.inner.queries == 0


def test_cached_oracle_labels_equal_fresh_ones(tmp_path):
    from sftbc.teachers import CachedTeacher

    teacher = CachedTeacher(OracleTeacher(), tmp_path / "c.jsonl")
    trajs = rollout("maze", 4, [0, 1, 2], teacher, beta=1.0)
    assert all(t.success for t in trajs) and teacher.hits == 0 and teacher.tokens == 0
    again = rollout("maze", 4, [0, 1, 2], CachedTeacher(OracleTeacher(), tmp_path / "c.jsonl"), beta=1.0)
    assert again == trajs


def smudged_trajectories(T=4, n=40):
    """maze_smudged episodes, played by the oracle with DART noise, that pass a smudged note."""
    trajs = rollout("maze_smudged", T, list(range(n)), OracleTeacher(), noise=0.3)
    out = [t for t in trajs if any(m.role == "tool" and '" or "' in m.content for m in t.messages)]
    assert out, "no episode met a smudged note"
    return out


class Recorder:
    """An inner teacher that keeps what it was shown and answers as the oracle would."""

    def __init__(self):
        self.queries = self.tokens = 0
        self.seen = []

    def label(self, contexts):
        self.seen += contexts
        self.queries, self.tokens = self.queries + len(contexts), self.tokens + 10 * len(contexts)
        return OracleTeacher().label(contexts)


def test_a_privileged_teacher_sees_every_note_clean_and_counts_on_its_inner_teacher(tmp_path):
    from sftbc.envs import privileged_view
    from sftbc.teachers import CachedTeacher, PrivilegedTeacher

    contexts = [s.context for t in smudged_trajectories() for s in t.steps]
    inner = Recorder()
    teacher = PrivilegedTeacher(inner)
    assert teacher.label(contexts) == OracleTeacher().label(contexts)  # the same layout: the same right moves
    assert teacher.queries == inner.queries == len(contexts) and teacher.tokens == 10 * len(contexts)
    smudged = sum('" or "' in m.content for c in contexts for m in c.messages)
    assert smudged and not any('" or "' in m.content for c in inner.seen for m in c.messages)
    for c, shown in zip(contexts, inner.seen):  # the student's actions and episode, only the notes differ
        assert shown.episode == c.episode and shown.tools == c.tools
        assert [m for m in shown.messages if m.role != "tool"] == [m for m in c.messages if m.role != "tool"]
    teacher.tokens = 7  # dist syncs counters by setting them: they land on the inner teacher
    assert inner.tokens == 7
    with pytest.raises(ValueError, match="env 'maze' has no privileged view"):
        privileged_view("maze")
    wrapped = make_teacher(TeacherArgs(kind="oracle", privileged=True), tmp_path)
    assert isinstance(wrapped, CachedTeacher) and isinstance(wrapped.inner, PrivilegedTeacher)


@pytest.mark.parametrize("overrides, key", [(["env=maze"], "needs an env with a privileged view"),
                                            (["teacher.kind=oracle"], "is for LM teachers")])
def test_privileged_config_needs_an_lm_teacher_and_an_env_with_a_view(overrides, key):
    from sftbc.config import ConfigError, load_config

    base = ["env=maze_smudged", "teacher.kind=hf", "teacher.path=x", "teacher.privileged=true"]
    assert load_config(None, base).teacher.privileged
    with pytest.raises(ConfigError, match=f"teacher.privileged {key}"):
        load_config(None, base + overrides)
