"""The copy probe: which argument values it scores, and that its figures separate a model that
cannot copy from one that writes every value."""

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sftbc.envs import eval_seeds
from sftbc.models import load_model
from sftbc.probe import copied_spans, copy_probe, warn_if_no_copy
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher

ORDERS = "examples/orders/orders.py:Orders"


def oracle_episode(env, T):
    return rollout(env, T, eval_seeds(1), OracleTeacher(), None)[0]


def test_spans_are_the_copied_values_inside_the_calls(tiny):
    _, tok = tiny
    traj = oracle_episode(ORDERS, 2)
    text, spans = copied_spans(tok, traj)
    calls = [c for m in traj.messages if m.role == "assistant" for c in m.tool_calls]
    # every call copies: the customer from the task or the last refund, the order number from find's answer
    assert [text[a:b] for a, b in spans] == [str(next(iter(c.arguments.values()))) for c in calls]
    assert all(text.rfind("<tool_call>", 0, a) > text.rfind("<|im_end|>", 0, a) for a, _ in spans)  # inside a call
    traj = oracle_episode("maze", 1)
    text, spans = copied_spans(tok, traj)
    assert [text[a:b] for a, b in spans] == [traj.messages[-2].tool_calls[0].arguments["code"]]


class Teller(torch.nn.Module):
    """A 'model' that puts its mass on the token that really comes next: it writes every value."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[0, torch.arange(input_ids.shape[1] - 1), input_ids[0, 1:]] = 30.0
        return type("Out", (), {"logits": logits})


def test_probe_separates_an_untrained_model_from_one_that_copies(tiny, tmp_path):
    _, tok = tiny
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "untrained")
    untrained = copy_probe(load_model(str(tmp_path / "untrained")), tok, "maze")
    assert untrained.values == 40 and untrained.nll > math.log(8) and untrained.accuracy < 0.2
    assert not untrained.copies and "maze" in untrained.warning()
    perfect = copy_probe(Teller(len(tok)), tok, "maze")
    assert perfect.values == untrained.values and perfect.nll < 1e-3 and perfect.accuracy == 1.0 and perfect.copies


def test_an_env_without_an_oracle_has_nothing_to_score(tiny):
    model, tok = tiny
    score = copy_probe(model, tok, "tests/userenv.py:Counter")  # no oracle
    assert score.values == 0 and not score.copies and "nothing to score" in score.line()


def test_sftbc_base_prints_the_probe_and_warns_when_the_base_does_not_copy(monkeypatch, tmp_path, capsys):
    from sftbc.cli import main

    monkeypatch.setattr("sftbc.models.CACHE_DIR", tmp_path)
    small = ["tiny.episodes=20", "tiny.max_horizon=4", "tiny.vocab_size=512", "tiny.hidden=64", "tiny.layers=2",
             "tiny.heads=2", "tiny.epochs=0.5", "tiny.max_tokens=4096"]
    assert main(["base", *small]) == 0
    out, err = capsys.readouterr()
    assert "copy probe, maze: 40 copied values" in out and "copy probe, calc:" in out
    assert "warning: the base copies" in err and "model=smollm2-135m" in err  # 20 episodes teach no copying
    path = out.splitlines()[0]
    warn_if_no_copy(path, "maze_rivals")  # what a run on this base prints before training: once per process
    warn_if_no_copy(path, "maze_rivals")
    err = capsys.readouterr().err
    assert err.count("warning: the base copies") == 1 and "in maze_rivals" in err
