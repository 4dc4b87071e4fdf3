import json
import math

import pytest
import torch
from safetensors.torch import load_file
from conftest import JSONHandler, serve

from sftbc.config import ConfigError, load_config
from sftbc.distill import generalized_jsd, run_distill
from sftbc.teachers import HFTeacher
from sftbc.types import Context, Episode, Message


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_loss_and_gradient_equal_trls_generalized_jsd(beta):
    from trl.experimental.gkd import GKDTrainer

    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 7, 50, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(3, 7, 50, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[0, :4] = labels[2, 5:] = -100  # masked positions (prompts, tool outputs, padding)
    keep = labels != -100

    a = student.clone().requires_grad_()
    ours = generalized_jsd(a[keep], torch.log_softmax(teacher[keep], -1), beta=beta)
    b = student.clone().requires_grad_()
    trls = GKDTrainer.generalized_jsd_loss(b, teacher, labels=labels, beta=beta)
    ours.backward(), trls.backward()
    assert abs(ours.item() - trls.item()) < 1e-5
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_top_k_is_the_full_loss_when_k_is_the_vocabulary_and_ignores_the_rest_otherwise():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 20, generator=g), torch.log_softmax(torch.randn(5, 20, generator=g), -1)
    full = generalized_jsd(s, t, beta=1.0)
    logp, idx = t.topk(20, dim=-1)
    assert torch.allclose(generalized_jsd(s, logp, idx, beta=1.0), full, atol=1e-6)
    logp, idx = t.topk(3, dim=-1)
    s2 = s.clone()
    s2.scatter_(1, t.topk(17, dim=-1, largest=False).indices, -50.0)  # move the student's mass off the top 3
    assert torch.allclose(generalized_jsd(s2, logp, idx), generalized_jsd(s, logp, idx), atol=1e-6)


def config(tmp_path, student, teacher, *overrides):
    return load_config(None, [f"runs_dir={tmp_path}", f"model={student}", "teacher.kind=hf", f"teacher.path={teacher}",
                              "teacher.max_new_tokens=24",
                              "collect.horizons=[2]", "distill.iterations=3", "distill.episodes=6", "lora.rank=4",
                              "train.lr=5e-3", "eval.horizons=[2]", "eval.episodes=4", "eval.max_new_tokens=24",
                              *overrides])


def test_a_student_distilled_from_itself_starts_at_zero_loss(tmp_path, tiny_path):
    # LoRA starts at zero, so the student is its teacher: the teacher's batched, padded scoring pass and
    # the student's training forward must agree token for token. (Adam then amplifies the float noise of
    # a zero gradient into real steps, so only the first iteration is exactly 0.)
    m = run_distill(config(tmp_path, tiny_path, tiny_path, "name=self", "distill.iterations=1"))
    assert abs(m["iterations"][0]["loss"]) < 1e-5 and m["iterations"][0]["episodes"] == 6
    assert m["teacher_labels"] == 0  # lam=1: the student plays every episode, the teacher only scores


def test_scores_line_up_with_the_tokens_they_predict(tiny_path, lm_teacher):
    # The log-likelihood the scores give each assistant token equals the SFT loss on the same tokens,
    # sequence by sequence: scored positions and the training loss's shift agree, and batching and padding
    # change nothing.
    from sftbc.distill import score
    from sftbc.rollout import rollout
    from sftbc.teachers import OracleTeacher
    from sftbc.train import collate, token_loss

    teacher = HFTeacher(lm_teacher)
    trajs = rollout("maze", 3, [0, 1, 2, 3], OracleTeacher(), beta=1.0)
    scored = score(teacher, teacher.tok, trajs, top_k=0)
    for ex in scored:
        assert ex.positions and ex.teacher.logp.shape == (len(ex.positions), len(teacher.tok))
        nll = -ex.teacher.logp[range(len(ex.positions)), [ex.input_ids[p + 1] for p in ex.positions]].mean()
        assert abs(nll.item() - token_loss(teacher.model, collate([ex], teacher.tok.pad_token_id)).item()) < 1e-4
    assert teacher.tokens == sum(len(ex.input_ids) for ex in scored)


def test_a_packed_batch_gives_the_padded_batchs_distillation_loss_and_gradients(tiny_path, lm_teacher):
    # train.pack: the episodes share their opening; the scored positions are found in the packed sequence
    from transformers import AutoModelForCausalLM

    from sftbc.distill import distill_loss, score
    from sftbc.rollout import rollout
    from sftbc.teachers import OracleTeacher

    teacher = HFTeacher(lm_teacher)
    scored = score(teacher, teacher.tok, rollout("maze", 3, [0, 1, 2, 3], OracleTeacher(), beta=1.0), top_k=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    out = []
    for packed in (False, True):
        model.zero_grad()
        loss, _ = distill_loss(model, scored, teacher.tok.pad_token_id, beta=0.5, packed=packed)
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = out
    assert a > 0 and abs(a - b) <= 1e-4 * a
    scale = max(g.abs().max().item() for g in ga.values())
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-4 * scale, rtol=1e-3), name


def test_a_privileged_teacher_scores_the_students_tokens_in_its_own_view(tiny_path, lm_teacher):
    # maze_smudged episodes that pass a smudged note: the teacher reads them with every note clean, so
    # its sequences (and the positions of the assistant tokens in them) differ from the student's, but
    # it scores exactly the student's assistant tokens, as it would in a clean episode with those moves.
    from test_teachers import smudged_trajectories

    from sftbc.distill import score
    from sftbc.render import tokenize_conversation, to_chat
    from sftbc.teachers import PrivilegedTeacher

    trajs = smudged_trajectories(T=3)[:3]
    plain, teacher = HFTeacher(lm_teacher), PrivilegedTeacher(HFTeacher(lm_teacher))
    seen, mine = score(teacher, plain.tok, trajs, top_k=0), score(plain, plain.tok, trajs, top_k=0)  # one tokenizer
    for t, ex, ex_plain in zip(trajs, seen, mine):
        ids, mask = tokenize_conversation(plain.tok, to_chat(teacher.view(t)), t.tools)
        assert len(ids) < len(ex.input_ids)  # a clean note is shorter than a smudged one
        assert ex.input_ids == ex_plain.input_ids and ex.positions == ex_plain.positions  # the student's own view
        at = [p for p in range(len(mask) - 1) if mask[p + 1]]
        assert [ids[p + 1] for p in at] == [ex.input_ids[p + 1] for p in ex.positions]
        assert torch.allclose(ex.teacher.logp, plain.score([ids], [at])[0].logp, atol=1e-5)
    assert not all(torch.allclose(a.teacher.logp, b.teacher.logp, atol=1e-3) for a, b in zip(seen, mine))


def test_distillation_runs_its_iterations_curve_and_budget(tmp_path, tiny_path, lm_teacher):
    m = run_distill(config(tmp_path, tiny_path, lm_teacher, "name=d", "distill.iterations=6", "distill.passes=2",
                           "distill.lam=0.5", "distill.curve_every=3", "distill.curve_episodes=2"))
    assert all(it["on_policy"] < it["episodes"] for it in m["iterations"])  # lam=0.5: teacher episodes too
    assert 0 < m["teacher_labels"] <= 6 * 6 * 8  # the teacher's own turns, not the learning-curve evaluations
    assert m["teacher_tokens"] > 0 and m["teacher_tokens"] == m["iterations"][-1]["teacher_tokens"]
    assert [c["iteration"] for c in m["curve"]] == [2, 5]
    saved = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert saved["method"] == "distill" and (tmp_path / "d" / "adapter" / "adapter_config.json").exists()


def test_distillation_does_not_move_the_student_away_from_the_teacher_on_its_own_episodes(tmp_path, tiny_path,
                                                                                          lm_teacher, monkeypatch):
    import sftbc.distill as distill
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    real, first = distill.score, []

    def score(*args):  # keeps iteration 0's scored episodes
        out = real(*args)
        first.extend([] if first else out)
        return out

    monkeypatch.setattr(distill, "score", score)
    run_distill(config(tmp_path, tiny_path, lm_teacher, "name=d", "distill.iterations=6", "distill.passes=2"))
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    pad = distill.load_tokenizer(tiny_path).pad_token_id
    with torch.no_grad():  # the loss on the same scored episodes, before and after distillation
        before = distill.distill_loss(base, first, pad, 1.0)[0].item()
        after = distill.distill_loss(PeftModel.from_pretrained(base, tmp_path / "d" / "adapter"), first, pad, 1.0)[0].item()
    # the base already matches this teacher closely: AdamW's steps of about lr per weight raised each
    # iteration's loss on its own episodes (reverse KL 0.0003 -> 0.008 in six iterations before
    # distill.undo_worse), so each is undone
    assert after <= before


@pytest.mark.parametrize("undo", [True, False])
def test_an_iteration_that_raises_the_loss_on_its_own_episodes_is_undone(tmp_path, tiny_path, lm_teacher, undo):
    # at lr 0.5 every AdamW step moves each weight by about 0.5: the training diverges on the very
    # episodes it fits, so each iteration ends with their loss higher than it began
    m = run_distill(config(tmp_path, tiny_path, lm_teacher, "name=u", "distill.iterations=2", "distill.passes=2",
                           "distill.lr=0.5", f"distill.undo_worse={undo}"))
    lora_b = [v for k, v in load_file(tmp_path / "u" / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
    if undo:  # both undone: the student is where it began, LoRA's zero-initialised B (the base model itself)
        assert all(it["undone"] and it["loss_after"] > it["loss_before"] for it in m["iterations"])
        assert all((b == 0).all() for b in lora_b)
    else:
        assert not any(it["undone"] for it in m["iterations"]) and m["iterations"][0]["loss_before"] is None
        assert any((b != 0).any() for b in lora_b)


def test_a_teacher_token_budget_ends_distillation_within_one_episode(tmp_path, tiny_path, lm_teacher):
    m = run_distill(config(tmp_path, tiny_path, lm_teacher, "name=b", "distill.iterations=50",
                           "collect.teacher_tokens_per_horizon=10000"))
    assert len(m["iterations"]) < 50 and m["iterations"][-2]["teacher_tokens"] < 10000
    scored = [it["teacher_tokens"] - prev["teacher_tokens"] for prev, it in zip(m["iterations"], m["iterations"][1:])]
    episode = max(scored) / min(it["episodes"] for it in m["iterations"][1:-1])  # an episode's scoring pass, roughly
    assert 10000 <= m["teacher_tokens"] < 10000 + episode


def test_within_budget_scores_episodes_in_order_until_the_room_is_spent(tiny_path):
    from sftbc.distill import within_budget
    from sftbc.models import load_tokenizer
    from sftbc.render import tokenize_conversation, to_chat
    from sftbc.rollout import rollout
    from sftbc.teachers import OracleTeacher

    tok = load_tokenizer(tiny_path)
    trajs = rollout("maze", 3, list(range(5)), OracleTeacher(), beta=1.0)
    cost = [len(tokenize_conversation(tok, to_chat(t.messages), t.tools)[0]) for t in trajs]
    assert within_budget(trajs, tok, None) == trajs
    assert within_budget(trajs, tok, 0) == []
    assert within_budget(trajs, tok, cost[0]) == trajs[:1]  # exactly spent: nothing more
    assert within_budget(trajs, tok, cost[0] + 1) == trajs[:2]  # the episode that crosses the room is scored
    assert within_budget(trajs, tok, sum(cost) + 100) == trajs


def test_the_oracle_and_a_foreign_tokenizer_are_refused_before_any_work(tmp_path, tiny_path):
    with pytest.raises(ConfigError, match="teacher.kind"):
        run_distill(load_config(None, [f"runs_dir={tmp_path}", f"model={tiny_path}", "name=o"]))
    assert not (tmp_path / "o").exists()
    teacher = HFTeacher(tiny_path)
    encode = teacher.encode
    import sftbc.distill as distill

    class Foreign(HFTeacher):  # the same model behind a tokenizer that splits one token differently
        def encode(self, text):
            ids = encode(text)
            return ids[:5] + [ids[5] + 1] + ids[6:]

    mp = pytest.MonkeyPatch()
    mp.setattr(distill, "make_teacher", lambda args, run_dir: Foreign(tiny_path))
    with pytest.raises(ValueError, match="tokenizers differ \\(first at token 5"):
        run_distill(config(tmp_path, tiny_path, tiny_path, "name=f"))
    mp.undo()
    assert not (tmp_path / "f").exists()


class VLLMLike(JSONHandler):
    """vLLM's /tokenize, /v1/chat/completions with tools, and /v1/completions with `prompt_logprobs` (the top
    k at every prompt position, plus the prompt's own token where it is not among them), all answered by a
    local HF model."""

    model = tokenizer = hf = None

    def do_POST(self):
        body = self.body()
        if self.path == "/v1/chat/completions":
            msgs = tuple(Message.from_dict(m) for m in body["messages"])
            action = self.hf.label([Context(msgs, tuple(body["tools"]), Episode("maze", 1, 0))])[0]
            msg = {"role": "assistant", "content": action.content or None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in action.tool_calls]}
            return self.reply({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]})
        if self.path == "/tokenize":
            ids = self.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
            return self.reply({"tokens": ids, "count": len(ids), "max_model_len": 2048})
        assert self.path == "/v1/completions", self.path
        ids, k = body["prompt"], body["prompt_logprobs"]
        with torch.no_grad():
            logp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        plp = [None]
        for p in range(1, len(ids)):
            top = logp[p - 1].topk(k)
            entry = {str(t): {"logprob": v, "rank": r + 1, "decoded_token": "?"}
                     for r, (v, t) in enumerate(zip(top.values.tolist(), top.indices.tolist()))}
            entry.setdefault(str(ids[p]), {"logprob": logp[p - 1, ids[p]].item(), "rank": 99, "decoded_token": "?"})
            plp.append(entry)
        self.reply({"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length",
                                 "prompt_logprobs": plp}],
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}})


@pytest.fixture(scope="module")
def served_teacher(lm_teacher):
    from sftbc.models import load_model, load_tokenizer

    VLLMLike.model, VLLMLike.tokenizer = load_model(lm_teacher), load_tokenizer(lm_teacher)
    VLLMLike.hf = HFTeacher(lm_teacher)
    url, httpd = serve(VLLMLike)
    yield url
    httpd.shutdown()


def test_a_served_teacher_scores_like_the_same_model_in_process(served_teacher, lm_teacher):
    from sftbc.rollout import rollout
    from sftbc.teachers import OpenAITeacher, OracleTeacher

    local, served = HFTeacher(lm_teacher), OpenAITeacher(served_teacher, "t", timeout=30, max_retries=0)
    trajs = rollout("maze", 2, [0, 1], OracleTeacher(), beta=1.0)
    seqs = [local.encode(t.messages[0].content) for t in trajs]
    positions = [list(range(3, len(s) - 1)) for s in seqs]
    assert served.encode("note by eve: go") == local.encode("note by eve: go")
    for a, b in zip(served.score(seqs, positions, top_k=5), local.score(seqs, positions, top_k=5)):
        assert torch.equal(a.idx, b.idx) and torch.allclose(a.logp, b.logp, atol=1e-5)
    assert served.tokens == local.tokens == sum(map(len, seqs))
    with pytest.raises(ValueError, match="distill.top_k >= 1"):
        served.score(seqs, positions, top_k=0)


def test_distillation_through_the_http_endpoint_never_writes_the_key(tmp_path, tiny_path, served_teacher, monkeypatch):
    monkeypatch.setenv("SFTBC_TEST_KEY", "sk-do-not-write-me-42")
    m = run_distill(config(tmp_path, tiny_path, "", "name=h", "teacher.kind=openai", f"teacher.base_url={served_teacher}",
                           "teacher.model=t", "teacher.api_key_env=SFTBC_TEST_KEY", "distill.top_k=8",
                           "distill.iterations=2", "distill.lam=1.0", "eval.episodes=2"))
    assert len(m["iterations"]) == 2 and m["teacher_tokens"] > 0 and m["iterations"][0]["loss"] > 0
    files = [p for p in (tmp_path / "h").rglob("*") if p.is_file()]
    assert files and not any(b"sk-do-not-write-me-42" in p.read_bytes() for p in files)


def test_compare_matches_all_four_methods_on_teacher_tokens(tmp_path, tiny_path, lm_teacher):
    from sftbc.compare import run_compare

    cfg = load_config(None, [f"runs_dir={tmp_path}", f"model={tiny_path}", "name=lm", "teacher.kind=hf",
                             f"teacher.path={lm_teacher}", "compare.methods=[bc,dart,dagger,distill]",
                             "compare.horizons=[1]", "compare.teacher_tokens=3000", "dagger.rounds=1",
                             "dagger.round_eval_episodes=2", "distill.episodes=4", "distill.curve_every=1",
                             "distill.curve_episodes=2", "train.epochs=1", "train.min_steps=0", "lora.rank=4", "eval.episodes=2",
                             "eval.max_new_tokens=16", "teacher.max_new_tokens=16"])
    out = run_compare(cfg)
    d = tmp_path / "lm"
    results = json.loads((d / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["bc", "dart", "dagger", "distill"]
    for r in results["rows"]:  # every budget is spent, in whole episodes or iterations
        assert r["teacher_tokens"] >= 3000 - cfg.dagger.rounds, r
    curves = {method: per_seed["0"] for method, per_seed in results["learning_curves"]["1"].items()}  # seed 0's
    assert len(curves["bc"]) == 1 and len(curves["dagger"]) == 2 and len(curves["distill"]) >= 2
    assert [p["teacher_tokens"] for p in curves["distill"]] == sorted(p["teacher_tokens"] for p in curves["distill"])
    assert (d / "success_vs_teacher_tokens.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Success vs teacher tokens (T = 1)" in (d / "report.md").read_text()
    assert out["rows"] == results["rows"]


def test_sft_share_starts_distillation_from_daggers_round_0(tmp_path, tiny_path, lm_teacher):
    # Half the budget on demonstrations + BC is exactly DAgger's round 0 with two rounds: same episodes,
    # labels, cost and adapter; distillation then spends the rest from that student.
    from sftbc.compare import run_compare
    from sftbc.data import load_dataset_dir

    cfg = load_config(None, [f"runs_dir={tmp_path}", f"model={tiny_path}", "name=s", "teacher.kind=hf",
                             f"teacher.path={lm_teacher}", "compare.methods=[dagger,distill]", "compare.horizons=[2]",
                             "compare.teacher_tokens=4000", "dagger.rounds=1", "distill.sft_share=0.5",
                             "distill.episodes=4", "distill.curve_every=1", "distill.curve_episodes=2",
                             "train.epochs=1", "train.min_steps=0", "lora.rank=4", "eval.episodes=2", "eval.max_new_tokens=16",
                             "teacher.max_new_tokens=16"])
    run_compare(cfg)
    dagger, distill = tmp_path / "s" / "dagger-T002-s0", tmp_path / "s" / "distill-T002-s0"
    assert load_dataset_dir(distill / "sft" / "data").to_list() == load_dataset_dir(dagger / "round-000" / "data").to_list()
    ours, theirs = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (distill / "sft", dagger / "round-000"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    m = json.loads((distill / "metrics.json").read_text())
    round0 = json.loads((dagger / "round-000" / "metrics.json").read_text())
    assert m["sft"]["teacher_tokens"] == round0["teacher_tokens"] >= 2000
    assert m["teacher_tokens"] >= 4000 and m["iterations"]  # the rest went to distillation
    assert m["curve"][0]["sft"] and m["curve"][0]["teacher_tokens"] == m["sft"]["teacher_tokens"]
    assert m["teacher_labels"] >= m["sft"]["teacher_labels"] > 0


@pytest.mark.parametrize("T", [1, 4])
def test_a_teacher_token_budget_ends_within_an_episode_of_it(tiny_path, T):
    # The untrained teacher never answers: every episode runs to its step limit (2T + 4 turns)
    from sftbc.bc import collect
    from sftbc.rollout import rollout

    cfg = load_config(None, [f"collect.horizons=[{T}]", "collect.teacher_tokens_per_horizon=6000",
                             "collect.episodes=3", "teacher.kind=hf", f"teacher.path={tiny_path}"])
    teacher = HFTeacher(tiny_path, max_new_tokens=8)
    trajs, next_seeds, spent = collect(cfg, teacher)
    assert [t.seed for t in trajs] == list(range(next_seeds[T]))  # consecutive seeds, none lost
    assert spent == {T: teacher.tokens} and len(trajs) > 3  # more than the first wave
    assert all(t.stop_reason == "step_limit" for t in trajs)  # whole episodes, none cut
    one = HFTeacher(tiny_path, max_new_tokens=8)  # the last episode alone: the budget overshoots by less than it
    rollout("maze", T, [trajs[-1].seed], one, beta=1.0)
    assert 6000 <= teacher.tokens < 6000 + one.tokens
    # a second call on the same teacher (a DAgger round) sizes its first wave at what the teacher was paid
    # per label before, so a budget of 1.5 episodes takes 2 of them, not an opening wave of 4
    budget = one.tokens * 3 // 2
    more, _, spent = collect(cfg, teacher, first_seeds=next_seeds, token_budgets={T: budget})
    assert len(more) == 2 and budget <= spent[T] < budget + one.tokens


def test_distill_lr_overrides_train_lr(tmp_path, tiny_path, lm_teacher):
    # distillation's own (constant) lr, with BC's train.lr left for the other methods of a comparison
    own = run_distill(config(tmp_path, tiny_path, lm_teacher, "name=own", "distill.iterations=2", "distill.lr=1e-3"))
    shared = run_distill(config(tmp_path, tiny_path, lm_teacher, "name=shared", "distill.iterations=2", "train.lr=1e-3"))
    default = run_distill(config(tmp_path, tiny_path, lm_teacher, "name=default", "distill.iterations=2"))
    # the loss on iteration 0's episodes after its training (kept or undone, it was trained at that lr)
    losses = [[(it["loss"], it["loss_after"]) for it in m["iterations"]] for m in (own, shared, default)]
    assert losses[0] == losses[1] and losses[0][0][1] != losses[2][0][1]


def test_token_diagnostics_on_known_distributions():
    from sftbc.distill import token_diagnostics

    uniform = torch.zeros(3, 8)
    teacher = torch.log_softmax(torch.tensor([[4.0] + [0.0] * 7] * 3), -1)
    same = token_diagnostics(teacher, teacher)
    assert abs(same["reverse_kl"]) < 1e-6 and abs(same["entropy"] - (-(teacher.exp() * teacher).sum(-1)[0]).item()) < 1e-5
    flat = token_diagnostics(uniform, teacher)  # a uniform student u: entropy log 8, KL(u || t) = -log 8 - mean_i t_i
    assert abs(flat["entropy"] - math.log(8)) < 1e-5
    assert abs(flat["reverse_kl"] - (-math.log(8) - teacher[0].mean()).item()) < 1e-5
    top2 = token_diagnostics(uniform, teacher[:, :2], torch.tensor([[0, 1]] * 3))  # over a served teacher's top k
    assert abs(top2["entropy"] - math.log(2)) < 1e-5


def test_the_collapse_warning_fires_on_a_collapsing_curve_and_not_on_a_healthy_one(capsys):
    from sftbc.distill import ValidationWatch

    def watch(successes):
        w = ValidationWatch(drop=0.3)
        news = [w.see({"iteration": i, "teacher_tokens": 1000 * i, "success_rate": x}) for i, x in enumerate(successes)]
        return w, news

    # the collapse of the issue: 0.75 after SFT, up to 1.00, then 0.20 and 0.00
    w, news = watch([0.75, 0.65, 1.00, 0.95, 0.20, 0.00])
    assert news == [True, False, True, False, False, False] and w.best["iteration"] == 2
    assert [(c["iteration"], c["success_rate"], c["best"]) for c in w.collapses] == [(4, 0.2, 1.0), (5, 0.0, 1.0)]
    assert capsys.readouterr().out.count("warning: distillation is collapsing") == 2
    w, _ = watch([0.65, 0.90, 0.95, 0.70, 0.95])  # healthy: dips of 0.25 are noise, not a collapse
    assert w.collapses == [] and "warning" not in capsys.readouterr().out


def test_a_collapsing_run_says_so_and_keep_best_ends_on_the_best_validated_student(tmp_path, tiny_path, lm_teacher,
                                                                                   monkeypatch):
    import sftbc.distill as distill

    real, scripted = distill.evaluate, iter([0.5, 0.9, 0.1])  # validation success of the 3 curve points

    def evaluate(cfg, student, teacher, episodes=None, eps=True, split="eval", keep=None):
        rows = real(cfg, student, teacher, episodes, eps=False, split=split, keep=keep)
        if split == "validation":  # the validation curve is scripted; the held-out evaluation is real
            rows = [r | {"success_rate": next(scripted)} for r in rows]
        return rows

    monkeypatch.setattr(distill, "evaluate", evaluate)
    m = run_distill(config(tmp_path, tiny_path, lm_teacher, "name=k", "distill.iterations=3", "distill.curve_every=1",
                           "distill.curve_episodes=2", "distill.keep_best=true"))
    assert [c["success_rate"] for c in m["curve"]] == [0.5, 0.9, 0.1]
    assert m["collapses"] == [{"iteration": 2, "teacher_tokens": m["curve"][2]["teacher_tokens"], "success_rate": 0.1,
                               "best": 0.9}]
    assert m["kept"]["iteration"] == 1 and m["kept"]["success_rate"] == 0.9
    d = tmp_path / "k"
    best, final = (load_file(p / "adapter_model.safetensors") for p in (d / "best" / "adapter", d / "adapter"))
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert m["iterations"][0]["entropy"] > 0 and m["iterations"][0]["grad_norm"] > 0  # the per-iteration diagnostics
    assert (d / "episodes.jsonl").exists() and len(list((d / "curve").glob("point-*.jsonl"))) == 3  # episodes kept


@pytest.mark.parametrize("aggregate", [0.0, 1.0])
def test_each_iteration_trains_on_its_fresh_episodes_and_aggregate_times_as_many_earlier_ones(
        tmp_path, tiny_path, lm_teacher, monkeypatch, aggregate):
    import sftbc.distill as distill

    real, seen = distill.make_batches, []

    def make_batches(examples, max_tokens, rng):  # what each pass trains on
        seen.append([id(e) for e in examples])
        return real(examples, max_tokens, rng)

    monkeypatch.setattr(distill, "make_batches", make_batches)
    m = run_distill(config(tmp_path, tiny_path, lm_teacher, f"distill.aggregate={aggregate}", "distill.iterations=3",
                           "distill.episodes=2", "distill.passes=2"))
    iters = seen[::2]  # the first of each iteration's two passes
    assert seen[1::2] == iters  # every pass trains on the same episodes
    fresh = [ids[:2] for ids in iters]  # an iteration's own 2 scored episodes come first
    assert [it["aggregated"] for it in m["iterations"]] == ([0, 2, 2] if aggregate else [0, 0, 0])
    for i, ids in enumerate(iters):
        earlier = {x for f in fresh[:i] for x in f}
        assert len(set(ids)) == len(ids) and set(ids[2:]) <= earlier  # distinct, and only from earlier iterations


@pytest.mark.parametrize("restart", [True, False])
def test_restart_gives_each_iteration_its_own_warm_up_and_decay(tmp_path, tiny_path, lm_teacher, monkeypatch, restart):
    import sftbc.distill as distill

    real, made = distill.make_optimizer, []

    def make_optimizer(model, lr, total_steps, warmup_steps):  # record the lr of every update of every optimizer
        step, lrs = real(model, lr, total_steps, warmup_steps), []
        made.append((total_steps, lrs))
        return lambda loss: lrs.append((update := step(loss))["lr"]) or update

    monkeypatch.setattr(distill, "make_optimizer", make_optimizer)
    m = run_distill(config(tmp_path, tiny_path, lm_teacher, f"distill.restart={restart}", "distill.iterations=2",
                           "distill.episodes=4", "distill.passes=4", "distill.aggregate=0", "distill.lr=4e-3"))
    if restart:  # one optimizer per iteration, its schedule (warm-up, cosine to 0) over exactly that iteration's steps
        assert len(made) == 2
        for total, lrs in made:
            warm = max(1, int(total * 0.05))
            assert lrs == pytest.approx([4e-3 * min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * s / total)))
                                         for s in range(total)])
    else:  # one optimizer for the run: constant after its warm-up
        assert len(made) == 1 and made[0][0] is None and made[0][1][-1] == pytest.approx(4e-3)
    assert m["train"]["steps"] == sum(len(lrs) for _, lrs in made)
