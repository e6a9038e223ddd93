"""The API's documentation at /docs and /redoc: one page from the OpenAPI document, no scripts.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, on the console's origin, so a
compromised CDN would run in the operators' sessions. This page is HTML the server writes from
`app.openapi()` (every endpoint, its summary, the roles' words from its description) with a
link to /openapi.json, which any OpenAPI viewer opens; it loads nothing from anywhere.
"""

from __future__ import annotations

from html import escape

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

__all__ = ["mount_docs"]

_METHODS = ("get", "post", "put", "patch", "delete")


def _page(app: FastAPI) -> str:
    spec = app.openapi()
    rows = []
    for path, operations in spec.get("paths", {}).items():
        for method in _METHODS:
            if method in operations:
                operation = operations[method]
                rows.append(f"<tr><td>{method.upper()}</td><td><code>{escape(path)}</code></td>"
                            f"<td>{escape(operation.get('summary', ''))}</td></tr>")
    info = spec.get("info", {})
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(info.get('title', 'API'))} {escape(str(info.get('version', '')))}: API</title></head><body>"
        f"<h1>{escape(info.get('title', 'API'))} {escape(str(info.get('version', '')))}</h1>"
        f"<p>{escape(info.get('description', ''))}</p>"
        "<p>The full description (parameters, bodies, answers) is the OpenAPI document "
        "<a href=\"/openapi.json\">/openapi.json</a>: open it in any OpenAPI viewer or client generator.</p>"
        "<table><thead><tr><th>Method</th><th>Path</th><th>What it does</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></body></html>"
    )


def mount_docs(app: FastAPI) -> None:
    """Serve the documentation page at /docs and /redoc (create the app with docs_url=None, redoc_url=None)."""
    cached: list[str] = []

    def docs() -> HTMLResponse:
        if not cached:
            cached.append(_page(app))
        return HTMLResponse(cached[0])

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", docs, methods=["GET"], include_in_schema=False)
