import torch

from sftbc.config import LoraArgs
from sftbc.models import add_lora, build_tiny, load_model, load_tokenizer, merge_adapter, tiny_model_dir


def test_tiny_build_is_deterministic(tmp_path):
    from tests.conftest import TEST_TINY
    from dataclasses import replace

    args = replace(TEST_TINY, episodes=20, epochs=0.5, renamed=0.5)  # renaming draws from its own seeded rng
    a, b = build_tiny(args, tmp_path / "a"), build_tiny(args, tmp_path / "b")
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    ma, mb = load_model(str(a)), load_model(str(b))
    for (na, pa), (nb, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    assert tiny_model_dir(args) != tiny_model_dir(replace(args, seed=1))


def test_lora_adapter_saves_loads_and_merges(tiny_path, tmp_path):
    tok = load_tokenizer(tiny_path)
    model = add_lora(load_model(tiny_path), LoraArgs(rank=4, alpha=8, target_modules=("q_proj", "v_proj")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "adapter")
    merge_adapter(tiny_path, str(tmp_path / "adapter"), str(tmp_path / "merged"))
    ids = tok("<|im_start|>user\nhello<|im_end|>", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        base = load_model(tiny_path)(ids).logits
        adapted = load_model(tiny_path, str(tmp_path / "adapter"))(ids).logits
        merged = load_model(str(tmp_path / "merged"))(ids).logits
    assert not torch.allclose(base, adapted)
    torch.testing.assert_close(adapted, merged, atol=1e-4, rtol=1e-4)
    assert load_tokenizer(str(tmp_path / "merged")).chat_template == tok.chat_template


def test_renamed_values_are_new_values_of_their_kind_copied_consistently():
    import random
    import re

    from sftbc.envs import eval_seeds
    from sftbc.models import rename_values
    from sftbc.probe import copied_values
    from sftbc.rollout import rollout
    from sftbc.teachers import OracleTeacher

    # orders: each customer's name is copied from the task, then an order number (an int) from find's answer
    traj = rollout("examples/orders/orders.py:Orders", 2, eval_seeds(1), OracleTeacher(), None)[0]
    pool = {"words": [f"zq{i}x" for i in range(50)], "digits": [str(700 + i) for i in range(50)]}
    renamed = rename_values(traj.messages, random.Random(0), pool)
    before, after = list(copied_values(traj.messages)), list(copied_values(renamed))
    assert [len(vs) for vs in after] == [len(vs) for vs in before] == [1, 1, 1, 1]  # every call still copies
    mapping = {}
    for [v], [w] in zip(before, after):
        assert type(w) is type(v) and str(w) in pool["words" if isinstance(v, str) else "digits"]
        assert mapping.setdefault(v, w) == w  # the same value, the same new one
    assert len(set(mapping.values())) == len(mapping)  # different values, different new ones
    text = "\n".join(m.content for m in renamed)
    assert not any(str(v) in text for v in mapping)  # renamed everywhere, observations included
    others = set(re.findall(r"\d{5}", "\n".join(m.content for m in traj.messages))) - {str(v) for v in mapping}
    assert others and all(o in text for o in others)  # orders shown but not copied keep their numbers
    assert [c.name for m in renamed for c in m.tool_calls] == [c.name for m in traj.messages for c in m.tool_calls]
