"""What integrators import and what the CLI promises: pinned, so a change is a decision."""

from __future__ import annotations

import inspect
import subprocess
import sys

import consentmatch
from consentmatch import errors
from consentmatch.cli import app


def test_public_names_are_pinned() -> None:
    assert sorted(consentmatch.__all__) == sorted([
        "Box", "Candidate", "Consent", "ConsentError", "ConsentMatchError", "ConsentSummary", "EngineError",
        "Enrollment", "Erasure", "FaceError", "FaceMatch", "FaceTooSmallError", "Gallery", "GalleryNotFoundError",
        "ImageError", "ImportReport", "InvalidArgumentError", "ManifestError", "MatchResult", "MultipleFacesError",
        "NoFaceError", "Rejection", "StorageError", "SubjectInfo", "SubjectNotFoundError", "Verification", "__version__",
    ])
    for name in consentmatch.__all__:
        assert getattr(consentmatch, name) is not None


def test_every_error_is_in_the_tree_and_documented() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, errors.ConsentMatchError)
        assert error.__doc__ and name in errors.__doc__


def test_cli_mirrors_the_gallery_verbs() -> None:
    commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    verbs = {"enroll": "enroll", "import": "import_manifest", "match": "match", "verify": "verify",
             "forget": "forget", "subjects": "subjects"}
    assert commands == set(verbs) | {"demo"}
    for command, method in verbs.items():
        assert inspect.isfunction(getattr(consentmatch.Gallery, method)), method


def test_import_is_light_and_side_effect_free() -> None:
    code = "import sys, consentmatch; print(sorted(m for m in ('numpy', 'faiss', 'dlib', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
