"""An uploaded photo is named by its file name (folders, controls and bidi characters stripped,
the length capped) in HTTP answers, problems and audit reasons, never '<bytes>' (issue 24, item 14)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from consentmatch import Gallery
from consentmatch.images import MAX_UPLOAD_NAME, Upload, load_photo, photo_name, upload_name
from consentmatch.service import create_app

from .conftest import EXAMPLES

PROBES = EXAMPLES / "probes"


@pytest.mark.parametrize(("sent", "named"), [
    ("obama1.jpg", "obama1.jpg"),
    ("people/rose_leslie/img1.jpg", "img1.jpg"),  # a browser's relative path: the folder is not the name
    ("C:\\fakepath\\desk.jpg", "desk.jpg"),
    ("../../etc/passwd", "passwd"),
    ("\x1b]0;owned\x07vis\u202eitor.jpg", "]0;ownedvisitor.jpg"),  # ESC, BEL and a bidi override gone
    ("tab\there.png", "tabhere.png"),
    ("  two   spaces .jpg ", "two spaces .jpg"),
    ("", "upload"), (None, "upload"), ("..", "upload"), ("dir/", "upload"),
])
def test_upload_name_keeps_only_a_printable_base_name(sent: str | None, named: str) -> None:
    assert upload_name(sent) == named


def test_a_long_upload_name_is_capped_with_its_extension() -> None:
    named = upload_name("x" * 5000 + ".jpeg")
    assert len(named) == MAX_UPLOAD_NAME and named.endswith("....jpeg")


def test_an_upload_is_bytes_named_by_its_file_name() -> None:
    photo = Upload((PROBES / "obama1.jpg").read_bytes(), "uploads/obama1.jpg")
    assert isinstance(photo, bytes) and photo_name(photo) == "obama1.jpg" and load_photo(photo).name == "obama1.jpg"
    assert photo_name(bytes(photo)) == "<bytes>"  # bytes given without a name, from Python, stay as they were
    copied = copy.deepcopy(photo)  # as a runner sending it to another process would
    assert type(copied) is Upload and copied.name == "obama1.jpg" and copied == photo


@pytest.fixture
def client(real_gallery_path: Path) -> Iterator[tuple[TestClient, Gallery, dict[str, str]]]:
    gallery = Gallery(real_gallery_path, actor="setup")
    keys = {role: gallery.create_api_key(f"{role}-1", roles=[role]).key for role in ("operator", "enroller", "auditor")}
    with TestClient(create_app(gallery)) as test_client:
        yield test_client, gallery, {role: f"Bearer {key}" for role, key in keys.items()}
    gallery.close()


def _post(client: TestClient, key: str, url: str, **kw: Any) -> Any:
    return client.post(url, headers={"Authorization": key}, **kw)


def test_http_answers_problems_and_audit_name_the_uploaded_file(
    client: tuple[TestClient, Gallery, dict[str, str]],
) -> None:
    http, gallery, keys = client
    obama = (PROBES / "obama1.jpg").read_bytes()
    found = _post(http, keys["operator"], "/v1/match", files={"photo": ("C:\\fakepath\\door\u202e-cam.jpg", obama)},
                  data={"purpose": "visitor-check-in"})
    assert found.status_code == 200, found.text
    assert found.json()["image"] == "door-cam.jpg"

    long = _post(http, keys["operator"], "/v1/match", files={"photo": ("y" * 400 + ".jpg", obama)},
                 data={"purpose": "visitor-check-in"})
    assert long.json()["image"] == "y" * (MAX_UPLOAD_NAME - 7) + "....jpg"

    broken = _post(http, keys["operator"], "/v1/match", files={"photo": ("scans/visitor-42.jpg", b"not a photo")},
                   data={"purpose": "visitor-check-in"})
    assert broken.status_code == 400
    assert "'visitor-42.jpg' is not a supported image" in broken.json()["detail"]
    refused = gallery.audit(action="match")[-1].details
    assert refused["outcome"] == "refused" and "'visitor-42.jpg'" in refused["reason"]

    group = (PROBES / "two_people.jpg").read_bytes()
    enrolled = _post(http, keys["enroller"], "/v1/subjects/obama/photos",
                     files=[("photos", ("group-photo.jpg", group))], data={"consent_ref": "REL-2026-0004"})
    assert enrolled.status_code >= 400 and "'group-photo.jpg'" in enrolled.json()["detail"], enrolled.text

    trail = http.get("/v1/audit", headers={"Authorization": keys["auditor"]}).json()
    assert not [e for e in trail if "<bytes>" in str(e["details"])]


def test_an_approved_search_names_its_held_probe_by_the_request(real_gallery: Gallery) -> None:
    """The held probe is stored as bytes (its upload name is not kept): the approved search's
    answer names it by its request, not '<bytes>'."""
    real_gallery.set_policy("approval_purposes", "staff-access")
    filed = real_gallery.request_match(Upload((PROBES / "obama1.jpg").read_bytes(), "cam/obama1.jpg"),
                                       purpose="staff-access", case_ref="CASE-1", reason="badge report",
                                       actor="officer-12")
    real_gallery.approve_request(filed.request_id, reason="reviewed", actor="lt.jones")
    result = real_gallery.search_request(filed.request_id, actor="officer-12").result
    assert result is not None and result["image"] == f"{filed.request_id} probe"
