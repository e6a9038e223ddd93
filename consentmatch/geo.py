"""Where a photo was taken, from its EXIF GPS, against ISO 3166 regions. Offline; nothing stored.

Regions come from GeoNames data shipped in the `reverse-geocode` package (the nearest place of
1,000+ inhabitants, with its country and first-level subdivision), and subdivision names are
mapped to ISO 3166-2 codes with `pycountry`. Near a border the nearest place can lie across
it; photos without GPS metadata cannot be checked at all (see README, Compliance).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

__all__ = ["ISO_REGION", "region_codes"]

#: An ISO 3166 country (FR) or first-level subdivision (US-IL): jurisdictions and excluded regions.
ISO_REGION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")

_lock = threading.Lock()


@lru_cache(maxsize=4096)
def region_codes(latitude: float, longitude: float) -> tuple[str, ...]:
    """The ISO 3166 codes of the place: the country, then the subdivision when known.

    e.g. (41.88, -87.63) -> ("US", "US-IL").
    """
    import reverse_geocode  # loads its GeoNames table on first use (~0.4 s)

    with _lock:
        (place,) = reverse_geocode.search([(latitude, longitude)])
    country = str(place.get("country_code") or "").upper()
    if not country:
        return ()
    codes = [country]
    subdivision = _subdivision_code(country, str(place.get("state") or ""))
    if subdivision:
        codes.append(subdivision)
    return tuple(codes)


@lru_cache(maxsize=1024)
def _subdivision_code(country: str, name: str) -> str | None:
    if not name:
        return None
    import pycountry

    for subdivision in pycountry.subdivisions.get(country_code=country) or ():  # type: ignore[no-untyped-call]
        if subdivision.name.casefold() == name.casefold() and subdivision.parent_code is None:
            return str(subdivision.code)
    return None
