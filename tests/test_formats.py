"""A model keeps its own chat format: tiny students carrying Qwen2.5's, Qwen3's and Llama 3.2's real
templates are trained, decoded and parsed in that format, end to end (tests/native.py builds them)."""

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from trl.chat_template_utils import has_generation_markers

from native import END_OF_TURN, FORMATS, TEMPLATES, build_native_student, oracle_episodes, format_tokenizer
from sftbc.config import load_config
from sftbc.decode import BatchedChat
from sftbc.envs import make_env
from sftbc.models import load_model, load_tokenizer
from sftbc.render import (CHAT_TEMPLATE, parse_action, render, set_chat_format, tokenize_conversation, to_chat,
                          turn_format)
from test_fuzz import SETTINGS, _run_everywhere, call_bodies


@pytest.fixture(scope="module", params=sorted(FORMATS))
def native(request, tmp_path_factory):
    fmt = request.param
    return fmt, build_native_student(fmt, tmp_path_factory.mktemp(fmt) / "model")


def test_auto_keeps_the_models_own_format_training_ready(native):
    fmt, path = native
    tok = load_tokenizer(path)  # chat_template=auto
    assert tok.chat_template != CHAT_TEMPLATE and has_generation_markers(tok.chat_template)
    assert tok.response_template is not None  # parsed as vLLM / transformers serve parse this model
    assert turn_format(tok).end == END_OF_TURN[fmt] and not turn_format(tok).hermes
    messages, tools = oracle_episodes("maze", 1, 3)[0]
    text = render(tok, messages, tools)
    assert {"qwen2_5": "<tool_response>", "qwen3": "<think>", "llama3_2": "<|start_header_id|>ipython"}[fmt] in text


def test_chat_template_choices_and_their_errors(native, tiny_path, tmp_path):
    fmt, path = native
    if fmt == "llama3_2":  # no <|im_end|>: sftbc's ChatML cannot be forced on it
        with pytest.raises(ValueError, match="needs a <\\|im_end\\|> token"):
            load_tokenizer(path, "sftbc")
    else:
        assert load_tokenizer(path, "sftbc").chat_template == CHAT_TEMPLATE
    with pytest.raises(ValueError, match="does not render tool calls; use chat_template=sftbc"):
        load_tokenizer(tiny_path, "native")  # the tiny model's template is sftbc's
    plain = tmp_path / "plain.jinja"
    plain.write_text((TEMPLATES / f"{fmt}.jinja").read_text())
    with pytest.raises(ValueError, match="no {% generation %} markers"):
        load_tokenizer(path, str(plain))
    with pytest.raises(ValueError, match="not one of auto, native, sftbc or a path"):
        load_tokenizer(path, "chatml")
    tok = load_tokenizer(path)
    tok.chat_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", tok.chat_template)
    unknown = tmp_path / "unknown"
    tok.save_pretrained(unknown)  # a tool-calling template that neither TRL nor sftbc can make training-ready
    (unknown / "config.json").write_text((Path(path) / "config.json").read_text())
    with pytest.raises(ValueError, match="cannot be made training-ready"):
        load_tokenizer(str(unknown))
    config = json.loads((unknown / "tokenizer_config.json").read_text())
    del config["response_template"]
    (unknown / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no response parser is known"):
        load_tokenizer(str(unknown))


def test_llama_training_template_renders_as_the_original():
    """sftbc's training version of Llama 3.2's template adds generation markers and nothing else (given
    the same date: the original stamps today's)."""
    original = format_tokenizer("llama3_2", [""], 300)
    trained = format_tokenizer("llama3_2", [""], 300)
    set_chat_format(trained, "native")
    assert trained.chat_template != original.chat_template
    for env in ("maze", "calc"):
        for messages, tools in oracle_episodes(env, 3, 4):
            chat = [{k: v for k, v in m.items() if v is not None} for m in to_chat(messages)]
            for gen in (False, True):
                kw = dict(tools=tools, tokenize=False, add_generation_prompt=gen, date_string="26 Jul 2024")
                assert trained.apply_chat_template(chat, **kw) == original.apply_chat_template(chat, **kw)


def _turns(tok, messages, tools):
    """Each assistant turn as the model generates it: the text after the generation prompt, up to and
    including the end-of-turn token."""
    end = turn_format(tok).end
    for k, m in enumerate(messages):
        if m.role == "assistant":
            before = render(tok, messages[:k], tools, add_generation_prompt=True)
            full = render(tok, messages[: k + 1], tools)
            assert full.startswith(before)
            yield m, full[len(before) :].split(end)[0] + end


def test_loss_mask_covers_exactly_each_assistant_turn(native):
    fmt, path = native
    tok = load_tokenizer(path)
    for env in ("maze", "calc"):
        for messages, tools in oracle_episodes(env, 3, 4):
            ids, mask = tokenize_conversation(tok, to_chat(messages), tools)
            spans, cur = [], []  # maximal runs of masked tokens
            for i, m in zip(ids, mask):
                if m:
                    cur.append(i)
                elif cur:
                    spans.append(cur)
                    cur = []
            spans += [cur] if cur else []
            turns = [text for _, text in _turns(tok, messages, tools)]
            assert len(spans) == len(turns)  # one span per turn: nothing else (prompt, tool output) is trained
            newline = tok("\n", add_special_tokens=False)["input_ids"]
            for span, text in zip(spans, turns):
                # token by token: the span is the turn's tokens, give or take the newline the template
                # writes on its border (TRL's Qwen templates train "\n" after the header and after the end)
                while span[: len(newline)] == newline:
                    span = span[len(newline) :]
                while span[-len(newline) :] == newline:
                    span = span[: -len(newline)]
                assert span == tok(text.strip("\n"), add_special_tokens=False)["input_ids"], (fmt, text)


def test_every_oracle_action_round_trips_through_the_format(native):
    fmt, path = native
    tok = load_tokenizer(path)
    n = 0
    for env in ("maze", "calc"):
        for messages, tools in oracle_episodes(env, 4, 6):
            for action, text in _turns(tok, messages, tools):
                assert parse_action(text, tok) == action, (fmt, text)
                n += 1
    assert n > 30


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_any_generated_text_parses_in_every_format(fmt):
    """The fuzz of tests/test_fuzz.py, through each format's own parser and call syntax."""
    tok = format_tokenizer(fmt, [""], 300)
    set_chat_format(tok, "native")
    end = END_OF_TURN[fmt]

    @SETTINGS
    @given(call_bodies, call_bodies)
    def check(a, b):
        for text in (a, a + end, f"<tool_call>\n{a}\n</tool_call>{end}", f'{{"name": "go", "parameters": {a}}}{end}',
                     f"<think>{b}</think>\n\n<tool_call>{a}</tool_call>", "<tool_call>" + a + b, a[:50] + end + b):
            action = parse_action(text, tok)
            assert action.role == "assistant"
            _run_everywhere(action)

    check()


def test_native_student_end_to_end(native, tmp_path):
    """collect -> bc -> dagger -> eval with the model's own format; the merged model keeps it."""
    from sftbc.dagger import run_dagger
    from sftbc.data import load_dataset_dir

    fmt, path = native
    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=d", f"model={path}", "collect.horizons=[2]",
                             "collect.labels_per_horizon=6", "dagger.rounds=1", "train.epochs=1", "train.min_steps=0", "lora.rank=4",
                             "lora.target_modules=[q_proj,v_proj]", "eval.horizons=[2]", "eval.episodes=2",
                             "eval.max_new_tokens=16", "merge=true"])
    m = run_dagger(cfg)
    assert m["teacher_labels"] == 12 and m["eval"][0]["episodes"] == 2
    row = load_dataset_dir(tmp_path / "d" / "data")[0]
    assert any(x["tool_calls"] for x in row["messages"])
    merged = load_tokenizer(str(tmp_path / "d" / "round-001" / "merged"))
    assert merged.chat_template == load_tokenizer(path).chat_template and merged.response_template is not None
    kept = [json.loads(x) for x in (tmp_path / "d" / "episodes.jsonl").read_text().splitlines()]
    assert kept and all(e["messages"][0]["role"] in ("user", "system") for e in kept)


def test_cached_decoding_equals_fresh_encoding_in_every_format(native):
    """The KV-cached continuation (teacher's canonical turn fed over the student's, tool turns rendered
    the format's way) sees what a fresh encoding sees, and decoding stops at the format's end token."""
    fmt, path = native
    tok, model = load_tokenizer(path), load_model(path)
    games = [make_env("maze", 3) for _ in range(2)]
    convs = [list(g.reset(s)[0]) for g, s in zip(games, (0, 1))]
    tools = [g.reset(s)[1] for g, s in zip(games, (0, 1))]
    chat = BatchedChat(model, tok, list(zip(convs, tools)))
    assert chat.stop_id == tok.convert_tokens_to_ids(END_OF_TURN[fmt])
    for turn in range(2):
        for i in range(2):
            ids = tok(render(tok, convs[i], tools[i], add_generation_prompt=True), add_special_tokens=False,
                      return_tensors="pt")
            with torch.no_grad():
                fresh = model(**ids).logits[0, -1]
            torch.testing.assert_close(chat.logits[i], fresh, atol=1e-4, rtol=1e-4)
        texts = chat.generate([0, 1], max_new_tokens=12, drafts={i: chat.draft(games[i].oracle_action()) for i in range(2)})
        for i in range(2):
            a = parse_action(texts[i], tok) if turn == 1 else games[i].oracle_action()
            convs[i] += [a, *games[i].step(a).messages]
        chat.sync({i: convs[i] for i in range(2)})
