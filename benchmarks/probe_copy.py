"""The copy probe (sftbc/probe.py) on any model and envs: not a speed benchmark, a diagnostic.

`sftbc base` runs it on the tiny base it builds; this runs it on a fetched or local model too, e.g.
the pretrained fallback. Writes benchmarks/results/probe_copy-<model>.json.

    python benchmarks/probe_copy.py smollm2-135m maze calc examples/orders/orders.py:Orders
    python benchmarks/probe_copy.py ~/.cache/sftbc/models/tiny-<hash> maze
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from common import write_results

from sftbc.models import load_model, load_tokenizer, resolve_model_path
from sftbc.probe import copy_probe


def main(model: str, envs: list[str]) -> dict:
    path = resolve_model_path(model)
    tok, lm = load_tokenizer(path), load_model(path)
    scores = [copy_probe(lm, tok, env) for env in envs]
    for s in scores:
        print(s.line())
    out = {"model": model, "scores": [asdict(s) for s in scores]}
    write_results(Path(__file__).parent / "results" / f"probe_copy-{Path(path).name}.json", out)
    return out


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
