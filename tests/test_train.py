import pytest
import torch
from transformers import AutoModelForCausalLM

from sftbc.data import per_step_rows, to_dataset, to_examples
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher
from sftbc.train import TREE_ATTENTION, Example, collate, token_loss, train, tree_mask


def relabelled():
    """DART-noised trajectories: executed actions that often differ from the teacher's labels."""
    t = OracleTeacher()
    return to_dataset(rollout("maze", 6, list(range(4)), t, noise=0.5, coin_seed=1)
                      + rollout("calc", 4, [0, 1], t, noise=0.5, coin_seed=1))


def per_step_examples(ds, tok):
    """The usual SFT data for relabelled trajectories: one row per label, its whole context repeated."""
    rows = [{"messages": r["prompt"] + r["completion"], "tools": r["tools"], "train_turns": [len(
        [m for m in r["prompt"] if m["role"] == "assistant"])], "step": 0} for r in per_step_rows(ds)]
    return to_examples(rows, tok, branches=False)


def summed_loss_and_grads(model, examples, pad_id):
    model.zero_grad()
    loss = token_loss(model, collate(examples, pad_id), reduction="sum")
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("impl", ["sdpa", "eager", TREE_ATTENTION])
def test_branch_masked_sequences_give_the_per_step_rows_loss_and_gradients(tiny_path, tiny, impl):
    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation=impl)
    ds = relabelled()
    branched, per_step = to_examples(ds, tok), per_step_examples(ds, tok)
    assert sum(len(e.branches) for e in branched) == sum(r["step"] >= 0 for r in ds)  # every disagreement attached
    assert len(branched) == len({(r["env"], r["seed"]) for r in ds}) < len(per_step)
    n_targets = sum(map(sum, (e.loss_mask for e in branched)))
    assert n_targets == sum(map(sum, (e.loss_mask for e in per_step)))
    assert sum(len(e.input_ids) for e in branched) < sum(len(e.input_ids) for e in per_step) / 2
    a, ga = summed_loss_and_grads(model, branched, tok.pad_token_id)
    b, gb = summed_loss_and_grads(model, per_step, tok.pad_token_id)
    assert abs(a - b) / n_targets < 1e-4
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-4, rtol=1e-3), name


def test_a_branch_sees_only_its_prefix():
    # trunk of 5 tokens; branch at offset 5 continues the first 3; branch at offset 7 continues the first 4
    e = Example(list(range(10)), [0] * 10, [(5, 3), (7, 4)])
    batch = collate([e, Example([1, 2], [0, 1])], pad_id=0)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 4, 5, 6]
    mask = tree_mask(batch)
    allowed = mask[0, 0]
    assert allowed[6].nonzero().flatten().tolist() == [0, 1, 2, 5, 6]
    assert allowed[9].nonzero().flatten().tolist() == [0, 1, 2, 3, 7, 8, 9]
    assert allowed[4].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert mask[1, 0, 1].nonzero().flatten().tolist() == [0, 1]  # plain rows stay causal
    (row, positions, keys), = batch["tree"]  # what tree attention recomputes: the branch tokens alone
    assert row == 0 and positions.tolist() == [5, 6, 7, 8, 9] and keys.shape == (5, 10)
    with pytest.raises(ValueError, match="does not continue"):
        Example(list(range(6)), [0] * 6, [(5, 6)])


def test_training_on_branched_relabelled_data_lowers_the_loss(tiny_path, tiny):
    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    examples = to_examples(relabelled(), tok)
    stats = train(model, examples, pad_id=tok.pad_token_id, epochs=1, min_steps=40, lr=3e-3, max_tokens=4096, seed=0,
                  tree_attention=True)
    assert stats["loss_last"] < stats["loss_first"] * 0.5
    assert model.config._attn_implementation == TREE_ATTENTION  # training switched SDPA to the tree kernel
