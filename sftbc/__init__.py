"""sftbc: supervised fine-tuning of LLM agents as behavioral cloning, with DAgger and on-policy distillation."""

__version__ = "0.1.0"
