"""The HTTP control plane: tokens, voices, rooms, WHEP, rendering, health and metrics."""

from .app import create_app

__all__ = ["create_app"]
