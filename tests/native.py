"""Tiny random-weight students in real chat formats: the templates TRL ships (trl/chat_templates/), as
Qwen2.5, Qwen3 and Llama 3.2 instruct models carry them, with those models' special tokens. Each is
saved with `save_pretrained` and loaded back through `from_pretrained`, as a user's model is."""

from __future__ import annotations

from pathlib import Path

import torch
import trl
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
QWEN = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>",
        "</tool_response>"]
FORMATS = {  # template file -> (special tokens, pad, eos, bos), as the model's tokenizer has them
    "qwen2_5": (QWEN, "<|endoftext|>", "<|im_end|>", None),
    "qwen3": ([*QWEN, "<think>", "</think>"], "<|endoftext|>", "<|im_end|>", None),
    "llama3_2": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"],
                 "<|finetune_right_pad_id|>", "<|eot_id|>", "<|begin_of_text|>"),
}
END_OF_TURN = {"qwen2_5": "<|im_end|>", "qwen3": "<|im_end|>", "llama3_2": "<|eot_id|>"}


def oracle_episodes(env: str, n: int, horizon: int, seed: int = 0) -> list[tuple[list, list]]:
    """Whole episodes played by the oracle: (messages, tools)."""
    return [(list(t.messages), list(t.tools)) for t in rollout(env, horizon, list(range(seed, seed + n)), OracleTeacher())]


def format_tokenizer(fmt: str, texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    special, pad, eos, bos = FORMATS[fmt]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, bos_token=bos)
    fast.chat_template = (TEMPLATES / f"{fmt}.jinja").read_text()  # the model's own, not training-ready
    return fast


def build_native_student(fmt: str, out: Path, seed: int = 0, hidden: int = 32, layers: int = 1) -> str:
    """A small random-weight Llama whose tokenizer (BPE learnt on the envs' conversations rendered in
    the format) carries the format's special tokens and its original chat template."""
    from sftbc.render import render

    episodes = [ep for env in ("maze", "calc") for ep in oracle_episodes(env, 6, 4, seed)]
    renderer = format_tokenizer(fmt, [""], 300)
    texts = [render(renderer, m, t) for m, t in episodes]
    tok = format_tokenizer(fmt, texts, 700)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
