"""How every benchmark prints its one result: a JSON object with --json, else aligned lines."""

from __future__ import annotations

import json
import sys
from typing import Any


def report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    sys.stdout.flush()
