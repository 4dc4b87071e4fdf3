import pytest
import torch
from transformers import AutoModelForCausalLM

from sftbc.data import per_step_rows, to_dataset, to_examples
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher
from sftbc.pack import PACKED, pack
from sftbc.train import Example, collate, token_loss, train, tree_mask


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


def summed_loss_and_grads(model, batch):
    model.zero_grad()
    loss = token_loss(model, batch, reduction="sum")
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_loss_and_grads(model, batch, reference, n_targets: int):
    a, ga = summed_loss_and_grads(model, batch)
    b, gb = summed_loss_and_grads(model, reference)
    assert abs(a - b) / n_targets < 1e-4
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-4, rtol=1e-3), name


@pytest.mark.parametrize("impl", ["sdpa", "eager", "packed"])
def test_branch_masked_sequences_give_the_per_step_rows_loss_and_gradients(tiny_path, tiny, impl):
    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="eager" if impl == "eager" else "sdpa")
    ds = relabelled()
    branched, per_step = to_examples(ds, tok), per_step_examples(ds, tok)
    assert sum(len(e.branches) for e in branched) == sum(r["step"] >= 0 for r in ds)  # every disagreement attached
    assert len(branched) == len({(r["env"], r["seed"]) for r in ds}) < len(per_step)
    n_targets = sum(map(sum, (e.loss_mask for e in branched)))
    assert n_targets == sum(map(sum, (e.loss_mask for e in per_step)))
    assert sum(len(e.input_ids) for e in branched) < sum(len(e.input_ids) for e in per_step) / 2
    batch = pack(branched) if impl == "packed" else collate(branched, tok.pad_token_id)
    assert_same_loss_and_grads(model, batch, collate(per_step, tok.pad_token_id), n_targets)


def test_packing_per_step_rows_forwards_each_distinct_token_once(tiny_path, tiny):
    """TRL's per-step rows repeat each context once per label; their trie is no bigger than the branched
    examples (which repeat one token per branch), and trains to the same loss and gradients."""
    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    ds = relabelled()
    branched, per_step = to_examples(ds, tok), per_step_examples(ds, tok)
    packed = pack(per_step)
    distinct = len({tuple(e.input_ids[: i + 1]) for e in per_step for i in range(len(e.input_ids))})
    assert packed["input_ids"].shape[1] == distinct <= sum(len(e.input_ids) for e in branched)
    assert len(packed["tgt"]) == sum(map(sum, (e.loss_mask for e in per_step)))
    assert_same_loss_and_grads(model, packed, collate(per_step, tok.pad_token_id), len(packed["tgt"]))


def test_a_shared_prefix_is_forwarded_once_and_trained_once_per_row(tiny_path, tiny):
    """Pretraining rows (every token a target) that open alike: the shared tokens are one segment of
    the packed sequence, their loss terms count once per row, and the logits at every position of
    every row are the padded batch's."""
    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    rows = [Example(ids, [1] * len(ids))
            for ids in ([5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 11], [5, 6, 7, 12, 13, 14, 15], [5, 6])]
    packed = pack(rows)
    assert packed["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert packed["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 4, 3, 4, 5, 6]
    assert len(packed["tgt"]) == sum(len(r.input_ids) - 1 for r in rows)  # [5, 6]'s target 6 counts on every row
    dense = collate(rows, tok.pad_token_id)
    assert_same_loss_and_grads(model, packed, dense, len(packed["tgt"]))
    with torch.no_grad():
        full = model(**{k: dense[k] for k in ("input_ids", "attention_mask")}).logits
        model.set_attn_implementation(PACKED)
        flat = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], plan=packed["plan"]).logits[0]
    for r, (e, where) in enumerate(zip(rows, packed["where"])):
        assert torch.allclose(flat[where], full[r, : len(e.input_ids)], atol=1e-5)


def attended(plan, n: int) -> list[set[int]]:
    """The packed keys each of the n packed tokens attends to under `plan`, read off its index tensors."""
    grid = [] if plan.paths is None else [set(p[: j + 1]) for p in plan.paths.tolist() for j in range(len(p))]
    if plan.near_queries is not None:
        grid += [{k for k, ok in zip(keys, row) if ok}
                 for keys, m in zip(plan.near_keys.tolist(), plan.near_allowed[:, 0].tolist()) for row in m]
    if plan.far_queries is not None:
        grid += [set(row.nonzero().flatten().tolist()) for row in plan.far_allowed[0, 0]]
    return [grid[t] for t in plan.take.tolist()]


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
    with pytest.raises(ValueError, match="does not continue"):
        Example(list(range(6)), [0] * 6, [(5, 6)])
    # packed, every token attends to the packed copies of exactly the tokens the dense mask allows
    packed = pack([e])
    where = packed["where"][0].tolist()
    keys = attended(packed["plan"], packed["input_ids"].shape[1])
    for i, w in enumerate(where):
        assert keys[w] == {where[j] for j in allowed[i].nonzero().flatten().tolist()}, i


def test_packed_attention_matches_the_dense_mask_on_relabelled_data(tiny):
    """The same check on real relabelled examples, several to a batch: trunks, branches, shared prefixes."""
    _, tok = tiny
    examples = to_examples(relabelled(), tok)
    dense = collate(examples, tok.pad_token_id)
    mask = tree_mask(dense) if "tree" in dense else None
    packed = pack(examples)
    keys = attended(packed["plan"], packed["input_ids"].shape[1])
    assert packed["input_ids"].shape[1] < sum(len(e.input_ids) for e in examples)  # the shared openings, once
    for r, (e, where) in enumerate(zip(examples, packed["where"])):
        where = where.tolist()
        assert packed["input_ids"][0, where].tolist() == e.input_ids
        assert packed["position_ids"][0, where].tolist() == dense["position_ids"][r, : len(where)].tolist()
        for i, w in enumerate(where):
            dense_keys = mask[r, 0, i, : len(where)].nonzero().flatten().tolist() if mask is not None else range(i + 1)
            assert keys[w] == {where[j] for j in dense_keys}, (r, i)


def test_training_on_branched_relabelled_data_lowers_the_loss(tiny_path, tiny):
    _, tok = tiny
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    examples = to_examples(relabelled(), tok)
    stats = train(model, examples, pad_id=tok.pad_token_id, epochs=1, min_steps=40, lr=3e-3, max_tokens=4096, seed=0,
                  packed=True)
    assert stats["loss_last"] < stats["loss_first"] * 0.5
    assert model.config._attn_implementation == PACKED  # training switched the model to packed attention
    # which, given no plan, is SDPA with its masks: a padded batch gets the same logits as before the switch
    batch = collate(examples[:3], tok.pad_token_id)
    with torch.no_grad():
        mine = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        model.set_attn_implementation("sdpa")
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    assert torch.equal(mine[real], theirs[real])


def _trained(tiny_path, examples, **kw) -> dict:
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    train(model, examples, pad_id=0, epochs=1, lr=1e-3, seed=0, **kw)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_gradient_accumulation_is_one_batch_of_all_its_targets(tiny_path, tiny):
    """Two batches accumulated into one step make the update that one batch holding both makes."""
    _, tok = tiny
    examples = to_examples(relabelled(), tok)[:2]
    longest = max(len(e.input_ids) for e in examples)
    one = _trained(tiny_path, examples, max_tokens=4 * longest)  # both examples in one batch: one step
    accumulated = _trained(tiny_path, examples, max_tokens=longest, grad_accum=2)  # one each, one step
    apart = _trained(tiny_path, examples, max_tokens=longest)  # one each, two steps
    base = AutoModelForCausalLM.from_pretrained(tiny_path).state_dict()
    assert all(torch.allclose(one[n], accumulated[n], atol=1e-6) for n in one)
    assert any(not torch.allclose(one[n], apart[n], atol=1e-6) for n in one)
    assert any(not torch.equal(one[n], base[n]) for n in one)


def test_gradient_checkpointing_and_bf16_autocast(tiny_path, tiny, monkeypatch):
    """Checkpointing recomputes the same forward (the same update); bf16 autocast (what accelerate's
    `mixed_precision: bf16` asks, or `train.bf16`) computes it in bf16: close to the fp32 update, not equal to it."""
    from sftbc.config import load_config
    from sftbc.models import student_model

    _, tok = tiny
    examples = to_examples(relabelled(), tok)[:4]

    def lora_update(*overrides, env=None, bf16=False):
        if env:
            monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
        cfg = load_config(None, [f"model={tiny_path}", "lora.rank=4", *overrides])
        torch.manual_seed(0)
        model = student_model(cfg, tiny_path, trainable=True)
        stats = train(model, examples, pad_id=tok.pad_token_id, epochs=2, lr=1e-2, max_tokens=2048, seed=0,
                      bf16=bf16)
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
        return model, stats

    plain, plain_stats = lora_update()
    ckpt, ckpt_stats = lora_update("train.gradient_checkpointing=true")
    assert ckpt.is_activation_checkpointing and not plain.is_activation_checkpointing
    assert ckpt_stats["loss_last"] == pytest.approx(plain_stats["loss_last"], rel=1e-5)
    _, bf16_stats = lora_update(env="bf16")
    assert bf16_stats["loss_last"] != plain_stats["loss_last"]
    assert bf16_stats["loss_last"] == pytest.approx(plain_stats["loss_last"], rel=0.05)
    assert lora_update(bf16=True)[1]["loss_last"] == bf16_stats["loss_last"]  # the key is the launcher's autocast


def test_a_bf16_student_trains_and_rolls_out(tmp_path, tiny_path):
    """model_dtype=bfloat16: the base weights in bf16, its LoRA adapter in fp32; BC runs end to end."""
    from sftbc.bc import run_bc
    from sftbc.config import load_config
    from sftbc.models import student_model

    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=b", f"model={tiny_path}", "model_dtype=bfloat16",
                             "collect.horizons=[2]", "collect.episodes=6", "train.epochs=1", "train.min_steps=0", "lora.rank=4",
                             "eval.horizons=[2]", "eval.episodes=2", "eval.max_new_tokens=16"])
    model = student_model(cfg, tiny_path, trainable=True)
    dtypes = {next((k for k in ("lora_A", "lora_B") if k in n), "base"): p.dtype for n, p in model.named_parameters()}
    assert dtypes["base"] == torch.bfloat16 and dtypes["lora_A"] == dtypes["lora_B"] == torch.float32
    m = run_bc(cfg)
    assert m["eval"][0]["episodes"] == 2 and m["train"]["loss_last"] == m["train"]["loss_last"]  # not NaN
