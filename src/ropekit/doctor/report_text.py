"""report_text: the text ``ropekit doctor`` prints for a checkpoint and for two checkpoints.

>>> from ropekit.doctor.checkpoint_report import CheckpointReport, Reading
>>> print(checkpoint_text(CheckpointReport("m", [Reading("ropekit", None, "half r=64/64 base=10000")])))
m
  ropekit: half r=64/64 base=10000
  no disagreement found
"""

from __future__ import annotations

__all__ = ["checkpoint_text", "checkpoint_pair_text"]


def checkpoint_text(report) -> str:
    lines = [report.path]
    width = max(len(r.framework) for r in report.readings) if report.readings else 0
    for r in report.readings:
        lines.append(f"  {r.framework + ':':{width + 1}s} {r.text}")
    for f in report.findings:
        mark = "!" if f.problem else "-"
        lines.append(f"  {mark} {f.kind}: {f.text}")
        if f.fix:
            for line in f.fix.splitlines():
                lines.append(f"      fix: {line}")
    if not report.problems:
        lines.append("  no disagreement found")
    return "\n".join(lines)


def checkpoint_pair_text(diff, layouts) -> str:
    """Two checkpoints of one model: their layouts and the q/k row permutation between them."""
    lines = []
    for name, res in layouts:
        if res is not None:
            lines.append(f"{name}: q/k weights {res.summary()}")
    lines.append(diff.report())
    return "\n".join(lines)
