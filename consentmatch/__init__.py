"""consentmatch: consent-based face matching. Only faces enrolled with a recorded consent.

Importing is instant and side-effect free: the face models load on first use.
"""

from typing import TYPE_CHECKING, Any

from .consent import Consent
from .errors import (
    AccessError,
    ApprovalRequiredError,
    AuthenticationError,
    ConsentError,
    ConsentMatchError,
    EncryptionKeyError,
    EngineError,
    FaceError,
    FaceTooSmallError,
    GalleryNotFoundError,
    ImageError,
    InvalidArgumentError,
    ManifestError,
    MultipleFacesError,
    NoActiveEnrollmentError,
    NoFaceError,
    PermissionDeniedError,
    PolicyError,
    QualityError,
    RateLimitError,
    RequestNotFoundError,
    StorageError,
    SubjectNotFoundError,
    TamperingError,
    UnknownReferenceError,
)
from .results import (
    ApiKeyInfo,
    AuditCheck,
    AuditEvent,
    Box,
    Candidate,
    ConsentRecord,
    Enrollment,
    Erasure,
    FaceMatch,
    ImportReport,
    KeyInfo,
    MatchResult,
    NewApiKey,
    OptOut,
    PurposeInfo,
    Rejection,
    RetentionEntry,
    SearchRequest,
    SubjectInfo,
    Verification,
)

if TYPE_CHECKING:
    from .gallery import Gallery
    from .runners import RayRunner

from ._version import __version__


def __getattr__(name: str) -> Any:
    # Gallery pulls in numpy, FAISS and Pillow: load them when it is first asked for.
    if name == "Gallery":
        from .gallery import Gallery

        return Gallery
    if name == "RayRunner":  # ray itself loads only when a RayRunner is made
        from .runners import RayRunner

        return RayRunner
    raise AttributeError(f"module 'consentmatch' has no attribute {name!r}")


__all__ = [
    "AccessError",
    "ApiKeyInfo",
    "ApprovalRequiredError",
    "AuditCheck",
    "AuditEvent",
    "AuthenticationError",
    "Box",
    "Candidate",
    "Consent",
    "ConsentError",
    "ConsentMatchError",
    "ConsentRecord",
    "EncryptionKeyError",
    "EngineError",
    "Enrollment",
    "Erasure",
    "FaceError",
    "FaceMatch",
    "FaceTooSmallError",
    "Gallery",
    "GalleryNotFoundError",
    "ImageError",
    "ImportReport",
    "KeyInfo",
    "InvalidArgumentError",
    "ManifestError",
    "MatchResult",
    "MultipleFacesError",
    "NoActiveEnrollmentError",
    "NewApiKey",
    "NoFaceError",
    "OptOut",
    "PermissionDeniedError",
    "PolicyError",
    "QualityError",
    "RateLimitError",
    "Rejection",
    "RequestNotFoundError",
    "RetentionEntry",
    "SearchRequest",
    "StorageError",
    "PurposeInfo",
    "RayRunner",
    "SubjectInfo",
    "SubjectNotFoundError",
    "TamperingError",
    "UnknownReferenceError",
    "Verification",
    "__version__",
]
