"""Web: static pages and scripts (chat, kiosk, portal) served by the runtime's server."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
