"""sftbc: supervised fine-tuning of LLM agents as behavioral cloning, with DAgger and on-policy distillation.

What an env written outside the package needs: `from sftbc import ToolEnv, BadCall, tool_call`.
"""

__version__ = "0.1.0"
__all__ = ["ToolEnv", "BadCall", "Message", "tool_call"]


def __getattr__(name):  # lazily: `import sftbc` (the CLI's first step) does not pull in transformers
    if name in ("ToolEnv", "BadCall"):
        from sftbc import envs

        return getattr(envs, name)
    if name in ("Message", "tool_call"):
        from sftbc import types

        return getattr(types, name)
    raise AttributeError(f"module 'sftbc' has no attribute {name!r}")
