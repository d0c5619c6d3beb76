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


VITS_HOP = 16


def write_tiny_vits_voice(folder: Path, name: str = "xx_XX-tinyvits-low", speakers: tuple[str, ...] = ("alice", "bob"),
                          sample_rate: int = 16000, language: str = "en_US", channels: int = 8, seed: int = 0) -> Path:
    """A tiny VITS-shaped Piper voice with random weights: phoneme embedding, a duration
    predictor ending in Ceil, the phoneme -> frame expansion (CumSum, Range, Less, MatMul),
    noise (RandomNormalLike), a frame mask, a speaker embedding, a convolutional flow and a
    HiFi-GAN-like decoder (conv, ConvTranspose upsampling by VITS_HOP, conv, tanh). The
    shapes and operators are those of a real Piper export, at a size that runs in
    milliseconds, so the split, the probe and the stitching are tested on a second graph
    (several speakers) besides en_US-joe-medium. Returns the .onnx path."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    rng = np.random.default_rng(seed)
    symbols = ["_", "^", "$", " "] + list("abcdefghijklmnopqrstuvwxyz.,!?'")
    C, V, S, hop = channels, len(symbols), len(speakers), VITS_HOP
    inits: list = []

    def w(name: str, *shape: int, scale: float = 0.3) -> str:
        inits.append(onnx.numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def c(name: str, value, dtype=np.int64) -> str:
        inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    n = h.make_node
    nodes = [
        # text encoder: embedding -> [1, C, N]
        n("Gather", [w("emb", V, C, scale=1.0), "input"], ["emb_x"]),
        n("Transpose", ["emb_x"], ["x"], perm=[0, 2, 1]),
        n("Conv", ["x", w("enc_w", C, C, 3), w("enc_b", C)], ["x1"], pads=[1, 1]),
        n("Tanh", ["x1"], ["m_p"]),
        # duration predictor: frames per id in [1, 6)
        n("Conv", ["x", w("dp_w", 1, C, 1)], ["dp0"]),
        n("Tanh", ["dp0"], ["dp1"]),
        n("Mul", ["dp1", c("dp_scale", 0.8, np.float32)], ["dp2"]),
        n("Add", ["dp2", c("dp_bias", 0.9, np.float32)], ["logw"]),
        n("Exp", ["logw"], ["w0"]),
        n("Gather", ["scales", c("i1", 1)], ["length_scale"], axis=0),
        n("Mul", ["w0", "length_scale"], ["w1"]),
        n("Ceil", ["w1"], ["w_ceil"]),  # [1, 1, N]
        # expansion: attn[t, i] = cum[i] - w[i] <= t < cum[i]
        n("CumSum", ["w_ceil", c("ax2", 2)], ["cum"]),
        n("ReduceSum", ["w_ceil"], ["t_total"], keepdims=0),
        n("Range", [c("zero_f", 0.0, np.float32), "t_total", c("one_f", 1.0, np.float32)], ["r"]),
        n("Unsqueeze", ["r", c("ax1", [1])], ["r_col"]),  # [T, 1]
        n("Reshape", ["cum", c("row", [1, -1])], ["cum_row"]),  # [1, N]
        n("Reshape", ["w_ceil", c("row2", [1, -1])], ["w_row"]),
        n("Sub", ["cum_row", "w_row"], ["start_row"]),
        n("Less", ["r_col", "cum_row"], ["before_end"]),
        n("Less", ["r_col", "start_row"], ["before_start"]),
        n("Cast", ["before_end"], ["be_f"], to=T.FLOAT),
        n("Cast", ["before_start"], ["bs_f"], to=T.FLOAT),
        n("Sub", ["be_f", "bs_f"], ["attn"]),  # [T, N]
        n("Transpose", ["attn"], ["attn_t"], perm=[1, 0]),  # [N, T]
        n("MatMul", ["m_p", "attn_t"], ["m_exp"]),  # [1, C, T]
        n("RandomNormalLike", ["m_exp"], ["noise"]),
        n("Gather", ["scales", c("i0", 0)], ["noise_scale"], axis=0),
        n("Mul", ["noise", "noise_scale"], ["noise1"]),
        n("Add", ["m_exp", "noise1"], ["z_p0"]),
        # frame mask [1, 1, T] (all ones for one utterance, as in Piper)
        n("Unsqueeze", ["r", c("ax0", [0])], ["r_row"]),
        n("Less", ["r_row", "t_total"], ["mask_b"]),
        n("Cast", ["mask_b"], ["mask0"], to=T.FLOAT),
        n("Unsqueeze", ["mask0", c("ax1b", [1])], ["y_mask"]),
        n("Mul", ["z_p0", "y_mask"], ["z_p"]),
        # speaker embedding [1, C, 1]
        n("Gather", [w("emb_g", S, C, scale=1.0), "sid"], ["g0"]),
        n("Unsqueeze", ["g0", c("ax2b", [2])], ["g"]),
        # flow: two residual conv layers, conditioned on the speaker
        n("Conv", ["z_p", w("f1_w", C, C, 5), w("f1_b", C)], ["f1"], pads=[2, 2]),
        n("Conv", ["g", w("f1_g", C, C, 1)], ["f1c"]),
        n("Add", ["f1", "f1c"], ["f1a"]),
        n("Tanh", ["f1a"], ["f1t"]),
        n("Conv", ["f1t", w("f2_w", C, C, 5), w("f2_b", C)], ["f2"], pads=[2, 2]),
        n("Add", ["z_p", "f2"], ["z0"]),
        n("Mul", ["z0", "y_mask"], ["z"]),
        # decoder: conv_pre (+ speaker), upsample to samples, conv, tanh
        n("Conv", ["z", w("pre_w", 2 * C, C, 7), w("pre_b", 2 * C)], ["pre"], pads=[3, 3]),
        n("Conv", ["g", w("cond_w", 2 * C, C, 1)], ["cond"]),
        n("Add", ["pre", "cond"], ["pre_c"]),
        n("LeakyRelu", ["pre_c"], ["pre_a"], alpha=0.1),
        n("ConvTranspose", ["pre_a", w("up_w", 2 * C, C, 2 * hop, scale=0.2), w("up_b", C)], ["up"],
          strides=[hop], pads=[hop // 2, hop // 2]),
        n("LeakyRelu", ["up"], ["up_a"], alpha=0.1),
        n("Conv", ["up_a", w("post_w", 1, C, 7, scale=0.05), w("post_b", 1, scale=0.0)], ["post"], pads=[3, 3]),
        n("Tanh", ["post"], ["output"]),
    ]
    graph = h.make_graph(
        nodes, "tiny_vits",
        [h.make_tensor_value_info("input", T.INT64, [1, None]), h.make_tensor_value_info("input_lengths", T.INT64, [1]),
         h.make_tensor_value_info("scales", T.FLOAT, [3]), h.make_tensor_value_info("sid", T.INT64, [1])],
        [h.make_tensor_value_info("output", T.FLOAT, [1, 1, None])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(model, str(onnx_path))
    config = {
        "audio": {"sample_rate": sample_rate, "quality": "low"},
        "espeak": {"voice": language.replace("_", "-").lower()},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "phoneme_type": "text",
        "hop_length": hop,
        "num_symbols": V,
        "num_speakers": S,
        "speaker_id_map": {s: i for i, s in enumerate(speakers)},
        "phoneme_id_map": {s: [i] for i, s in enumerate(symbols)},
        "language": {"code": language, "name_english": "Testish", "country_english": "Nowhere"},
        "dataset": "tinyvits",
    }
    (folder / f"{name}.onnx.json").write_text(json.dumps(config))
    return onnx_path
