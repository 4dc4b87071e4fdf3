import torch

from sftbc.data import load_dataset_dir, save_dataset, to_dataset, to_examples
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher


def demos():
    t = OracleTeacher()
    return rollout("maze", 1, [0, 1], t) + rollout("maze", 3, [0, 1, 2], t) + rollout("calc", 2, [0], t)


def test_demonstrations_become_conversational_rows(tmp_path):
    ds = to_dataset(demos())
    assert len(ds) == 6  # one row per teacher trajectory
    row = ds[2]
    assert row["horizon"] == 3 and row["actor"] == "teacher" and row["train_turns"] == [0, 1, 2]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    save_dataset(ds, tmp_path / "data")
    again = load_dataset_dir(tmp_path / "data")
    assert again.to_list() == ds.to_list()


def test_loss_mask_covers_only_the_labelled_turns(tiny):
    _, tok = tiny
    ds = to_dataset(demos())
    ex = to_examples(ds.select([2]), tok)[0]
    trained = tok.decode([i for i, m in zip(ex.input_ids, ex.loss_mask) if m])
    assert trained.count("<tool_call>") == 3 and trained.count("<|im_end|>") == 3
    # restricting train_turns restricts the mask
    one = ds.select([2]).map(lambda r: {"train_turns": [1]})
    ex1 = to_examples(one, tok)[0]
    assert tok.decode([i for i, m in zip(ex1.input_ids, ex1.loss_mask) if m]).count("<tool_call>") == 1


def test_saved_dataset_trains_in_trl_sft_trainer_unchanged(tiny_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    save_dataset(to_dataset(demos()), tmp_path / "data")
    ds = load_dataset_dir(tmp_path / "data")
    tok = AutoTokenizer.from_pretrained(tiny_path)  # the template saved with the model has generation markers
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    before = model.model.embed_tokens.weight.detach().clone()
    args = SFTConfig(output_dir=str(tmp_path / "trl"), assistant_only_loss=True, max_steps=3,
                     per_device_train_batch_size=2, learning_rate=1e-3, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = tok.decode(batch["input_ids"][batch["labels"] != -100])
    assert "<tool_call>" in labelled and "You are in" not in labelled and "Trust only" not in labelled
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.model.embed_tokens.weight.detach())


def test_relabelled_trajectory_trains_every_label_once_in_O_T_rows():
    from sftbc.data import trajectory_rows
    from sftbc.envs import make_env
    from sftbc.types import Context, Episode, Step, Trajectory, tool_call

    # a student trajectory in the maze: a wrong door, then the oracle's way back and on to the code
    oracle, episode, env = OracleTeacher(), Episode("maze", 3, 5), make_env("maze", 3)
    msgs, tools = env.reset(5)
    msgs, steps = list(msgs), []
    wrong = next(d for d in env.rooms[env.path[0]][0] if env.rooms[env.path[0]][0][d] != env.path[1])
    for action in [tool_call("go", door=wrong), None, None, None, None]:
        ctx = Context(tuple(msgs), tuple(tools), episode)
        label = oracle.label([ctx])[0]
        action = action or label
        r = env.step(action)
        steps.append(Step(ctx, action, label, "student", action))
        msgs += [action, *r.messages]
    assert r.done and r.info["success"]
    traj = Trajectory(episode, tuple(steps), tuple(msgs), tuple(tools), True, "answer")
    rows = trajectory_rows(traj)
    assert [r["step"] for r in rows] == [-1, 0]  # the executed conversation, then the one disagreeing state
    assert rows[0]["train_turns"] == [1, 2, 3, 4] and rows[1]["train_turns"] == [0]
    assert rows[1]["messages"][-1]["tool_calls"][0]["function"]["name"] == "go"  # the label, not the wrong door
    assert rows[1]["messages"][-1] != rows[0]["messages"][1]
    assert sum(len(r["train_turns"]) for r in rows) == len(steps)
