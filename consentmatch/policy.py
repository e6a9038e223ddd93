"""Rules and defaults: tolerance, face sizes, the gallery policy keys, retention by jurisdiction.

Retention (`destroy_by`) follows the statute of the subject's jurisdiction; the earliest date
of the rules that apply wins:

- US-IL, BIPA 740 ILCS 14/15(a): when the purpose is satisfied (the consent's end), or 3 years
  after the subject's last interaction (enrollment, or a match or verify that returned them).
- US-TX, CUBI Bus. & Com. Code 503.001(c)(3): 1 year after the purpose ends.
- US-WA, RCW 19.375.020(4), GDPR Art. 5(1)(e) and everywhere else: the consent's term.
- No jurisdiction recorded: the strictest of all of them.

A subject is kept as long as one of their unrevoked consents justifies it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import InvalidArgumentError

__all__ = [
    "DEFAULT_MAX_TOP_K",
    "DEFAULT_POLICY",
    "DEFAULT_TOLERANCE",
    "DEFAULT_TOP_K",
    "ENROLL_MIN_FACE_PX",
    "EVIDENCE_REQUIRED",
    "PROBE_MIN_FACE_PX",
    "ConsentTerm",
    "check_min_face",
    "check_policy_top_k",
    "check_tolerance",
    "default_policy",
    "check_top_k",
    "destroy_by",
    "parse_policy_value",
]

#: dlib's own threshold for its 128-d model: "Lower is more strict. 0.6 is typical best performance."
DEFAULT_TOLERANCE = 0.6
DEFAULT_TOP_K = 5
#: The most subjects a match may list per face, unless the policy's `max_top_k` says otherwise.
DEFAULT_MAX_TOP_K = 10
#: Enrollment faces narrower than this give weak templates and are refused.
ENROLL_MIN_FACE_PX = 80
#: Probes are searched for faces down to this width (face_recognition's reach with upsample 1).
PROBE_MIN_FACE_PX = 40

#: Jurisdictions whose statute requires a written release: a consent there must carry evidence.
EVIDENCE_REQUIRED = {"US-IL": "BIPA 740 ILCS 14/15(b)(3)", "US-TX": "CUBI 503.001(b)"}

#: A new face within this distance of another subject's template is a duplicate enrollment.
DEFAULT_DUPLICATE_TOLERANCE = 0.5
QUALITY_SETTINGS = ("off", "low", "medium", "high")

#: A gallery's policy keys and their defaults (`consentmatch policy show`).
DEFAULT_POLICY: dict[str, Any] = {
    "require_purpose": True,  # match/verify must name a purpose
    "excluded_regions": [],  # ISO 3166 codes where enrollment photos may not have been taken
    "tolerance": DEFAULT_TOLERANCE,  # the default tolerance of match and verify
    "ambiguity_margin": 0.0,  # two best subjects closer than this: "ambiguous", no identity (0: off)
    "duplicate_tolerance": DEFAULT_DUPLICATE_TOLERANCE,  # enrollment refused if another subject is this near
    "quality": "medium",  # the quality bar (off, low, medium, high); CONSENTMATCH_QUALITY sets the default
    "max_top_k": DEFAULT_MAX_TOP_K,  # the most subjects match lists per face: no browsing a purpose's roster
}


def default_policy() -> dict[str, Any]:
    """The defaults, with CONSENTMATCH_QUALITY read at call time."""
    policy = dict(DEFAULT_POLICY)
    configured = os.environ.get("CONSENTMATCH_QUALITY", "").strip().lower()
    if configured in QUALITY_SETTINGS:
        policy["quality"] = configured
    return policy

_REGION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")
_YEAR = timedelta(days=365)


def check_tolerance(tolerance: float) -> float:
    """Raises InvalidArgumentError unless 0 < tolerance <= 2 (unit vectors are at most 2 apart)."""
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and 0 < tolerance <= 2):
        raise InvalidArgumentError(f"Tolerance {tolerance!r} is out of range: use a distance in (0, 2], typically 0.6.")
    return float(tolerance)


def check_top_k(top_k: int) -> int:
    """Raises InvalidArgumentError unless 1 <= top_k <= 1000."""
    if not (isinstance(top_k, int) and 1 <= top_k <= 1000):
        raise InvalidArgumentError(f"top_k {top_k!r} is out of range: use 1 to 1000.")
    return top_k


def check_policy_top_k(top_k: int, policy: dict[str, Any]) -> int:
    """Raises InvalidArgumentError when top_k is over the policy's `max_top_k`: a long list of
    the nearest subjects would list a purpose's whole roster to anyone who may match."""
    limit = int(policy["max_top_k"])
    if top_k > limit:
        raise InvalidArgumentError(
            f"top_k {top_k} is over this gallery's limit of {limit} (policy max_top_k): ask for fewer, "
            "or raise the limit (`consentmatch policy set max_top_k N`)."
        )
    return top_k


def check_min_face(min_face_px: int) -> int:
    """Raises InvalidArgumentError unless 1 <= min_face_px <= 10000."""
    if not (isinstance(min_face_px, int) and 1 <= min_face_px <= 10_000):
        raise InvalidArgumentError(f"min_face_px {min_face_px!r} is out of range: use 1 to 10000 (pixels).")
    return min_face_px


def parse_policy_value(key: str, value: Any) -> Any:
    """A policy value checked and normalised; strings (from the CLI) are parsed.

    Raises:
        InvalidArgumentError: unknown key or bad value.
    """
    if key not in DEFAULT_POLICY:
        raise InvalidArgumentError(f"'{key}' is not a policy key: use one of {', '.join(sorted(DEFAULT_POLICY))}.")
    if key == "require_purpose":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise InvalidArgumentError(f"require_purpose takes true or false, not {value!r}.")
    if key == "excluded_regions":
        items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
        regions = sorted({str(item).strip().upper() for item in items if str(item).strip()})
        bad = [r for r in regions if not _REGION.match(r)]
        if bad:
            raise InvalidArgumentError(f"{', '.join(bad)}: not ISO 3166 codes; write e.g. US-IL,US-TX or FR.")
        return regions
    if key == "max_top_k":
        try:
            limit = int(str(value).strip()) if not isinstance(value, bool) else 0
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise InvalidArgumentError(f"max_top_k takes a whole number from 1 to 1000, e.g. 10, not {value!r}.")
        return limit
    if key == "quality":
        level = str(value).strip().lower()
        if level not in QUALITY_SETTINGS:
            raise InvalidArgumentError(f"quality takes one of {', '.join(QUALITY_SETTINGS)}, not {value!r}.")
        return level
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{key} takes a number such as 0.6, not {value!r}.") from None
    if key == "ambiguity_margin":
        if not (math.isfinite(number) and 0 <= number < 2):
            raise InvalidArgumentError(f"ambiguity_margin takes a distance in [0, 2), e.g. 0.05 (0 turns it off), not {value!r}.")
        return number
    return check_tolerance(number)


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
