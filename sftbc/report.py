"""Tables for the terminal and for markdown reports."""

from __future__ import annotations

COLUMNS = [("horizon", "T", "{}"), ("episodes", "episodes", "{}"), ("success_rate", "success", "{:.3f}"),
           ("mistakes_mean", "mistakes/ep", "{:.3f}"), ("eps", "eps", "{:.4f}"), ("steps_mean", "steps/ep", "{:.2f}")]


def eval_table(rows: list[dict], markdown: bool = False) -> str:
    header = [title for _, title, _ in COLUMNS]
    body = [[fmt.format(r[key]) for key, _, fmt in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])
