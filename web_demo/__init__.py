"""The browser demo (`/demo`, `/demo/listen`): static files served by the control plane."""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
