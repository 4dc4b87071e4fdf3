"""Configs: dataclasses with a docstring per field, loaded from YAML, overridden by `key=value`.

`load_config("recipes/bc.yaml", ["train.lr=1e-3", "eval.horizons=[1,2]"])` reads the recipe, applies
the overrides (values are YAML), checks every key and type, and fails with one line naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


BETA_SCHEDULES = ("indicator", "linear", "exponential")
METHODS = ("bc", "dart", "dagger", "distill")


def beta_at(args: "DaggerArgs", i: int) -> float:
    """beta_i: the probability that the teacher acts at a turn of round i (round 0 is always the teacher)."""
    if i == 0:
        return 1.0
    if args.beta == "indicator":
        return 0.0
    if args.beta == "linear":
        return max(0.0, 1.0 - i / args.rounds)
    return args.beta_decay**i


@dataclass
class TinyModelArgs:
    envs: tuple[str, ...] = ("maze", "calc")
    """environments (built-in names or references, as `env`) whose transcripts the tokenizer and base pretraining see; a run's own `env`, when it is not a built-in, is added"""
    episodes: int = 1200
    """random-action episodes in the base pretraining corpus"""
    max_horizon: int = 6
    """horizons of the corpus episodes are drawn from 1..max_horizon"""
    vocab_size: int = 1024
    """BPE vocabulary size"""
    hidden: int = 128
    """hidden size (the MLP is 4x this)"""
    layers: int = 4
    """transformer layers"""
    heads: int = 4
    """attention heads"""
    max_positions: int = 4096
    """longest context the model supports, in tokens"""
    epochs: float = 4.0
    """passes over the pretraining corpus"""
    lr: float = 3e-3
    """pretraining learning rate (all parameters)"""
    max_tokens: int = 1024
    """padded tokens per pretraining batch (smaller batches, more steps: the copy skill forms after a number of steps, not of tokens)"""
    seed: int = 0
    """seed for the corpus, the tokenizer and the initial weights; same seed, same model"""
    renamed: float = 0.5
    """share of the corpus episodes whose copied values (strings and whole numbers an earlier observation shows verbatim) are renamed throughout the episode to values of the same kind (numbers to numbers; otherwise corpus words and made-up ids): values that cannot be guessed, only copied, so the base learns to copy from an observation, the skill most tool calls need. 0 = the envs' own transcripts only (the base before 2026-12-07, 2 epochs of 2048-token batches: 80 s to build instead of about 3 min; docs/experiments/copy_probe.md)"""


@dataclass
class LoraArgs:
    rank: int = 16
    """LoRA rank r"""
    alpha: float = 32.0
    """LoRA alpha (scale = alpha / rank)"""
    dropout: float = 0.0
    """dropout on the LoRA input"""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """module names that get adapters"""


@dataclass
class TrainArgs:
    epochs: float = 3.0
    """passes over the dataset"""
    lr: float = 2e-3
    """peak learning rate (linear warm-up, cosine decay)"""
    max_tokens: int = 8192
    """padded tokens per batch"""
    min_steps: int = 150
    """train at least this many optimizer steps (more epochs on small datasets: a few dozen steps do not fit LoRA; BC at T = 1 on 240 labels got 9-12 steps from epochs alone, docs/experiments/copy_probe.md)"""
    seed: int = 0
    """seed for batch order and LoRA initialisation"""
    grad_accum: int = 1
    """batches (of max_tokens each) per optimizer step: a larger batch in the same memory"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory for long episodes (a GPU student), more compute"""
    bf16: bool = False
    """bf16 autocast of every training forward (weights and optimizer stay as loaded), as `accelerate launch --mixed_precision bf16` does: for a CPU with bf16 units (AVX512-BF16, AMX) or a GPU. SmolLM2-135M's packed LoRA step 1.3x (T = 1) and 1.6x (T = 12) faster on this CPU (docs/performance.md). Off by default: it changes the loss in the fourth decimal, and the recorded results were measured in float32"""
    pack: bool = False
    """train each batch as one trie-packed sequence (sftbc/pack.py): tokens that its rows share (a system prompt, a relabelled conversation up to each label) are computed once, logits only where a target needs them; the same batches, loss and gradients to float rounding; 1.7x faster steps on the demo's one-step rows, 1.5x on relabelled T = 32 data (docs/performance.md). Off by default: the recorded recipe results were measured with padded rows, and these students are sensitive to float-level differences"""


@dataclass
class TeacherArgs:
    kind: str = "oracle"
    """'oracle' (the environment's optimal policy), 'hf' (a local causal LM) or 'openai' (a served endpoint)"""
    path: str = ""
    """model path, for kind=hf"""
    base_url: str = ""
    """OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1), for kind=openai"""
    model: str = ""
    """served model name, for kind=openai"""
    api_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the API key (the key itself is never written anywhere)"""
    timeout: float = 60.0
    """seconds per request"""
    max_retries: int = 3
    """retries per request on timeouts, dropped connections, 408/409/429/5xx and malformed answers, with exponential backoff"""
    batch_size: int = 64
    """contexts labelled per forward pass (hf) or concurrent requests (openai)"""
    max_new_tokens: int = 48
    """cap on the length of one generated teacher turn (hf: new tokens; openai: the request's max_tokens)"""
    temperature: float = 0.0
    """an LM teacher's sampling temperature; 0 = greedy, so that a label is a function of its state (the label cache keeps the first label of each state either way)"""
    extra_body: dict = field(default_factory=dict)
    """extra JSON fields of every openai request, e.g. {chat_template_kwargs: {enable_thinking: false}} to turn a Qwen3 teacher's thinking off"""
    chat_template: str = "auto"
    """the hf teacher's chat format, as the student's `chat_template`: its labels are messages, so it may differ from the student's"""
    privileged: bool = False
    """show the teacher each state as the env's privileged view gives it (maze_smudged: every note clean, env maze_trail), for an LM teacher trained on that view: a teacher that knows more than the student, as the oracle does"""
    cache: str = ""
    """JSONL file that keeps every label by a hash of its context: '' = <run dir>/label_cache.jsonl (a comparison shares one across its cells), 'none' = no cache"""


@dataclass
class CollectArgs:
    horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """horizons T to collect demonstrations at"""
    episodes: int = 100
    """episodes per horizon (when labels_per_horizon is 0)"""
    labels_per_horizon: int = 0
    """if > 0, an exact teacher-label budget per horizon (and per DAgger round), spent on whole episodes; every T gets the same"""
    teacher_tokens_per_horizon: int = 0
    """if > 0, a teacher-cost budget per horizon (and per DAgger round) in teacher forward tokens (LM teachers): episodes run in waves until it is spent (the last wave overshoots by about an episode, which DAgger takes off its next round; the metrics report what was spent)"""
    seed_start: int = 0
    """first training seed (seeds are consecutive, and disjoint from evaluation seeds)"""
    noise: float = 0.0
    """DART: probability that a demonstration turn executes a random valid call instead of the teacher's (the clean label is kept)"""


@dataclass
class EvalArgs:
    horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """horizons T to evaluate at"""
    episodes: int = 100
    """held-out episodes per horizon"""
    max_new_tokens: int = 48
    """cap on the length of one generated assistant turn"""
    temperature: float = 0.0
    """student sampling temperature (0 = greedy)"""
    keep_episodes: int = 50
    """student episodes per horizon each evaluation keeps in an episodes.jsonl beside its metrics (conversation, and per step the action, the teacher's label, agreement), failures first: about 1-2 KB per step; 0 = none (`sftbc show` reads them)"""
    teacher_metrics: bool = True
    """also ask the teacher at the held-out states, for mistakes per episode and eps; false = success, steps and tool errors only, with no teacher query (an LM teacher's evaluation then costs nothing)"""


@dataclass
class DaggerArgs:
    rounds: int = 4
    """on-policy rounds after round 0 (the teacher's demonstrations); each collects `collect.labels_per_horizon` labels per horizon"""
    beta: str = "indicator"
    """teacher-mixing schedule over rounds i = 0..rounds: 'indicator' (1, then 0), 'linear' (1 - i/rounds) or 'exponential' (beta_decay**i)"""
    beta_decay: float = 0.5
    """p in beta_i = p**i, for beta=exponential"""
    window: int = 0
    """train on the last `window` rounds' data; 0 = all rounds (the paper's aggregation)"""
    warm_start: bool = True
    """continue from the previous round's adapter (true) or restart from the base each round (false)"""
    round_epochs: float = 0.0
    """passes over the aggregate in rounds >= 1; 0 = train.epochs"""
    round_eval_episodes: int = 0
    """validation episodes (disjoint from training and held-out seeds) to evaluate each intermediate round's student on (the final one always gets eval.episodes held-out); 0 = skip"""


@dataclass
class DistillArgs:
    iterations: int = 20
    """most sample-score-train iterations (a teacher-token budget, collect.teacher_tokens_per_horizon, may end it sooner)"""
    episodes: int = 16
    """episodes sampled per iteration and horizon"""
    lam: float = 1.0
    """GKD's lambda: the fraction of episodes the student samples itself (on-policy); the teacher generates the rest"""
    temperature: float = 1.0
    """the student's sampling temperature in its own episodes"""
    jsd_beta: float = 1.0
    """generalized JSD between student and teacher per token: 0 = forward KL(teacher||student), 1 = reverse KL(student||teacher)"""
    top_k: int = 0
    """teacher log-probs kept per token: 0 = the full vocabulary (local teachers); a served teacher needs k >= 1, and both distributions are renormalised over the teacher's top k"""
    passes: int = 1
    """passes over each iteration's training episodes (one optimizer step per batch of train.max_tokens)"""
    aggregate: float = 1.0
    """each iteration trains on its fresh scored episodes plus this many times as many drawn at random
    from earlier iterations (with the teacher's scores they got then: no teacher cost), as DAgger
    aggregates: states the student already handles stay in the loss. Alone it did not stop the collapse;
    with `restart` it did (docs/experiments/distill_stability.md); 0 = fresh episodes only"""
    lr: float = 0.0
    """distillation's peak learning rate (0 = train.lr)"""
    restart: bool = True
    """each iteration trains with a fresh AdamW, warm-up, then cosine decay to 0 over its own steps, as
    each DAgger round does: the student an iteration ends on has settled, wherever a token budget stops
    the run (docs/experiments/distill_stability.md); false = one optimizer at a constant lr for the whole run"""
    undo_worse: bool = True
    """after each iteration, the loss on its own training episodes (no gradient) is compared with their
    loss before it; if it rose, the optimization diverged on data it was fitting, and the student goes
    back to where the iteration began (logged as `undone`): a fresh AdamW moves every weight by about
    lr whatever the gradient's size, and a few already-solved episodes once collapsed a student so
    (docs/experiments/distill_stability.md). The check costs two forward passes, no teacher tokens"""
    sft_share: float = 0.0
    """fraction of each horizon's teacher-token budget spent first on teacher demonstrations, trained by
    BC as in DAgger's round 0; distillation then starts from that student (the usual order: SFT, then
    on-policy distillation). 0 = distil from the base. Needs a teacher-token budget"""
    curve_every: int = 0
    """evaluate the student on `curve_episodes` validation episodes (disjoint from training and held-out seeds) every this many iterations: the learning curve, the collapse warning and keep_best; 0 = never"""
    curve_episodes: int = 20
    """validation episodes per learning-curve point"""
    collapse_drop: float = 0.3
    """warn (log and metrics' collapses) when a curve point's validation success falls this far below the best so far"""
    keep_best: bool = False
    """end with the adapter of the best curve point (chosen on validation episodes only), not the last"""


@dataclass
class CompareArgs:
    methods: list[str] = field(default_factory=lambda: ["bc", "dart", "dagger"])
    """methods to compare: bc (demonstrations), dart (noisy demonstrations), dagger, distill (on-policy distillation; an LM teacher)"""
    horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """every method is trained and evaluated at each of these T, separately"""
    labels: int = 640
    """teacher-label budget per method and horizon (dagger splits it evenly over its rounds)"""
    teacher_tokens: int = 0
    """if > 0, the budget per method and horizon is this many teacher forward tokens instead of labels (LM teachers; needed for distill)"""
    dart_noise: float = 0.2
    """perturbation probability for method dart"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """training seeds per method x T (0-99): each moves the cell's training episodes, adapter init, batch order, beta coins and sampling; held-out episodes are the same for all, so differences are paired"""
    baseline: str = "bc"
    """the method every other one is compared against (paired differences, exponent differences); none are reported when it is not in methods"""
    shard: str = ""
    """'i/n': run only every n-th cell from the i-th (0 <= i < n), to spread a sweep over jobs; then `sftbc compare --report` merges them"""


@dataclass
class RunConfig:
    name: str = "bc"
    """run name: files go to <runs_dir>/<name>/"""
    runs_dir: str = "runs"
    """where run directories are created"""
    env: str = "maze"
    """environment: a built-in (maze, maze_fixed, maze_rivals, maze_smudged, maze_trail, calc), package.module:Class, or path/to/file.py:Class (relative to the working directory; README, Your own task)"""
    model: str = "tiny"
    """student: 'tiny' (built-in, built and cached on first use), 'smollm2-135m' (after `sftbc models fetch`), or a HF model path"""
    model_dtype: str = "float32"
    """the student's weights in memory: 'float32', or 'bfloat16' (half the memory; GPUs, and CPUs with bf16 units); LoRA weights stay float32"""
    attn_implementation: str = ""
    """transformers' attention kernel for the student: '' = its default (sdpa), 'eager', 'flash_attention_2', ..."""
    chat_template: str = "auto"
    """the student's chat format: 'auto' = its own template when that renders tool calls (made training-ready by TRL; Qwen2.5/3, Llama 3.2, ...), else sftbc's ChatML (the tiny model, SmolLM2); 'native' = its own or an error; 'sftbc'; or a path to a .jinja with {% generation %} markers"""
    adapter: str = ""
    """LoRA adapter directory to evaluate (sftbc eval); empty = the run's own adapter/"""
    data: str = ""
    """your own demonstrations, instead of collecting them: a save_to_disk directory or a .json/.jsonl file of conversations in TRL's format (messages, tools); what bc trains on, DAgger's round 0 and distillation's first SFT"""
    merge: bool = False
    """also write a merged model to <run>/merged/"""
    report_to: str = "none"
    """experiment tracking: none, tensorboard, trackio or wandb (accelerate's trackers, into <run>/tracking/): every optimizer step's loss, learning rate and tokens/s, and every held-out evaluation"""
    tiny: TinyModelArgs = field(default_factory=TinyModelArgs)
    """the built-in model, when model=tiny"""
    lora: LoraArgs = field(default_factory=LoraArgs)
    """LoRA adapter shape"""
    teacher: TeacherArgs = field(default_factory=TeacherArgs)
    """who labels states"""
    collect: CollectArgs = field(default_factory=CollectArgs)
    """demonstration collection"""
    train: TrainArgs = field(default_factory=TrainArgs)
    """supervised fine-tuning"""
    eval: EvalArgs = field(default_factory=EvalArgs)
    """held-out evaluation"""
    dagger: DaggerArgs = field(default_factory=DaggerArgs)
    """DAgger rounds (sftbc dagger, and method dagger in sftbc compare)"""
    distill: DistillArgs = field(default_factory=DistillArgs)
    """on-policy distillation (sftbc distill, and method distill in sftbc compare)"""
    compare: CompareArgs = field(default_factory=CompareArgs)
    """the method x horizon sweep (sftbc compare)"""

    def validate(self) -> "RunConfig":
        from sftbc.envs import ENVS, env_class

        for key, refs in (("env", [self.env]), ("tiny.envs", self.tiny.envs)):
            for ref in refs:
                try:
                    env_class(ref)
                except ValueError as e:
                    raise ConfigError(f"config: {key}: {e}") from None
        if self.env not in ENVS and self.env not in self.tiny.envs:  # a user env is always in its own base's corpus
            self.tiny.envs = (*self.tiny.envs, self.env)
        env = env_class(self.env)
        dart = self.collect.noise > 0 or "dart" in self.compare.methods
        checks = [
            (self.teacher.kind != "oracle" or callable(getattr(env, "oracle_action", None)), "teacher.kind",
             f"oracle needs an env with oracle_action(); {self.env} has none: use an LM teacher (teacher.kind=hf or openai)"),
            (not dart or callable(getattr(env, "random_action", None)), "collect.noise",
             f"(DART) needs an env with random_action(); {self.env} has none"),
            (all(callable(getattr(env_class(e), "noisy_action", None)) for e in self.tiny.envs), "tiny.envs",
             "must all have noisy_action() (base pretraining plays it)"),
            (0 <= self.tiny.renamed <= 1, "tiny.renamed", "must be in [0, 1]"),
            (self.teacher.kind in ("oracle", "hf", "openai"), "teacher.kind", "must be oracle, hf or openai"),
            (self.teacher.kind != "hf" or bool(self.teacher.path), "teacher.path", "is required for kind=hf"),
            (self.teacher.kind != "openai" or bool(self.teacher.base_url), "teacher.base_url", "is required for kind=openai"),
            (not self.teacher.privileged or self.teacher.kind != "oracle", "teacher.privileged",
             "is for LM teachers (the oracle knows the layout already)"),
            (not self.teacher.privileged or getattr(env, "privileged_view", None) is not None,
             "teacher.privileged", f"needs an env with a privileged view (maze_smudged), not {self.env!r}"),
            (all(h >= 1 for h in self.collect.horizons) and self.collect.horizons, "collect.horizons", "must be a non-empty list of T >= 1"),
            (all(h >= 1 for h in self.eval.horizons) and self.eval.horizons, "eval.horizons", "must be a non-empty list of T >= 1"),
            (self.collect.episodes >= 1, "collect.episodes", "must be >= 1"),
            (self.collect.labels_per_horizon >= 0, "collect.labels_per_horizon", "must be >= 0"),
            (self.eval.episodes >= 1, "eval.episodes", "must be >= 1"),
            (self.eval.keep_episodes >= 0, "eval.keep_episodes", "must be >= 0"),
            (self.train.lr > 0, "train.lr", "must be > 0"),
            (self.train.epochs > 0, "train.epochs", "must be > 0"),
            (self.train.min_steps >= 0, "train.min_steps", "must be >= 0"),
            (self.train.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
            (self.model_dtype in ("float32", "bfloat16"), "model_dtype", "must be float32 or bfloat16"),
            (self.teacher.temperature >= 0, "teacher.temperature", "must be >= 0"),
            (self.lora.rank >= 1, "lora.rank", "must be >= 1"),
            (0 <= self.lora.dropout < 1, "lora.dropout", "must be in [0, 1)"),
            (self.eval.temperature >= 0, "eval.temperature", "must be >= 0"),
            (0 <= self.collect.noise <= 1, "collect.noise", "must be in [0, 1]"),
            (self.dagger.rounds >= 0, "dagger.rounds", "must be >= 0"),
            (self.dagger.beta in BETA_SCHEDULES, "dagger.beta", f"must be one of {', '.join(BETA_SCHEDULES)}"),
            (0 <= self.dagger.beta_decay <= 1, "dagger.beta_decay", "must be in [0, 1]"),
            (self.dagger.window >= 0, "dagger.window", "must be >= 0 (0 = all rounds)"),
            (self.dagger.round_eval_episodes >= 0, "dagger.round_eval_episodes", "must be >= 0"),
            (self.dagger.round_epochs >= 0, "dagger.round_epochs", "must be >= 0 (0 = train.epochs)"),
            (bool(self.compare.methods) and set(self.compare.methods) <= set(METHODS), "compare.methods",
             f"must be a non-empty list of {', '.join(METHODS)}"),
            (all(h >= 1 for h in self.compare.horizons) and self.compare.horizons, "compare.horizons",
             "must be a non-empty list of T >= 1"),
            (self.compare.labels >= self.dagger.rounds + 1, "compare.labels", "must give every DAgger round at least one label"),
            (0 <= self.compare.dart_noise <= 1, "compare.dart_noise", "must be in [0, 1]"),
            (bool(self.compare.seeds) and len(set(self.compare.seeds)) == len(self.compare.seeds)
             and all(0 <= s < 100 for s in self.compare.seeds), "compare.seeds", "must be a non-empty list of distinct seeds in 0..99"),
            (self.compare.baseline in METHODS, "compare.baseline", f"must be one of {', '.join(METHODS)}"),
            (_valid_shard(self.compare.shard), "compare.shard", f"must be 'i/n' with 0 <= i < n, got {self.compare.shard!r}"),
            (self.compare.teacher_tokens >= 0, "compare.teacher_tokens", "must be >= 0"),
            (self.collect.teacher_tokens_per_horizon >= 0, "collect.teacher_tokens_per_horizon", "must be >= 0"),
            (self.distill.iterations >= 1, "distill.iterations", "must be >= 1"),
            (self.distill.episodes >= 1, "distill.episodes", "must be >= 1"),
            (0 <= self.distill.lam <= 1, "distill.lam", "must be in [0, 1]"),
            (self.distill.temperature >= 0, "distill.temperature", "must be >= 0"),
            (0 <= self.distill.jsd_beta <= 1, "distill.jsd_beta", "must be in [0, 1]"),
            (self.distill.top_k >= 0, "distill.top_k", "must be >= 0 (0 = full vocabulary)"),
            (self.distill.passes >= 1, "distill.passes", "must be >= 1"),
            (self.distill.aggregate >= 0, "distill.aggregate", "must be >= 0"),
            (self.distill.lr >= 0, "distill.lr", "must be >= 0 (0 = train.lr)"),
            (0 <= self.distill.sft_share < 1, "distill.sft_share", "must be in [0, 1)"),
            (not self.distill.sft_share or self.compare.teacher_tokens or self.collect.teacher_tokens_per_horizon,
             "distill.sft_share", "needs a teacher-token budget (compare.teacher_tokens or collect.teacher_tokens_per_horizon)"),
            (self.distill.curve_every >= 0, "distill.curve_every", "must be >= 0 (0 = no learning curve)"),
            (self.distill.curve_episodes >= 1, "distill.curve_episodes", "must be >= 1"),
            (0 < self.distill.collapse_drop <= 1, "distill.collapse_drop", "must be in (0, 1]"),
            (not self.distill.keep_best or self.distill.curve_every > 0, "distill.keep_best",
             "needs distill.curve_every > 0 (the curve points are what it chooses from)"),
            ("distill" not in self.compare.methods or self.compare.teacher_tokens > 0, "compare.teacher_tokens",
             "must be > 0 when comparing distill: methods are matched on teacher forward tokens"),
            (self.teacher.kind != "oracle" or not (self.compare.teacher_tokens or self.collect.teacher_tokens_per_horizon),
             "teacher.kind", "must be hf or openai for a teacher-token budget (the oracle costs no tokens)"),
        ]
        if self.report_to != "none":
            from sftbc.track import TRACKERS, missing_package

            if self.report_to not in TRACKERS:
                raise ConfigError(f"config: report_to must be none, {', '.join(TRACKERS)}, got {self.report_to!r}")
            if package := missing_package(self.report_to):
                raise ConfigError(f"config: report_to={self.report_to} needs the {package} package: pip install {package}")
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"config: {key} {why}")
        return self


def _valid_shard(shard: str) -> bool:
    if not shard:
        return True
    i, _, n = shard.partition("/")
    return i.isdigit() and n.isdigit() and int(i) < int(n)


# -- loading ------------------------------------------------------------------------------------
def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp`, converting where YAML is looser than Python."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config: {key} must be a mapping")
        return _build(tp, value, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {key} must be a list, got {value!r}")
        inner = args[0]
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):
        return value if value is None else _coerce(value, next(a for a in args if a is not type(None)), key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"config: {key} must be {tp.__name__}, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"config: unknown key {prefix + unknown[0]!r}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value):
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config: {dotted} cannot be set, {p} is not a section")
        tree = node
    tree[leaf] = value


def load_config(path: str | None = None, overrides: list[str] = (), cls=RunConfig):
    data = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config: file {path} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a mapping at the top level")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"config: override {item!r} must look like key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set(data, key.strip(), value)
    cfg = _build(cls, data)
    return cfg.validate() if hasattr(cfg, "validate") else cfg


def _field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (Python keeps none of them: read from the source)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}


@cache
def describe(cls=None, prefix: str = "") -> str:
    """Every config key with its type, default and docstring: `sftbc <command> --help` prints it."""
    cls = cls or RunConfig
    hints, docs, lines = typing.get_type_hints(cls), _field_docs(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(describe(tp, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        shown = yaml.safe_dump(to_dict(default), default_flow_style=True).removesuffix("...\n").strip()
        head = f"{prefix}{f.name} ({kind}, default {shown})"
        lines.append(textwrap.fill(docs.get(f.name, ""), 110, initial_indent=f"  {head}: ", subsequent_indent=" " * 6))
    return "\n".join(lines)


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as {"a.b": value}: what --resume compares and trackers record."""
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def to_dict(cfg) -> dict:
    """Plain data for config.yaml (tuples become lists)."""
    def plain(x):
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg)
