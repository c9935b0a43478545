"""The table printed when training ends."""

from __future__ import annotations

COLUMNS = [("l0", "L0", "{:.1f}"), ("fvu", "FVU", "{:.4f}"), ("mse", "MSE", "{:.4g}"),
           ("dead_fraction", "dead", "{:.1%}"), ("tokens", "tokens", "{:,.0f}"),
           ("tokens_per_second", "tok/s", "{:,.0f}")]


def print_summary(members, final: dict[str, dict[str, float]]) -> None:
    rows = [[m.name] + [fmt.format(final[m.name].get(k, float("nan"))) for k, _, fmt in COLUMNS]
            + [str(m.dir)] for m in members if m.name in final]
    header = ["member"] + [title for _, title, _ in COLUMNS] + ["output"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join
    print("\n" + line(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print(line(c.ljust(w) for c, w in zip(r, widths, strict=True)))
