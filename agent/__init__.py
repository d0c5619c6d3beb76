"""tts-agent: speaks text into WebRTC rooms (embedded aiortc rooms or LiveKit)."""

__version__ = "0.1.0"
