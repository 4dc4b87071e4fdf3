"""Faults: a flaky teacher endpoint, and a DAgger run killed with SIGKILL mid-round."""

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import JSONHandler, serve

from sftbc.envs import eval_seeds, make_env
from sftbc.teachers import CachedTeacher, OpenAITeacher, OracleTeacher, TeacherError, to_openai
from sftbc.types import Context, Episode, Message

T = 3
FAULTS = ["500", "429", "bad_json", "no_choices", "drop", "timeout"]


class OracleServer(JSONHandler):
    """/v1/chat/completions answering as the maze oracle (it finds the episode's seed from the opening
    message), after injecting this context's fault on its first `fails` attempts."""

    fails, timeout = 1, 1.0
    attempts: dict = {}
    fault: dict = {}  # context -> its fault: the n-th context seen gets FAULTS[n % 6]
    log: list = []
    lock = threading.Lock()
    broken: set = set()  # contexts that always get a 500

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self.reply({"error": "not found"}, 404)
        body = self.body()
        msgs = [Message.from_dict(m) for m in body["messages"]]
        key = json.dumps(body["messages"], sort_keys=True)
        with OracleServer.lock:
            n = OracleServer.attempts[key] = OracleServer.attempts.get(key, 0) + 1
            OracleServer.log.append((key, time.time()))
            fault = OracleServer.fault.setdefault(key, FAULTS[len(OracleServer.fault) % len(FAULTS)])
        if key in OracleServer.broken:
            return self.reply({"error": "broken"}, 500)
        if n <= OracleServer.fails:
            if fault == "500":
                return self.reply({"error": "internal"}, 503)
            if fault == "429":
                return self.reply({"error": "slow down"}, 429, {"Retry-After": "0.3"})
            if fault == "bad_json":
                return self.reply(b'{"id": "x", "choices": [{"mess')
            if fault == "no_choices":
                return self.reply({"id": "x", "object": "chat.completion"})
            if fault == "drop":
                self.close_connection = True
                return  # no answer at all: the client sees the connection drop
            time.sleep(OracleServer.timeout + 0.5)  # "timeout": the client gave up; nobody reads the answer
            return
        seeds = [*range(200), *eval_seeds(50)]  # the training seeds a small run uses, and the held-out ones
        seed = next(s for s in seeds if make_env("maze", T).reset(s)[0][0].content == msgs[0].content)
        label = OracleTeacher().label([Context(tuple(msgs), tuple(body["tools"]), Episode("maze", T, seed))])[0]
        call = label.call
        msg = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}]}
        self.reply({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})


@pytest.fixture
def oracle_server():
    OracleServer.attempts, OracleServer.fault, OracleServer.log, OracleServer.broken, OracleServer.fails = \
        {}, {}, [], set(), 1
    url, httpd = serve(OracleServer)
    yield url
    httpd.shutdown()


def teacher_states(seeds=range(4)):
    from sftbc.rollout import rollout

    return [s.context for t in rollout("maze", T, list(seeds), OracleTeacher(), beta=1.0) for s in t.steps]


def flaky_teacher(url, **kw):
    return OpenAITeacher(url, "oracle", timeout=OracleServer.timeout, backoff=0.01, **kw)


def test_every_fault_is_retried_and_the_labels_are_right(oracle_server):
    ctxs = teacher_states()
    teacher = flaky_teacher(oracle_server, max_retries=2)
    assert teacher.label(ctxs) == OracleTeacher().label(ctxs)
    assert set(OracleServer.fault.values()) == set(FAULTS)  # every kind of fault was met, and survived
    assert all(n == 2 for n in OracleServer.attempts.values()) and teacher.queries == len(ctxs)
    assert teacher.tokens == 15 * len(ctxs)
    # a 429's Retry-After is honoured
    for key in (k for k, f in OracleServer.fault.items() if f == "429"):
        t = [ts for k, ts in OracleServer.log if k == key]
        assert t[1] - t[0] >= 0.3


def test_a_spent_retry_budget_is_a_clear_error_and_keeps_the_labels_already_obtained(oracle_server, tmp_path):
    ctxs = teacher_states()
    OracleServer.fails = 0
    path = tmp_path / "label_cache.jsonl"
    bad = ctxs[5]
    OracleServer.broken = {json.dumps(to_openai(bad.messages), sort_keys=True)}
    with pytest.raises(TeacherError, match=r"127\.0\.0\.1.*gave up after 3 attempts.*InternalServerError"):
        CachedTeacher(flaky_teacher(oracle_server, max_retries=2), path).label(ctxs)
    assert len(path.read_text().splitlines()) == len(ctxs) - 1  # every other label is on disk
    OracleServer.broken, before = set(), len(OracleServer.log)
    again = CachedTeacher(flaky_teacher(oracle_server, max_retries=2), path)
    assert again.label(ctxs) == OracleTeacher().label(ctxs)
    assert len(OracleServer.log) - before == 1 and again.hits == len(ctxs) - 1  # only the missing one is asked


def test_a_non_retryable_answer_fails_at_once(oracle_server):
    teacher = OpenAITeacher(oracle_server.replace("/v1", "/nowhere"), "oracle", timeout=2, backoff=0.01)
    with pytest.raises(TeacherError, match="not retryable.*NotFoundError"):
        teacher.label(teacher_states([0])[:1])


def _cli(tmp_path, tiny_path, name, *extra):
    args = [f"runs_dir={tmp_path}", f"name={name}", f"model={tiny_path}", "collect.horizons=[4]",
            "collect.labels_per_horizon=32", "dagger.rounds=2", "train.epochs=1", "train.min_steps=0", "lora.rank=4", "eval.horizons=[4]",
            "eval.episodes=4", "eval.max_new_tokens=24"]
    return [sys.executable, "-m", "sftbc.cli", "dagger", *args, *extra]


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _kill_when(cmd, ready, what: str):
    """Start `cmd`, SIGKILL it the moment `ready()` holds; fail if it finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.002)
        pytest.fail(f"the run finished before it was {what}")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigkill_during_rollout_and_during_training_then_resume_gives_the_same_run(tmp_path, tiny_path):
    from test_dagger import rows

    subprocess.run(_cli(tmp_path, tiny_path, "whole"), check=True, capture_output=True)
    run = tmp_path / "killed"
    r0, r1 = run / "round-000", run / "round-001"
    cache = run / "label_cache.jsonl"
    seen = {}

    def mid_rollout():  # round 1's student is labelled turn by turn, its data not yet saved
        if (r0 / "metrics.json").exists():
            seen.setdefault("after_round_0", _lines(cache))
            return _lines(cache) > seen["after_round_0"] and not (r1 / "data").exists()
        return False

    _kill_when(_cli(tmp_path, tiny_path, "killed"), mid_rollout, "in round 1's rollout")
    assert not (r1 / "metrics.json").exists()
    _kill_when(_cli(tmp_path, tiny_path, "killed", "--resume"),
               lambda: (r1 / "data" / "state.json").exists() and not (r1 / "adapter").exists(), "training round 1")
    assert not (r1 / "metrics.json").exists() and (r0 / "metrics.json").exists()
    subprocess.run(_cli(tmp_path, tiny_path, "killed", "--resume"), check=True, capture_output=True)
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("whole", "killed"))
    assert rows(run / "data") == rows(tmp_path / "whole" / "data")
    assert len(b["rounds"]) == len(a["rounds"]) == 3 and b["eval"] == a["eval"]
    assert b["label_cache"]["hits"] > 0  # the labels paid for before the kills were not asked again


@pytest.mark.slow
def test_a_dagger_run_against_a_flaky_endpoint_records_exactly_the_oracles_labels(oracle_server, tmp_path, tiny_path):
    from test_dagger import config, rows

    from sftbc.dagger import run_dagger

    run_dagger(config(tmp_path, tiny_path, "name=oracle", "dagger.rounds=1"))
    flaky = run_dagger(config(tmp_path, tiny_path, "name=flaky", "dagger.rounds=1", "teacher.kind=openai",
                              f"teacher.base_url={oracle_server}", "teacher.model=oracle",
                              f"teacher.timeout={OracleServer.timeout}", "teacher.max_retries=3"))
    assert set(OracleServer.fault.values()) == set(FAULTS)  # every state's first request failed somehow
    assert rows(tmp_path / "flaky" / "data") == rows(tmp_path / "oracle" / "data")
    assert flaky["teacher_labels"] == 24
