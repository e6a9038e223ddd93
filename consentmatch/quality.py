"""Pure checks on the faces found in a photo: which one to use, or why none is usable."""

from __future__ import annotations

from collections.abc import Sequence

from .encoder import DetectedFace
from .errors import FaceTooSmallError, MultipleFacesError, NoFaceError

__all__ = ["single_face"]


def single_face(faces: Sequence[DetectedFace], photo: str, min_face_px: int = 0) -> DetectedFace:
    """The one face of a photo that must hold exactly one (enrollment, verification probes).

    Raises:
        NoFaceError, MultipleFacesError, FaceTooSmallError: naming the photo and the fix.
    """
    if not faces:
        raise NoFaceError(
            f"No face found in '{photo}': use a frontal, well-lit photo with the face at least "
            f"{max(min_face_px, 80)} px wide.",
            photo,
        )
    if len(faces) > 1:
        raise MultipleFacesError(
            f"{len(faces)} faces found in '{photo}': it must show exactly one person; crop it to that face.",
            photo,
        )
    face = faces[0]
    if face.box.width < min_face_px:
        raise FaceTooSmallError(
            f"The face in '{photo}' is {face.box.width} px wide, below the {min_face_px} px minimum: "
            "use a closer or larger photo.",
            photo,
        )
    return face
