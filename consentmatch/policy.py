"""Decision defaults: tolerance, result sizes, face-size floors. One place to read and tune them."""

from __future__ import annotations

import math

from .errors import InvalidArgumentError

__all__ = [
    "DEFAULT_TOLERANCE",
    "DEFAULT_TOP_K",
    "ENROLL_MIN_FACE_PX",
    "PROBE_MIN_FACE_PX",
    "check_tolerance",
    "check_top_k",
]

#: dlib's own threshold for its 128-d model: "Lower is more strict. 0.6 is typical best performance."
DEFAULT_TOLERANCE = 0.6
DEFAULT_TOP_K = 5
#: Enrollment faces narrower than this give weak templates and are refused.
ENROLL_MIN_FACE_PX = 80
#: Probes are searched for faces down to this width (face_recognition's reach with upsample 1).
PROBE_MIN_FACE_PX = 40


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
