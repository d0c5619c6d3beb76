"""Streaming inference for VITS-style ONNX voices (Piper): the graph split in two at load.

A VITS graph runs a text encoder and duration predictor over phonemes, expands them to latent
frames, then a flow and a HiFi-GAN decoder over those frames. The flow and the decoder are
convolutional: each output sample depends on a few frames around it only, so they can run on
windows of frames (with context on both sides) and be stitched, and first audio need not wait
for the whole sentence.

The cut is found from the graph's structure, not from tensor names: walking back from the
output, the *frames part* is the largest set of nodes made only of time-local operators
(convolutions, element-wise maths, channel slicing and the shape plumbing around them). Its
inputs are the cut: frame-axis tensors (the expanded means, noise, mask) and static ones
(scales, speaker id). The *phoneme part* is everything that computes those inputs, plus the
rounded durations (the graph's only `Ceil`) used for word timing. A probe at load checks what
the structure only suggests: which axis of each cut tensor is the frame axis, that every
frame is `hop` output samples, that the durations add up to the frame count, and that
windows stitched together match the whole latent decoded at once. A graph that fails any of
this raises `NotSplittable` and its caller speaks whole pieces instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)


# Operators that map a frame window to the same window (given context): what a flow and a
# HiFi-GAN decoder are made of. MatMul (the phoneme -> frame expansion), Range, CumSum,
# reductions and random generators are not, so the walk back from the output stops there.
TIME_LOCAL_OPS = frozenset({
    "Conv", "ConvTranspose", "Add", "Sub", "Mul", "Div", "Neg", "Exp", "Log", "Tanh", "Sigmoid",
    "LeakyRelu", "Relu", "Abs", "Pow", "Sqrt", "Clip", "Slice", "Split", "Concat", "Gather",
    "Shape", "ConstantOfShape", "Constant", "Identity", "Cast", "Unsqueeze", "Squeeze",
})
UPSAMPLING_OPS = frozenset({"ConvTranspose"})  # a decoder is there: frames become samples

DECODER_CONTEXT = 8  # frames of context either side of a decoder window (stitching error ~0.3 %)
FLOW_CONTEXT = 24  # the flow sees further (4 couplings of 4 kernel-5 layers: 32 at most)
FIRST_WINDOW = 14  # frames (256 samples each, 160 ms) in an utterance's first window: first audio
# early, yet long enough that the second window is made before the first has played
WINDOW_GROWTH = 4  # each later window this many times the previous one (compute stays ahead) ...
MAX_WINDOW = 256  # ... up to this: a window's context then costs 16 / 256 frames extra
FLOW_STEP = 256  # after the first window, the flow runs on this many frames at once
# windowed vs whole decoding of the probe, max |error| / max |whole|. Looser than the 1 % the
# tests hold real speech to (0.1-0.3 %): a probe's made-up phonemes give quiet, odd audio, and
# a wrong cut is off by 50-100 %, so this still tells the two apart.
PROBE_TOLERANCE = 0.03


class NotSplittable(Exception):
    """The graph does not have the shape streaming needs; speak whole pieces instead."""


@dataclass
class Latent:
    """One piece after the phoneme part: the flow's inputs, and phoneme durations."""

    feeds: dict[str, np.ndarray]
    frames: int
    durations: np.ndarray | None  # frames per phoneme id, or None when the graph has no Ceil


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output if o}


def _time_local_suffix(graph, output: str) -> tuple[list, set[str]]:
    """Nodes of the time-local suffix ending at `output`, and the tensors that feed it."""
    producer = _producers(graph)
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    nodes: dict[int, object] = {}
    cut: set[str] = set()
    stack = [output]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or not name or name in initializers:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is None or name in graph_inputs or node.op_type not in TIME_LOCAL_OPS:
            cut.add(name)
            continue
        nodes[id(node)] = node
        stack.extend(node.input)
    return [n for n in graph.node if id(n) in nodes], cut  # the graph's topological order


def _ancestors(graph, nodes: list, outputs: list[str], stop: set[str]) -> list:
    """The nodes among `nodes` that `outputs` depend on, not looking past `stop`."""
    producer = {o: n for n in nodes for o in n.output if o}
    keep: dict[int, object] = {}
    stack, seen = list(outputs), set()
    while stack:
        name = stack.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in keep:
            keep[id(node)] = node
            stack.extend(node.input)
    return [n for n in nodes if id(n) in keep]


def _decoder_input(nodes: list) -> str | None:
    """The input of the decoder's first convolution: from the first upsampling, back along
    the data input (activations, conditioning adds) to the Conv that starts the decoder."""
    producer = {o: n for n in nodes for o in n.output if o}
    first_up = next((n for n in nodes if n.op_type in UPSAMPLING_OPS), None)
    if first_up is None:
        return None
    name = first_up.input[0]
    for _ in range(64):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "Conv":
            return node.input[0]
        name = node.input[0]
    return None


def _external_inputs(nodes: list, initializers: set[str]) -> list[str]:
    made = {o for n in nodes for o in n.output}
    return sorted({i for n in nodes for i in n.input if i and i not in made and i not in initializers})


def _subgraph(model, nodes: list, inputs: list, outputs: list, name: str):
    """A model of `nodes` with the given value infos as inputs and outputs."""
    from onnx import helper

    used = {i for n in nodes for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    sub = helper.make_model(graph, opset_imports=model.opset_import)
    sub.ir_version = model.ir_version
    return sub


def _typed(infos: dict, name: str):
    """A value info with only the element type (shapes vary with the text)."""
    from onnx import helper

    info = infos.get(name)
    if info is None or not info.type.tensor_type.elem_type:
        raise NotSplittable(f"no type for {name}")
    return helper.make_tensor_value_info(name, info.type.tensor_type.elem_type, None)


class _Part:
    """One onnxruntime session over a slice of the graph; `axes`: each input's frame axis."""

    def __init__(self, model_bytes: bytes, options, inputs: list[str]):
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(model_bytes, sess_options=options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime refuses the part: the cut is not what we thought
            raise NotSplittable(f"part does not load: {exc}") from exc
        self.inputs = inputs
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.axes: dict[str, int | None] = {}

    def run(self, feeds: dict[str, np.ndarray], lo: int | None = None, hi: int | None = None) -> list[np.ndarray]:
        """Run on all frames, or on frames [lo, hi) of every input that has a frame axis."""
        args = {}
        for name in self.inputs:
            value = feeds[name]
            axis = self.axes.get(name)
            if lo is not None and axis is not None:
                index = [slice(None)] * value.ndim
                index[axis] = slice(lo, hi)
                value = np.ascontiguousarray(value[tuple(index)])
            args[name] = value
        return self.session.run(self.outputs, args)


def split_graph(model_path: str) -> tuple[dict[str, bytes], dict]:
    """The graph cut into its parts (serialized ONNX models) and what joins them (module doc)."""
    import onnx

    model = onnx.load(model_path)
    graph = model.graph
    out_name = graph.output[0].name
    frame_nodes, _ = _time_local_suffix(graph, out_name)
    dec_input = _decoder_input(frame_nodes)
    if dec_input is None:
        raise NotSplittable("no convolutional decoder upsampling frames to samples at the end of the graph")
    initializers = {i.name for i in graph.initializer}
    graph_inputs = [i.name for i in graph.input]
    dec_nodes = _ancestors(graph, frame_nodes, [out_name], {dec_input})
    flow_nodes = _ancestors(graph, frame_nodes, [dec_input], set())
    dec_inputs = _external_inputs(dec_nodes, initializers)
    flow_inputs = _external_inputs(flow_nodes, initializers) if flow_nodes else []
    if dec_input not in dec_inputs:
        raise NotSplittable("the decoder does not start where expected")
    cut_names = sorted(set(flow_inputs) | (set(dec_inputs) - {dec_input}))
    ceil = [n for n in graph.node if n.op_type == "Ceil"]
    if len(ceil) != 1:
        raise NotSplittable("no single rounded duration (Ceil) in the graph: frame count unknown")
    durations = ceil[0].output[0]
    phoneme_outputs = [c for c in cut_names if c not in graph_inputs]
    if durations not in phoneme_outputs:
        phoneme_outputs.append(durations)
    phoneme_nodes = _ancestors(graph, list(graph.node), phoneme_outputs, set())
    used = {i for n in phoneme_nodes for i in n.input}
    phoneme_inputs = [name for name in graph_inputs if name in used]
    inferred = onnx.shape_inference.infer_shapes(model).graph
    infos = {v.name: v for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    parts = {
        "phonemes": _subgraph(model, phoneme_nodes, [i for i in graph.input if i.name in used],
                              [_typed(infos, o) for o in phoneme_outputs], "vits_phonemes"),
        "decoder": _subgraph(model, dec_nodes, [_typed(infos, i) for i in dec_inputs], [graph.output[0]],
                             "vits_decoder"),
    }
    if flow_nodes:
        parts["flow"] = _subgraph(model, flow_nodes, [_typed(infos, i) for i in flow_inputs],
                                  [_typed(infos, dec_input)], "vits_flow")
    meta = {"dec_input": dec_input, "durations": durations, "cut": cut_names, "graph_inputs": graph_inputs,
            "inputs": {"phonemes": phoneme_inputs, "flow": flow_inputs, "decoder": dec_inputs}}
    return {name: part.SerializeToString() for name, part in parts.items()}, meta


CACHE_FORMAT = 1  # bump when the parts or their meta change shape


def _cache_folder(cache_root: Path, model_path: str) -> Path:
    """Parts of one model file: keyed by its path, size and modification time."""
    st = os.stat(model_path)
    key = hashlib.sha256(f"{CACHE_FORMAT}|{os.path.abspath(model_path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_root / f"{Path(model_path).stem}-{key.hexdigest()[:16]}"


def cached_split(model_path: str, cache_root: Path | None) -> tuple[dict[str, bytes], dict]:
    """`split_graph`, read from `cache_root` when done before (splitting takes seconds and
    imports `onnx`; reading three files takes milliseconds), else done and written there.
    A cache that cannot be read or written only costs the time."""
    if cache_root is None:
        return split_graph(model_path)
    folder = _cache_folder(cache_root, model_path)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        parts = {name: (folder / f"{name}.onnx").read_bytes() for name in meta["parts"]}
        return parts, meta
    except (OSError, ValueError, KeyError):
        pass
    parts, meta = split_graph(model_path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".parts-", dir=_mkdir(cache_root)))
        for name, data in parts.items():
            (tmp / f"{name}.onnx").write_bytes(data)
        (tmp / "meta.json").write_text(json.dumps({**meta, "parts": sorted(parts)}))
        try:
            tmp.rename(folder)  # atomic: another process never sees half the parts
        except OSError:  # it lost a race to another process: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        log.info("Piper parts not cached in %s: %s", cache_root, exc)
    return parts, meta


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _frame_axis(name: str, a: np.ndarray, b: np.ndarray, frames: tuple[int, int]) -> int | None:
    """The axis of `a`/`b` (one tensor from two probes) that is the frame axis, or None."""
    if a.ndim != b.ndim:
        raise NotSplittable(f"{name}: rank varies")
    varying = [i for i in range(a.ndim) if a.shape[i] != b.shape[i]]
    if not varying:
        return None
    if len(varying) > 1 or (a.shape[varying[0]], b.shape[varying[0]]) != frames:
        raise NotSplittable(f"{name}: shape {a.shape} does not follow the frame count {frames[0]}")
    return varying[0]


def _take(x: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(lo, hi)
    return x[tuple(index)]


class SplitVits:
    """A VITS ONNX model as three onnxruntime sessions: phonemes, flow, decoder."""

    def __init__(self, model_path: str, session_options, *, has_speakers: bool,
                 probe_ids: list[list[int]] | None = None, cache_root: Path | None = None):
        parts, meta = cached_split(model_path, cache_root)
        inputs = meta["inputs"]
        self.phonemes = _Part(parts["phonemes"], session_options, inputs["phonemes"])
        self.flow = _Part(parts["flow"], session_options, inputs["flow"]) if "flow" in parts else None
        self.decoder = _Part(parts["decoder"], session_options, inputs["decoder"])
        del parts
        self.dec_input = meta["dec_input"]
        self.durations_name = meta["durations"]
        self.has_speakers = has_speakers
        self._graph_inputs = set(meta["graph_inputs"])
        self._cut_names = meta["cut"]
        self.hop = 0
        self._probe(probe_ids or [[1, 0, 5, 0, 6, 0, 7, 0, 2], [1, 0] + [8, 0, 9, 0] * 12 + [2]])

    # -- load-time checks ------------------------------------------------------------------

    def _probe(self, probes: list[list[int]]) -> None:
        """Learn each cut tensor's frame axis and the hop; check windows stitch (module doc)."""
        zero_noise = np.array([0.0, 1.0, 0.0], np.float32)
        raws = [self._run_phonemes(ids, zero_noise, 0) for ids in probes]
        frames: list[int] = []
        for raw in raws:
            frames.append(int(np.rint(raw[self.durations_name].sum())))
        if frames[0] == frames[1] or min(frames) < 1:
            raise NotSplittable("probe frame counts do not differ")
        pair = (frames[0], frames[1])
        for part in (self.flow, self.decoder):
            if part is None:
                continue
            for name in part.inputs:
                if name == self.dec_input:
                    continue
                part.axes[name] = _frame_axis(name, raws[0][name], raws[1][name], pair)
        zs = [self._run_flow(raw) for raw in raws]
        self.z_axis = _frame_axis(self.dec_input, zs[0], zs[1], pair)
        if self.z_axis is None:
            raise NotSplittable("the decoder input has no frame axis")
        self.decoder.axes[self.dec_input] = self.z_axis
        audios = [self.decoder.run({**raw, self.dec_input: z})[0].reshape(-1) for raw, z in zip(raws, zs)]
        hops = {a.size // f for a, f in zip(audios, frames) if a.size % f == 0}
        if len(hops) != 1 or min(hops) < 2:
            raise NotSplittable("the output is not a whole number of samples per frame")
        self.hop = hops.pop()
        latent = self._latent(raws[1])
        whole = audios[1]
        stitched = np.concatenate(list(self.decode(latent, first=7, growth=2, largest=16, flow_step=16)))
        err = stitch_error(whole, stitched)
        if err > PROBE_TOLERANCE:
            raise NotSplittable(f"windows do not stitch: error {err:.3%}")
        self.probe_error = err

    # -- inference -------------------------------------------------------------------------

    def _run_phonemes(self, ids: list[int], scales: np.ndarray, speaker_id: int | None) -> dict[str, np.ndarray]:
        args = {
            "input": np.array([ids], np.int64),
            "input_lengths": np.array([len(ids)], np.int64),
            "scales": scales,
        }
        if self.has_speakers:
            args["sid"] = np.array([speaker_id or 0], np.int64)
        out = dict(zip(self.phonemes.outputs, self.phonemes.run(args)))
        for name in self._cut_names:
            if name in self._graph_inputs:
                if name not in args:
                    raise NotSplittable(f"the flow or decoder needs graph input {name!r}")
                out[name] = args[name]
        return out

    def _run_flow(self, feeds: dict, lo: int | None = None, hi: int | None = None) -> np.ndarray:
        if self.flow is None:  # the decoder takes a cut tensor straight
            z = feeds[self.dec_input]
            return z if lo is None else _take(z, self.z_axis, lo, hi)
        return self.flow.run(feeds, lo, hi)[0]

    def _latent(self, raw: dict[str, np.ndarray]) -> Latent:
        feeds = {name: raw[name] for name in self._cut_names}
        durations = np.rint(raw[self.durations_name].reshape(-1)).astype(np.int64)
        return Latent(feeds, int(durations.sum()), durations)

    def encode(self, ids: list[int], scales: np.ndarray, speaker_id: int | None) -> Latent:
        """The phoneme part: one run per piece."""
        return self._latent(self._run_phonemes(ids, scales, speaker_id))

    def decode_whole(self, latent: Latent) -> np.ndarray:
        """Flow and decoder on all frames at once (the reference windows are checked against)."""
        z = self._run_flow(latent.feeds)
        return self.decoder.run({**latent.feeds, self.dec_input: z})[0].reshape(-1)

    def decode(self, latent: Latent, *, first: int | None = FIRST_WINDOW, growth: int = WINDOW_GROWTH,
               largest: int = MAX_WINDOW, flow_step: int = FLOW_STEP, skip: int = 0,
               cancelled=None) -> Iterator[np.ndarray]:
        """The piece's audio window by window, from frame `skip` (frames before it are not
        made: the leading pause of an utterance). `first`: frames in the first window (None:
        start with the largest, when audio is already buffered ahead). The flow runs just
        ahead of the first windows (so the second window is ready before the first has
        played), then `flow_step` frames at a time; each decoder window takes its flow
        output with DECODER_CONTEXT frames either side."""
        total = latent.frames
        skip = max(0, min(skip, total - 1))
        z = None  # flow output, exact on frames [z_from, z_done); the frame axis spans the piece
        z_from = z_done = max(0, skip - DECODER_CONTEXT)
        early = 2 if first else 0  # windows whose flow runs only as far as they need
        for start, end in windows(total, first or largest, growth, largest, start=skip):
            if cancelled is not None and cancelled.is_set():
                return
            need = min(total, end + DECODER_CONTEXT)
            if need > z_done:
                hi = need if early > 0 else min(total, max(need, z_done + flow_step))
                lo = max(0, z_done - FLOW_CONTEXT)
                out = self._run_flow(latent.feeds, lo, min(total, hi + FLOW_CONTEXT))
                if z is None:
                    shape = list(out.shape)
                    shape[self.z_axis] = total
                    z = np.zeros(shape, out.dtype)
                index = [slice(None)] * z.ndim
                index[self.z_axis] = slice(z_done, hi)
                z[tuple(index)] = _take(out, self.z_axis, z_done - lo, hi - lo)
                z_done = hi
            early -= 1
            lo = max(z_from, start - DECODER_CONTEXT)
            feeds = {**latent.feeds, self.dec_input: z}
            audio = self.decoder.run(feeds, lo, need)[0].reshape(-1)
            yield audio[(start - lo) * self.hop: (end - lo) * self.hop]


def stitch_error(whole: np.ndarray, stitched: np.ndarray) -> float:
    """Largest sample error relative to the largest sample of the whole decoding."""
    if whole.shape != stitched.shape:
        return float("inf")
    scale = float(np.max(np.abs(whole))) or 1.0
    return float(np.max(np.abs(whole - stitched))) / scale


def windows(frames: int, first: int = FIRST_WINDOW, growth: int = WINDOW_GROWTH,
            largest: int = MAX_WINDOW, start: int = 0) -> Iterator[tuple[int, int]]:
    """[start, end) frame windows covering frames [start, frames); a last sliver is merged
    into its window (a tiny window would cost its full context for little audio)."""
    size = first
    while start < frames:
        end = min(frames, start + size)
        if frames - end < size // 2:
            end = frames
        yield start, end
        start = end
        size = min(largest, size * growth)
