"""`loom web`: the dashboard (pages, JSON API, Server-Sent Events, /metrics, /docs).

Needs the `web` extra (FastAPI, uvicorn, sse-starlette, Jinja2); every browser asset is
vendored under `static/` so it works air-gapped.
"""

from loom.web.app import create_app
from loom.web.security import is_loopback

__all__ = ["create_app", "is_loopback"]
