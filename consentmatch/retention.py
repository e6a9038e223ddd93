"""Retention by jurisdiction: when a subject's templates must be destroyed.

`destroy_by` follows the statute of the subject's jurisdiction; the earliest date of the rules
that apply wins:

- US-IL, BIPA 740 ILCS 14/15(a): when the purpose is satisfied (the consent's end), or 3 years
  after the subject's last interaction (enrollment, or a match or verify that returned them).
- US-TX, CUBI Bus. & Com. Code 503.001(c)(3): 1 year after the purpose ends.
- US-WA, RCW 19.375.020(4), GDPR Art. 5(1)(e) and everywhere else: the consent's term.
- No jurisdiction recorded: the strictest of all of them.

A subject is kept as long as one of their unrevoked consents justifies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["ConsentTerm", "destroy_by"]

_YEAR = timedelta(days=365)  # a leap day in between makes the date a day early: never late


@dataclass(frozen=True)
class ConsentTerm:
    """What retention needs of one unrevoked consent."""

    jurisdiction: str | None
    expires_at: datetime | None


def destroy_by(
    terms: Sequence[ConsentTerm], enrolled_at: datetime, last_interaction: datetime | None
) -> tuple[datetime | None, str]:
    """When a subject's templates must be destroyed, and the rule that says so.

    Returns (None, reason) when no rule sets a date (a consent without an end, outside BIPA).
    With no unrevoked consent the date is the enrollment itself: nothing justifies keeping them.
    """
    if not terms:
        return enrolled_at, "no unrevoked consent"
    interaction = max(enrolled_at, last_interaction or enrolled_at)
    # Each consent justifies keeping the templates until its own date; the latest one wins.
    dates = [_consent_deadline(term, interaction) for term in terms]
    if any(date is None for date, _ in dates):
        return None, next(rule for date, rule in dates if date is None)
    return max(((d, r) for d, r in dates if d is not None), key=lambda pair: pair[0])


def _later(moment: datetime, years: int) -> datetime:
    """`years` after `moment`, saturating at the end of representable time (a consent to 9999)."""
    try:
        return moment + years * _YEAR
    except OverflowError:
        return datetime.max.replace(tzinfo=moment.tzinfo)


def _consent_deadline(term: ConsentTerm, interaction: datetime) -> tuple[datetime | None, str]:
    code = term.jurisdiction or ""
    bipa = (_later(interaction, 3), "BIPA 15(a): 3 years after the last interaction")
    end = (term.expires_at, "end of the consented purpose") if term.expires_at else None
    if code == "US-IL":
        candidates = [bipa] + ([end] if end else [])
    elif code == "US-TX":
        if not term.expires_at:
            return None, "CUBI 503.001(c)(3): purpose has no end date"
        candidates = [(_later(term.expires_at, 1), "CUBI 503.001(c)(3): 1 year after the purpose ends")]
    elif code:
        if not end:
            return None, f"{code}: consent has no end date"
        candidates = [(end[0], f"{code}: end of the consent's term")]
    else:  # no jurisdiction recorded: the strictest rule
        candidates = [(bipa[0], "strictest (no jurisdiction): 3 years after the last interaction")]
        if end:
            candidates.append((end[0], "strictest (no jurisdiction): end of the consented purpose"))
    date, rule = min(candidates, key=lambda pair: pair[0] or datetime.max)
    return date, rule
