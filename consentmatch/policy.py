"""Rules and defaults: tolerance, face sizes, and the gallery policy, declared once as a table.

`POLICY` holds one `PolicyKey` per key (name, default, parser, help). It drives validation
(`parse_policy_value`), `consentmatch policy show` and `policy set --help`, and the README's
table (a test keeps the README in step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .consent import check_purpose
from .errors import InvalidArgumentError
from .geo import ISO_REGION

__all__ = [
    "DEFAULT_MAX_TOP_K",
    "DEFAULT_TOLERANCE",
    "DEFAULT_TOP_K",
    "ENROLL_MIN_FACE_PX",
    "EVIDENCE_REQUIRED",
    "POLICY",
    "PROBE_MIN_FACE_PX",
    "QUALITY_SETTINGS",
    "PolicyKey",
    "check_min_face",
    "check_policy_tolerance",
    "check_policy_top_k",
    "check_tolerance",
    "check_top_k",
    "default_policy",
    "parse_policy_value",
    "policy_table",
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


def check_policy_tolerance(tolerance: float, policy: dict[str, Any]) -> float:
    """Raises InvalidArgumentError when tolerance is over the policy's `max_tolerance` (null: its
    `tolerance`): a loose tolerance turns off the rounding of near misses and names strangers."""
    limit = float(policy["max_tolerance"] if policy["max_tolerance"] is not None else policy["tolerance"])
    if tolerance > limit:
        raise InvalidArgumentError(
            f"Tolerance {tolerance:g} is over this gallery's limit of {limit:g} (policy max_tolerance): a looser "
            f"tolerance names strangers; use at most {limit:g}, or raise the limit "
            "(`consentmatch policy set max_tolerance T`)."
        )
    return tolerance


def check_min_face(min_face_px: int) -> int:
    """Raises InvalidArgumentError unless 1 <= min_face_px <= 10000."""
    if not (isinstance(min_face_px, int) and 1 <= min_face_px <= 10_000):
        raise InvalidArgumentError(f"min_face_px {min_face_px!r} is out of range: use 1 to 10000 (pixels).")
    return min_face_px


# -- parsers: a CLI string or a Python value in, the stored JSON value out --------------------


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise InvalidArgumentError(f"{key} takes true or false, not {value!r}.")


def _regions(key: str, value: Any) -> list[str]:
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
    regions = sorted({str(item).strip().upper() for item in items if str(item).strip()})
    bad = [r for r in regions if not ISO_REGION.match(r)]
    if bad:
        raise InvalidArgumentError(f"{', '.join(bad)}: not ISO 3166 codes; write e.g. US-IL,US-TX or FR.")
    return regions


def _number(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{key} takes a number such as 0.6, not {value!r}.") from None
    return number


def _distance(key: str, value: Any) -> float:
    return check_tolerance(_number(key, value))


def _cap(key: str, value: Any) -> float | None:
    if value is None or str(value).strip().lower() in ("null", "none", ""):
        return None
    return _distance(key, value)


def _margin(key: str, value: Any) -> float:
    number = _number(key, value)
    if not (math.isfinite(number) and 0 <= number < 2):
        raise InvalidArgumentError(f"{key} takes a distance in [0, 2), e.g. 0.05 (0 turns it off), not {value!r}.")
    return number


def _quality(key: str, value: Any) -> str:
    level = str(value).strip().lower()
    if level not in QUALITY_SETTINGS:
        raise InvalidArgumentError(f"{key} takes one of {', '.join(QUALITY_SETTINGS)}, not {value!r}.")
    return level


def _purposes(key: str, value: Any) -> list[str]:
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
    return sorted({check_purpose(str(item)) for item in items if str(item).strip()})


def _whole(low: int, high: int, example: int) -> Callable[[str, Any], int]:
    def parse(key: str, value: Any) -> int:
        try:
            number = int(str(value).strip()) if not isinstance(value, bool) else 0
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise InvalidArgumentError(f"{key} takes a whole number from {low} to {high}, e.g. {example}, not {value!r}.")
        return number

    return parse


@dataclass(frozen=True)
class PolicyKey:
    """One policy key: its default (as stored, JSON), how a given value is checked, what it does."""

    name: str
    default: Any
    parse: Callable[[str, Any], Any]
    help: str


POLICY: tuple[PolicyKey, ...] = (
    PolicyKey("require_purpose", True, _boolean,
              "match and verify must name a purpose (GDPR Art. 9: consent is for specified purposes)"),
    PolicyKey("excluded_regions", [], _regions,
              "ISO 3166 codes (e.g. US-IL) where enrollment photos may not have been taken, by EXIF GPS"),
    PolicyKey("tolerance", DEFAULT_TOLERANCE, _distance,
              "the default tolerance of match and verify: the largest distance counted as the same person"),
    PolicyKey("max_tolerance", None, _cap,
              "the largest tolerance a search may pass: looser ones are refused (null: the policy's `tolerance`)"),
    PolicyKey("ambiguity_margin", 0.0, _margin,
              "two best subjects closer than this are \"ambiguous\" and no identity is given (0: off)"),
    PolicyKey("duplicate_tolerance", DEFAULT_DUPLICATE_TOLERANCE, _distance,
              "an enrollment is refused when another subject's template is this near"),
    PolicyKey("quality", "medium", _quality,
              "the quality bar of enrollment photos: off, low, medium or high (CONSENTMATCH_QUALITY sets the default)"),
    PolicyKey("max_top_k", DEFAULT_MAX_TOP_K, _whole(1, 1000, DEFAULT_MAX_TOP_K),
              "the most subjects match lists per face: no browsing a purpose's roster"),
    PolicyKey("closed_purposes", False, _boolean,
              "consents may list only declared purposes (`consentmatch purpose add`); false: a consent declares its own"),
    PolicyKey("approval_purposes", [], _purposes,
              "purposes whose searches need a department's approval: a match or verify becomes a request an approver decides"),
    PolicyKey("request_ttl_hours", 72, _whole(1, 8760, 72),
              "hours a search request waits for a decision before it expires (its held probe destroyed)"),
    PolicyKey("rate_limit", 600, _whole(1, 1_000_000, 600),
              "requests a minute each API key of the service may make (a key's own `--rate-limit` overrides it)"),
    PolicyKey("idempotency_ttl_hours", 24, _whole(1, 8760, 24),
              "hours the service keeps the answer to a call made with an Idempotency-Key, for its retries (then erased)"),
)
_KEYS = {key.name: key for key in POLICY}


def default_policy(quality: str | None = None) -> dict[str, Any]:
    """The defaults; `quality` (Settings.quality, from CONSENTMATCH_QUALITY) overrides the bar's."""
    policy = {key.name: key.default for key in POLICY}
    if quality in QUALITY_SETTINGS:
        policy["quality"] = quality
    return policy


def parse_policy_value(key: str, value: Any) -> Any:
    """A policy value checked and normalised; strings (from the CLI) are parsed.

    Raises:
        InvalidArgumentError: unknown key or bad value.
    """
    declared = _KEYS.get(key)
    if declared is None:
        raise InvalidArgumentError(f"'{key}' is not a policy key: use one of {', '.join(sorted(_KEYS))}.")
    return declared.parse(key, value)


def policy_table() -> str:
    """The keys as a Markdown table: the README's, and `policy set --help`'s."""
    rows = [f"| `{k.name}` | `{_json(k.default)}` | {k.help} |" for k in POLICY]
    return "\n".join(["| key | default | what it does |", "| --- | --- | --- |", *rows])


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
