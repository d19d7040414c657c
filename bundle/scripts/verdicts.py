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

from .attribution import display_name

__all__ = ["TIE", "fmt", "table", "jsonable", "leaders", "best", "runner_up", "verdict", "interval_status", "paired",
           "ci", "judge", "brief", "defined", "outcome"]

TIE = 1e-3  # results closer than this count as equal (e.g. S and the vanilla gradient, the same ranking for C = 2)


def fmt(value: float, digits: int = 3) -> str:
    """A number as the report prints it: ``digits`` decimals, ``n/a`` for None / NaN, ``inf`` / ``-inf``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
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


def defined(value) -> bool:
    """A score that can be compared: not None, not NaN (infinities are)."""
    return value is not None and not math.isnan(value)


def _same(a: float, b: float) -> bool:
    """Equal scores: the same value (infinities included) or finite ones within :data:`TIE`."""
    return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= TIE)


def leaders(scores: Mapping[str, float], highest: bool) -> list:
    """Every method whose score equals the highest (lowest) defined one (:func:`_same`), in the order given: an
    infinite ratio is the best possible one, not left out; NaN scores are left out."""
    comparable = {m: v for m, v in scores.items() if defined(v)}
    if not comparable:
        return []
    top = (max if highest else min)(comparable.values())
    return [m for m, v in comparable.items() if _same(v, top)]


def best(scores: Mapping[str, float], highest: bool) -> Optional[str]:
    """The first of :func:`leaders`; None when no score is defined."""
    first = leaders(scores, highest)
    return first[0] if first else None


def runner_up(scores: Mapping[str, float], ours: str, highest: bool) -> Optional[str]:
    """The best method other than ``ours``."""
    return best({m: v for m, v in scores.items() if m != ours}, highest)


def outcome(scores: Mapping[str, float], ours: str, highest: bool) -> str:
    """The kind of verdict on "``ours`` scores highest (lowest)": ``"holds"`` (ours alone leads), ``"tie"`` (others
    lead with it), ``"does not hold"`` or ``"cannot be judged"`` (ours undefined)."""
    if not defined(scores.get(ours)):
        return "cannot be judged"
    ahead = leaders(scores, highest)
    if ours not in ahead:
        return "does not hold"
    return "holds" if ahead == [ours] else "tie"


def verdict(scores: Mapping[str, float], ours: str, highest: bool) -> str:
    """The :func:`outcome` in words, methods by their display names: 'holds', 'holds only as a tie with ...',
    'does not hold: <leader> is higher (<value>)' or 'cannot be judged: ...'."""
    kind, ahead = outcome(scores, ours, highest), leaders(scores, highest)
    if kind == "cannot be judged":
        return f"cannot be judged: {display_name(ours)}'s score is undefined (n/a)"
    if kind == "does not hold":
        return (f"does not hold: {display_name(ahead[0])} is {'higher' if highest else 'lower'} "
                f"({fmt(scores[ahead[0]])})")
    tied = [m for m in ahead if m != ours]
    return "holds" if not tied else \
        f"holds only as a tie with {', '.join(map(display_name, tied))} ({fmt(scores[tied[0]])})"


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
    text = f"{display_name(ours)} minus {display_name(other)}: [{fmt(low)}, {fmt(high)}]"
    return {"tie": f"{claim}; the 95 % interval of the difference stays within +-{TIE:g} ({text})",
            "clear": f"{claim}, and the 95 % interval of the difference stays clear of 0 ({text})",
            "other way": f"{claim}; the 95 % interval of the difference is clear of 0 the other way ({text})",
            "includes 0": f"{claim}, but the 95 % interval of the difference includes 0 ({text}): not resolved by "
                          "this test set"}[status]


def judge(scores: Mapping[str, float], ours: str, differences: Mapping[str, Sequence[float]], highest: bool
          ) -> tuple:
    """The claim "``ours`` scores highest (``highest``) / lowest": ``(its verdict weighed by the paired interval
    against the best other method, whether it holds with that interval clear of 0)``. A tie never holds clear."""
    ahead = leaders(scores, highest)
    alone = ahead == [ours]
    other = runner_up(scores, ours, highest) if ours in ahead else (ahead[0] if ahead else None)
    sign = 1.0 if highest else -1.0
    text = paired(verdict(scores, ours, highest), differences, ours, other, sign)
    return text, alone and interval_status(differences, other, sign) == "clear"


def brief(scores: Mapping[str, float], ours: str, differences: Mapping[str, Sequence[float]], highest: bool) -> str:
    """The claim "``ours`` scores highest (lowest)" in a few words, for lists of verdicts: ``the highest, clear of 0
    against X`` / ``tied with X (v)`` / ``X is higher (v), clear of 0`` (what the paired interval against the best
    other method says), ``n/a`` when ours is undefined."""
    kind, ahead = outcome(scores, ours, highest), leaders(scores, highest)
    if kind == "cannot be judged":
        return "n/a"
    sign = 1.0 if highest else -1.0
    if kind == "tie":
        tied = [m for m in ahead if m != ours]
        return f"tied with {', '.join(map(display_name, tied))} ({fmt(scores[tied[0]])})"
    if kind == "holds":
        other = runner_up(scores, ours, highest)
        status = interval_status(differences, other, sign)
        head = "the highest" if highest else "the lowest"
        return head + {"clear": f", clear of 0 against {display_name(other)}",
                       "includes 0": f", not resolved against {display_name(other)}",
                       "tie": f", within +-{TIE:g} of {display_name(other)}"}.get(status, "")
    status = interval_status(differences, ahead[0], sign)
    return (f"{display_name(ahead[0])} is {'higher' if highest else 'lower'} ({fmt(scores[ahead[0]])})"
            + {"other way": ", clear of 0", "includes 0": ", not resolved",
               "tie": f", within +-{TIE:g}"}.get(status, ""))
