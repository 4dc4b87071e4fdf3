"""Does a base model copy? Not a speed benchmark: a diagnostic of the skill every maze decision rests on.

Builds (or reuses from the cache) the built-in tiny base with the given TinyModelArgs overrides, then
scores oracle demonstrations of the maze at T = 1, 8, 32: the mean negative log-likelihood of each door
or code colour the expert writes (ln 8 = 2.079 is a uniform guess over the 8 colours) and how often the
colour is the model's argmax. Writes benchmarks/results/probe_copy-<tiny dir>.json.

    python benchmarks/probe_copy.py                 # the default base
    python benchmarks/probe_copy.py epochs=6.0      # the same corpus, three times the passes
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from common import write_results

from sftbc.config import load_config
from sftbc.envs import eval_seeds
from sftbc.envs.maze import COLORS
from sftbc.models import build_tiny, load_model, load_tokenizer
from sftbc.render import to_chat, tokenize_conversation
from sftbc.rollout import rollout
from sftbc.teachers import OracleTeacher


def main(overrides: list[str]) -> dict:
    path = build_tiny(load_config(None, [f"tiny.{o}" for o in overrides]).tiny)  # checked as `sftbc` checks them
    tok, model = load_tokenizer(str(path)), load_model(str(path))
    model.eval()
    colours = {tok.convert_tokens_to_ids(c) for c in COLORS}
    rows = []
    for T in (1, 8, 32):
        nll, right, n = 0.0, 0, 0
        for traj in rollout("maze", T, eval_seeds(6), OracleTeacher(), None, beta=1.0):
            ids, mask = tokenize_conversation(tok, to_chat(traj.messages), traj.tools)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            for q in range(1, len(ids)):
                if mask[q] and ids[q] in colours:  # a colour the expert wrote: copied from the latest note
                    nll -= logp[q - 1, ids[q]].item()
                    right += int(logp[q - 1].argmax() == ids[q])
                    n += 1
        rows.append({"T": T, "colours": n, "nll": round(nll / n, 3), "argmax_right": round(right / n, 3)})
        print(f"T={T:>2}: {n:>3} colours, NLL {rows[-1]['nll']:.3f} (uniform 2.079), argmax right {rows[-1]['argmax_right']:.2f}")
    out = {"model": path.name, "overrides": overrides, "rows": rows}
    write_results(Path(__file__).parent / "results" / f"probe_copy-{path.name}.json", out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
