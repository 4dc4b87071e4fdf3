"""How many steps until a tiny Llama learns to copy at all? A synthetic diagnostic for issue 30.

Each row: `pre` random tokens, 10 random tokens s, more random tokens, a separator, then s again; the
second s can only be predicted by copying. Prints, every 100 steps, how often the argmax writes the
second s (after its first token). Model shape as the tiny base (hidden 128, 4 heads); no tokenizer.
LOSS: `all` (every token, as base pretraining) or `copy` (only the second s after its first token: what
copying alone predicts, undiluted by the random tokens no model can predict).

    python benchmarks/probe_induction.py LAYERS LR STEPS BATCH PREFIX [LOSS]     # e.g. 4 3e-3 1500 16 40
"""

import random
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB, K = 1024, 10


def batch(rng, n: int, prefix: int) -> torch.Tensor:
    rows = []
    for _ in range(n):
        pre, s = [rng.randrange(10, VOCAB) for _ in range(prefix)], [rng.randrange(10, VOCAB) for _ in range(K)]
        rows.append(pre[:20] + s + pre[20:] + [1] + s)
    return torch.tensor(rows)


def main(layers: int, lr: float, steps: int, n: int, prefix: int, loss_on: str = "all"):
    torch.manual_seed(0)
    rng = random.Random(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=512,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=512, tie_word_embeddings=True))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    t0 = time.time()
    for step in range(1, steps + 1):
        x = batch(rng, n, prefix)
        labels = x.clone()
        if loss_on == "copy":
            labels[:, :-K + 1] = -100
        loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step % 100 == 0:
            with torch.no_grad():
                x = batch(rng, 64, prefix)
                acc = (model(input_ids=x).logits[:, -K:-1].argmax(-1) == x[:, -K + 1:]).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}, copy accuracy {acc:.3f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]), float(a[1]), int(a[2]), int(a[3]), int(a[4]), *a[5:6])
