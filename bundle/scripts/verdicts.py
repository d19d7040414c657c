# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""How the report words numbers and judges a claim from them (engine glue, floor 3 of DESIGN.md): number formats,
Markdown tables, and the verdict of "ours is best" weighed by the paired bootstrap interval. Every control's
report section (``scripts.controls``) and the report itself (``scripts.report``) word their findings through these,
so a sentence is only ever printed from the numbers it states."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["TIE", "fmt", "table", "jsonable", "best", "runner_up", "verdict", "interval_status", "paired", "ci",
           "judge"]

TIE = 1e-3  # results closer than this count as equal (e.g. S and the vanilla gradient, the same ranking for C = 2)


def fmt(value: float, digits: int = 3) -> str:
    """A number as the report prints it: ``digits`` decimals, ``n/a`` for None / NaN, ``inf``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def jsonable(value):
    """Plain JSON (no NaN / Infinity literals, which strict parsers reject): non-finite floats become null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ci(interval: Optional[Sequence[float]], scale: float = 1.0) -> str:
    """`` [low, high]`` of an interval, scaled; empty where there is none."""
    if interval is None:
        return ""
    low, high = interval
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return ""
    digits = 1 if scale != 1 else 3
    return f" [{fmt(scale * low, digits)}, {fmt(scale * high, digits)}]"


def best(scores: Mapping[str, float], highest: bool) -> Optional[str]:
    """The method with the highest (lowest) finite score; None when none is finite."""
    finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    return (max if highest else min)(finite, key=finite.get)


def runner_up(scores: Mapping[str, float], ours: str, highest: bool) -> Optional[str]:
    """The best method other than ``ours``."""
    return best({m: v for m, v in scores.items() if m != ours}, highest)


def verdict(scores: Mapping[str, float], ours: str, winner: Optional[str], direction: str) -> str:
    """'holds', 'holds only as a tie with ...' or 'does not hold: <winner> is <direction> (<value>)'."""
    if winner == ours:
        return "holds"
    if winner is not None and math.isfinite(scores[ours]) and abs(scores[winner] - scores[ours]) <= TIE:
        return f"holds only as a tie with {winner} ({fmt(scores[winner])})"
    return f"does not hold: {winner} is {direction} ({fmt(scores[winner]) if winner else 'n/a'})"


def interval_status(differences: Mapping[str, Sequence[float]], other: Optional[str], sign: float) -> Optional[str]:
    """What the paired bootstrap interval of ours minus ``other`` says in the claimed direction (``sign`` +1: ours
    higher): ``"tie"`` (within +-TIE), ``"clear"`` (clear of 0 that way), ``"other way"`` or ``"includes 0"``;
    None without an interval."""
    if other is None or other not in differences:
        return None
    low, high = differences[other]
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return None
    if max(abs(low), abs(high)) <= TIE:  # the same ranking (e.g. S and the gradient for C = 2): round-off only
        return "tie"
    if (sign > 0 and low > TIE) or (sign < 0 and high < -TIE):
        return "clear"
    if (sign > 0 and high < -TIE) or (sign < 0 and low > TIE):
        return "other way"
    return "includes 0"


def paired(claim: str, differences: Mapping[str, Sequence[float]], ours: str, other: Optional[str],
           sign: float) -> str:
    """Add to a verdict what the paired bootstrap interval of ``ours`` minus ``other`` says
    (:func:`interval_status`)."""
    status = interval_status(differences, other, sign)
    if status is None:
        return claim
    low, high = differences[other]
    text = f"{ours} minus {other}: [{fmt(low)}, {fmt(high)}]"
    return {"tie": f"{claim}; the 95 % interval of the difference stays within +-{TIE:g} ({text})",
            "clear": f"{claim}, and the 95 % interval of the difference stays clear of 0 ({text})",
            "other way": f"{claim}; the 95 % interval of the difference is clear of 0 the other way ({text})",
            "includes 0": f"{claim}, but the 95 % interval of the difference includes 0 ({text}): not resolved by "
                          "this test set"}[status]


def judge(scores: Mapping[str, float], ours: str, differences: Mapping[str, Sequence[float]], highest: bool
          ) -> tuple:
    """The claim "``ours`` scores highest (``highest``) / lowest": ``(its verdict weighed by the paired interval
    against the best other method, whether it holds with that interval clear of 0)``."""
    winner = best(scores, highest)
    other = runner_up(scores, ours, highest) if winner == ours else winner
    sign = 1.0 if highest else -1.0
    text = paired(verdict(scores, ours, winner, "higher" if highest else "lower"), differences, ours, other, sign)
    return text, winner == ours and interval_status(differences, other, sign) == "clear"
