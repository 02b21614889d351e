"""A deterministic pairwise covering design: every value of every axis appears, and every pair
of values of any two axes appears together in at least one case (far fewer cases than the full
cartesian product, which interpreted Triton and compiled CPU variants could not afford)."""

from __future__ import annotations

import itertools
import random


def pairwise(axes: dict[str, list], seed: int = 0) -> list[dict]:
    names = list(axes)
    uncovered = {
        (a, va, b, vb)
        for a, b in itertools.combinations(range(len(names)), 2)
        for va in range(len(axes[names[a]]))
        for vb in range(len(axes[names[b]]))
    }
    rng = random.Random(seed)
    cases = []
    while uncovered:
        # start from an uncovered pair, then fill the other axes greedily (ties broken by rng)
        a, va, b, vb = min(uncovered)
        choice = {a: va, b: vb}
        order = [i for i in range(len(names)) if i not in choice]
        rng.shuffle(order)
        for i in order:

            def gain(v):
                return sum(
                    ((min(i, j), v if i < j else choice[j], max(i, j), choice[j] if i < j else v) in uncovered)
                    for j in choice
                )

            values = list(range(len(axes[names[i]])))
            rng.shuffle(values)
            choice[i] = max(values, key=gain)
        for x, y in itertools.combinations(sorted(choice), 2):
            uncovered.discard((x, choice[x], y, choice[y]))
        cases.append({names[i]: axes[names[i]][choice[i]] for i in range(len(names))})
    return cases


def case_id(case: dict) -> str:
    return "-".join(f"{k}={v}".replace("torch.", "") for k, v in case.items())
