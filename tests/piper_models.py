"""Tiny Piper-shaped ONNX voices, built in the test, so the real Piper loading and inference
path runs on shapes PyPI has no voice for (several speakers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HOP = 256


def write_tiny_voice(folder: Path, name: str = "xx_XX-tiny-low", speakers: tuple[str, ...] = ("alice", "bob"),
                     sample_rate: int = 16000, language: str = "en_US") -> Path:
    """`name.onnx` + `name.onnx.json`: Piper's inputs (input, input_lengths, scales, sid); the
    output is a tone `len(ids) * HOP * length_scale` samples long whose pitch depends on the
    speaker. Returns the .onnx path."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    def const(tname: str, arr: np.ndarray):
        dtype = T.FLOAT if arr.dtype == np.float32 else T.INT64
        return h.make_tensor(tname, dtype, arr.shape, arr.flatten().tolist())

    nodes = [
        h.make_node("Shape", ["input"], ["shape"]),
        h.make_node("Gather", ["shape", "one"], ["n_ids"], axis=0),
        h.make_node("Cast", ["n_ids"], ["n_ids_f"], to=T.FLOAT),
        h.make_node("Gather", ["scales", "one"], ["length_scale"], axis=0),
        h.make_node("Mul", ["n_ids_f", "hop"], ["n0"]),
        h.make_node("Mul", ["n0", "length_scale"], ["n1"]),
        h.make_node("Floor", ["n1"], ["n"]),
        h.make_node("Range", ["zero_f", "n", "one_f"], ["t"]),
        h.make_node("Cast", ["sid"], ["sid_f"], to=T.FLOAT),
        h.make_node("Mul", ["sid_f", "step"], ["df"]),
        h.make_node("Add", ["df", "base"], ["freq"]),
        h.make_node("Mul", ["t", "freq"], ["phase"]),
        h.make_node("Sin", ["phase"], ["wave"]),
        h.make_node("Mul", ["wave", "amp"], ["audio1d"]),
        h.make_node("Reshape", ["audio1d", "out_shape"], ["output"]),
    ]
    inits = [
        const("one", np.array(1, np.int64)), const("hop", np.array(HOP, np.float32)),
        const("zero_f", np.array(0, np.float32)), const("one_f", np.array(1, np.float32)),
        const("step", np.array([0.05], np.float32)), const("base", np.array([0.1], np.float32)),
        const("amp", np.array(0.5, np.float32)), const("out_shape", np.array([1, 1, -1], np.int64)),
    ]
    graph = h.make_graph(
        nodes, "tiny_piper",
        [h.make_tensor_value_info("input", T.INT64, [1, None]), h.make_tensor_value_info("input_lengths", T.INT64, [1]),
         h.make_tensor_value_info("scales", T.FLOAT, [3]), h.make_tensor_value_info("sid", T.INT64, [1])],
        [h.make_tensor_value_info("output", T.FLOAT, [1, 1, None])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(model, str(onnx_path))
    # "text" phonemes: each character is a phoneme, so the id count follows the text length
    symbols = ["_", "^", "$", " "] + list("abcdefghijklmnopqrstuvwxyz.,!?'")
    config = {
        "audio": {"sample_rate": sample_rate, "quality": "low"},
        "espeak": {"voice": language.replace("_", "-").lower()},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "phoneme_type": "text",
        "num_symbols": len(symbols),
        "num_speakers": len(speakers),
        "speaker_id_map": {s: i for i, s in enumerate(speakers)},
        "phoneme_id_map": {s: [i] for i, s in enumerate(symbols)},
        "language": {"code": language, "name_english": "Testish", "country_english": "Nowhere"},
        "dataset": "tiny",
    }
    (folder / f"{name}.onnx.json").write_text(json.dumps(config))
    return onnx_path
