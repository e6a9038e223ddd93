"""The exception tree: every error consentmatch raises on purpose.

    ConsentMatchError             base; str(error) is one line: what is wrong and how to fix it
    ├── ImageError                the photo cannot be read: missing, unsupported, corrupt, too large
    ├── FaceError                 the photo was read, but its faces do not fit the call
    │   ├── NoFaceError
    │   ├── MultipleFacesError
    │   ├── FaceTooSmallError
    │   └── QualityError          below the quality bar (blurred, dark, turned, cut): `reasons` says why
    ├── ConsentError              no consent, or one that is expired or does not cover the purpose
    │   └── UnknownReferenceError no consent has the reference given
    ├── SubjectNotFoundError      the subject is not enrolled
    │   └── NoActiveEnrollmentError   not enrolled or no consent for the purpose (audited; verify answers a non-match)
    ├── GalleryNotFoundError      reading a gallery file that does not exist
    ├── ManifestError             an import manifest or evaluation pairs file that cannot be read as a whole
    ├── PolicyError               the gallery's policy forbids the call (e.g. a photo taken in an excluded region)
    │   └── ApprovalRequiredError a search for a purpose that needs a department's approval: file a request
    ├── RequestNotFoundError      no search request has the id given
    ├── AccessError               the caller may not do this (the service's API keys)
    │   ├── AuthenticationError   no key, an unknown, revoked or expired one
    │   ├── PermissionDeniedError the key's roles or purposes do not allow the call
    │   └── RateLimitError        the key is over its rate: retry after a moment
    ├── InvalidArgumentError      a bad value passed to the API (subject name, purpose, tolerance)
    ├── ServiceBusyError          the service does all the photo work it may at once: retry after a moment
    ├── StorageError              SQLite failed: locked, read-only, disk full, corrupt
    │   └── TamperingError        a row fails its integrity check: the file was edited outside consentmatch
    ├── EncryptionKeyError        the gallery key or its data keys are missing or wrong
    └── EngineError               a native engine (dlib, ONNX Runtime, FAISS) failed

Native errors (sqlite3, dlib, ONNX Runtime, FAISS, Pillow) are mapped into this tree where they are raised;
callers never need to catch anything else.
"""

from __future__ import annotations

__all__ = [
    "AccessError",
    "ApprovalRequiredError",
    "AuthenticationError",
    "ConsentError",
    "ConsentMatchError",
    "EncryptionKeyError",
    "EngineError",
    "FaceError",
    "FaceTooSmallError",
    "GalleryNotFoundError",
    "ImageError",
    "InvalidArgumentError",
    "ManifestError",
    "MultipleFacesError",
    "NoActiveEnrollmentError",
    "NoFaceError",
    "PermissionDeniedError",
    "PolicyError",
    "QualityError",
    "RateLimitError",
    "RequestNotFoundError",
    "ServiceBusyError",
    "StorageError",
    "SubjectNotFoundError",
    "TamperingError",
    "UnknownReferenceError",
]


class ConsentMatchError(Exception):
    """Base of every consentmatch error."""


class ImageError(ConsentMatchError):
    """The photo cannot be read: missing, unsupported, corrupt or too large."""

    def __init__(self, message: str, photo: str | None = None) -> None:
        super().__init__(message)
        self.photo = photo


class FaceError(ConsentMatchError):
    """The photo was read, but the faces in it do not fit the call."""

    def __init__(self, message: str, photo: str | None = None) -> None:
        super().__init__(message)
        self.photo = photo


class NoFaceError(FaceError):
    """No face was found where one was needed."""


class MultipleFacesError(FaceError):
    """More than one face was found where exactly one was needed."""


class FaceTooSmallError(FaceError):
    """The face is smaller than the minimum width for the call."""


class QualityError(FaceError):
    """The face is below the quality bar; `reasons` lists why, as AWS Rekognition names them."""

    def __init__(self, message: str, photo: str | None = None, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message, photo)
        self.reasons = reasons


class ConsentError(ConsentMatchError):
    """No consent, or one that is expired, revoked or does not cover the purpose."""


class UnknownReferenceError(ConsentError):
    """No consent has the reference given (HTTP: 404, where other consent refusals are 409)."""


class SubjectNotFoundError(ConsentMatchError):
    """The subject is not enrolled in this gallery."""


class NoActiveEnrollmentError(ConsentError, SubjectNotFoundError):
    """A subject not enrolled, or without an active consent for the purpose: what the audit trail
    records of such a verify, whose caller gets a non-match (telling them apart would tell
    whoever asks who is enrolled). Kept for the handlers written when verify raised it."""


class GalleryNotFoundError(ConsentMatchError):
    """A read was asked of a gallery file that does not exist."""


class ManifestError(ConsentMatchError):
    """An import manifest or evaluation pairs file cannot be read as a whole (missing file or columns)."""


class PolicyError(ConsentMatchError):
    """The gallery's policy forbids the call."""


class ApprovalRequiredError(PolicyError):
    """The purpose needs a department's approval (policy `approval_purposes`): the search runs only
    once an approver other than the requester approves its request (`Gallery.request_search`)."""


class RequestNotFoundError(ConsentMatchError):
    """No search request has the id given (or it is not the caller's to read)."""


class AccessError(ConsentMatchError):
    """The caller may not do this: the service's API keys, roles and purposes."""


class AuthenticationError(AccessError):
    """No API key, or an unknown, revoked or expired one."""


class PermissionDeniedError(AccessError):
    """The key's roles or purposes do not allow the call."""


class RateLimitError(AccessError):
    """The key made more requests than its rate allows; `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceBusyError(ConsentMatchError):
    """The service is doing all the photo work it may at once (CONSENTMATCH_PHOTO_WORKERS); `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidArgumentError(ConsentMatchError, ValueError):
    """A value passed to the API is not acceptable."""


class StorageError(ConsentMatchError):
    """The gallery's SQLite file could not be read or written."""


class TamperingError(StorageError):
    """A row of the gallery fails its integrity check (MAC or sealed binding): the file was edited outside consentmatch.

    `row` names it, e.g. "the consent record 'FORM-1'".
    """

    def __init__(self, message: str, row: str | None = None) -> None:
        super().__init__(message)
        self.row = row


class EncryptionKeyError(ConsentMatchError):
    """The gallery key or its data keys are missing or do not fit."""


class EngineError(ConsentMatchError):
    """A native engine (dlib, ONNX Runtime, FAISS) failed."""
