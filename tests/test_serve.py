"""A real served teacher: `transformers serve` on 127.0.0.1 serves a local model in Qwen2.5's format and
parses its tool calls with the tokenizer's response template (saved by sftbc's `load_tokenizer`);
`sftbc dagger teacher.kind=openai` labels through the real `openai` client. The student is the tiny
model in sftbc's format: labels are messages, so each side keeps its own template."""

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken
from transformers import AutoModelForCausalLM

from conftest import free_port
from native import build_native_student
from sftbc.config import load_config
from sftbc.data import load_dataset_dir
from sftbc.models import load_tokenizer
from sftbc.types import Message, tool_call

BODY = '\n{"name": "go", "arguments": {"door": "red"}}\n'  # one token of the served model's vocabulary


def wire_answer(path: str, out: Path) -> None:
    """Set a 1-layer model's weights so that its greedy answer after any generation prompt is
    `<tool_call>BODY</tool_call><|im_end|>`: the layer adds nothing (o_proj and down_proj are zero), so
    the next token depends on the last one only, and the output head maps each token of the answer to
    the next. A model whose answer is known, served for real."""
    tok = load_tokenizer(path)  # Qwen2.5's training template, and its response template for the server
    tok.add_tokens([AddedToken(BODY, normalized=False)])
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tok))
    model.config.tie_word_embeddings = False
    prompt_end = tok(tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                             add_generation_prompt=True), add_special_tokens=False)["input_ids"][-1]
    chain = [prompt_end, *tok.convert_tokens_to_ids(["<tool_call>", BODY, "</tool_call>", "<|im_end|>"])]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        head = torch.nn.Parameter(torch.zeros_like(emb))
        for a, b in zip(chain, chain[1:]):
            head[b] = 50 * emb[a] / emb[a].norm()
        model.lm_head.weight = head
    model.save_pretrained(out)
    tok.save_pretrained(out)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent))
    pytest.importorskip("fastapi")  # transformers[serving], in the test extras
    d = tmp_path_factory.mktemp("served")
    wire_answer(build_native_student("qwen2_5", d / "base"), d / "teacher")
    port, log = free_port(), open(d / "serve.log", "w")
    proc = subprocess.Popen([exe, "serve", str(d / "teacher"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not come up in 120 s")
        assert proc.poll() is None, (d / "serve.log").read_text()[-2000:]
        yield f"http://127.0.0.1:{port}/v1", str(d / "teacher")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_dagger_with_a_transformers_serve_teacher(served, tiny_path, tmp_path, monkeypatch):
    base_url, model = served
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=s", f"model={tiny_path}", "teacher.kind=openai",
                             f"teacher.base_url={base_url}", f"teacher.model={model}", "teacher.batch_size=4",
                             "collect.horizons=[2]", "collect.labels_per_horizon=6", "dagger.rounds=1",
                             "train.epochs=1", "train.min_steps=0", "lora.rank=4", "eval.horizons=[2]", "eval.episodes=2",
                             "eval.max_new_tokens=16"])
    from openai import OpenAI

    from sftbc.dagger import run_dagger
    from sftbc.envs import make_env
    from sftbc.teachers import to_openai

    messages, tools = make_env("maze", 2).reset(0)  # the server itself parses the call (no text left to parse)
    answer = OpenAI(base_url=base_url, api_key="local").chat.completions.create(
        model=model, messages=to_openai(messages), tools=tools, temperature=0.0).choices[0].message
    assert [(c.function.name, json.loads(c.function.arguments)) for c in answer.tool_calls] == [("go", {"door": "red"})]
    assert "<tool_call>" not in (answer.content or "")
    m = run_dagger(cfg)
    assert m["rounds"][0]["teacher_labels"] == 6 and m["rounds"][1]["teacher_labels"] == 6
    labels = []
    for row in load_dataset_dir(tmp_path / "s" / "data"):
        msgs = [Message.from_dict(x) for x in row["messages"]]
        at = [k for k, x in enumerate(msgs) if x.role == "assistant"]
        labels += [msgs[at[t]] for t in row["train_turns"]]
    # every label is the served model's answer, parsed into a tool call by the server (not by sftbc)
    assert len(labels) == 12 and all(x == tool_call("go", door="red") for x in labels)
    cache = [json.loads(x) for x in (tmp_path / "s" / "label_cache.jsonl").read_text().splitlines()]
    assert cache and all(c["label"]["tool_calls"] for c in cache)
