"""Where results go: an atomic CSV, a markdown table (x clone), a PNG chart."""

from __future__ import annotations

import csv
import os

__all__ = ["write_csv", "markdown", "plot"]


def write_csv(rows: list[dict], path: str) -> None:
    """Atomically (a temp file, then a rename): an interrupted run leaves no half-written CSV."""
    fields = []
    for row in rows:
        fields += [f for f in row if f not in fields]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def markdown(rows: list[dict]) -> str:
    """The CPU rows as a table: one line per (dtype, shape), one column per provider (x clone).

    >>> print(markdown([dict(dtype="float32", shape="S=4", provider="clone", seconds=1e-3, ratio_to_clone=1.0)]))
    | dtype | shape | clone (ms) |
    |---|---|---|
    | float32 | S=4 | 1.00x (1.000) |
    """
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    lines = [
        "| dtype | shape | " + " | ".join(f"{p} (ms)" for p in providers) + " |",
        "|---|---|" + "---|" * len(providers),
    ]
    for key in dict.fromkeys((r["dtype"], r["shape"]) for r in rows):
        cells = {r["provider"]: r for r in rows if (r["dtype"], r["shape"]) == key}
        line = [
            f"{cells[p]['ratio_to_clone']:.2f}x ({cells[p]['seconds'] * 1e3:.3f})" if p in cells else ""
            for p in providers
        ]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(line) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Bar chart of time / clone per shape, one panel per dtype (needs matplotlib)."""
    from ..errors import require

    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != "clone"]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        shapes = list(dict.fromkeys(r["shape"] for r in rows if r["dtype"] == dtype))
        width = 0.8 / max(1, len(providers))
        for i, p in enumerate(providers):
            ys = [
                next(
                    (r["ratio_to_clone"] for r in rows if (r["dtype"], r["shape"], r["provider"]) == (dtype, s, p)), 0.0
                )
                for s in shapes
            ]
            ax.bar([j + i * width for j in range(len(shapes))], ys, width, label=p)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.2, color="k", lw=0.8, ls=":")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes)
        ax.set_yscale("log")
        ax.set_ylabel("time / clone() (log; 1 = a copy)")
        ax.set_title(f"RoPE q+k, Llama-3-8B heads, {dtype}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
