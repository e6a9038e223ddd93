"""The markers conftest.py gives at collection: exactly one of unit, contract, e2e per test."""

from __future__ import annotations

import pytest

from consentmatch import Gallery

KINDS = ("unit", "contract", "e2e")


def _kinds(request: pytest.FixtureRequest) -> list[str]:
    return [kind for kind in KINDS if request.node.get_closest_marker(kind)]


def test_a_test_without_a_store_is_a_unit_test(request: pytest.FixtureRequest) -> None:
    assert _kinds(request) == ["unit"]


def test_a_test_on_a_store_is_a_contract_test_on_both(store_gallery: Gallery, request: pytest.FixtureRequest) -> None:
    assert _kinds(request) == ["contract"]
    assert request.node.callspec.params["gallery_location"] in ("sqlite", "postgres")


@pytest.fixture(params=("sqlite", "postgres"))
def _engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_fixture_parametrised_over_the_stores_makes_a_contract_test(_engine: str, request: pytest.FixtureRequest) -> None:
    assert _kinds(request) == ["contract"]  # e.g. test_service.py's `service`, which asks for pg_url itself


@pytest.mark.slow
def test_a_slow_test_is_an_e2e_test(request: pytest.FixtureRequest) -> None:
    assert _kinds(request) == ["e2e"] and request.node.get_closest_marker("slow")
