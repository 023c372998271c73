"""Can a Smart Turn prediction be cheaper with the same answers? Graph rewrites and onnxruntime
settings against the unmodified model, on espeak-ng inputs.

    python bench/turn_variants.py [--profile] [--cpu 0]

Needs the ``onnx`` package for the rewrites (``pip install onnx``; a bench-only tool, not a
dependency of sipserver). For each variant: ms per prediction (one thread, median of 30 runs of
one input, thread CPU time), the largest probability difference from the original over the
inputs and the inputs that changed side of the 0.5 threshold. The last line is the original
model's own spread: the same inputs with +-1 LSB of random dither on the 16-bit audio.

Rewrites (each keeps every weight and quantisation scale):

- ``gelu``: Div/Erf/Add/Mul/Mul (x * 0.5 * (1 + erf(x / sqrt 2))) -> one com.microsoft Gelu
  (onnxruntime then fuses the bias add into BiasGelu): exact in real numbers.
- ``softmax_in``: the Quantize/Dequantize pair between each attention's Q.K^T product and its
  Softmax removed: the product's int8 kernel writes float (MatMulIntegerToFloat), the Softmax
  runs in float; replaces QLinearSoftmax.
- ``softmax_out``: the pair after each Softmax removed: the attention-weights x V product runs
  in float.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped]
import soxr

from sipserver.pipeline.turn import SmartTurnDetector, smart_turn_model_path

RATE = 16000
QUESTIONS = (
    "How much does it cost to call Lakeside?",
    "Can you tell me when the office opens tomorrow?",
    "Is this the right number for billing?",
    "What time is it?",
)
STATEMENTS = (
    "I would like to book a table for two people tonight.",
    "My account number is four five six seven.",
    "Thank you, that is all I needed.",
    "The weather has been very nice this week.",
)
CUT_OFF = (
    "I would like to book a table for",
    "My account number is four five",
    "Can you tell me when the",
    "So what I was thinking was that maybe we",
)


def say(text: str, speed: int = 175) -> np.ndarray[Any, np.dtype[np.int16]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.wav"
        subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(path), text], check=True)
        with wave.open(str(path)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            rate = w.getframerate()
    return np.asarray(soxr.resample(raw, rate, RATE), dtype=np.int16)


def inputs() -> dict[str, bytes]:
    """The warm-up input, silence, questions, statements, cut-off sentences and a few harder
    ones, each spoken input followed by 0.2 s of silence (as the VAD hands it over)."""

    def quiet(seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
        return np.zeros(round(seconds * RATE), dtype=np.int16)

    def turn(*parts: np.ndarray[Any, np.dtype[np.int16]]) -> np.ndarray[Any, np.dtype[np.int16]]:
        return np.concatenate((*parts, quiet(0.2)))

    clips = {"warm-up": quiet(0.5), "silence 3 s": quiet(3.0)}
    for group, texts in (("question", QUESTIONS), ("statement", STATEMENTS), ("cut", CUT_OFF)):
        for k, text in enumerate(texts):
            clips[f"{group} {k}"] = turn(say(text))
    clips["long 8.7 s"] = turn(
        say(STATEMENTS[0]), quiet(0.4), say(STATEMENTS[3]), quiet(0.3), say(QUESTIONS[1])
    )
    clips["slow question"] = turn(say(QUESTIONS[0], speed=120))
    noise = np.random.default_rng(1).normal(0, 200, clips["question 2"].size)
    clips["noisy question"] = np.clip(clips["question 2"] + noise, -32768, 32767).astype(np.int16)
    clips["quiet statement"] = (clips["statement 1"] // 20).astype(np.int16)
    return {name: audio.tobytes() for name, audio in clips.items()}


def session(
    model: str | bytes,
    level: Any = None,
    config: dict[str, str] | None = None,
    profile: bool = False,
) -> Any:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if level is not None:
        options.graph_optimization_level = level
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.enable_profiling = profile
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def probabilities(s: Any, features: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(np.asarray(s.run(None, {"input_features": f})[0]).reshape(-1)[0])
        for k, f in features.items()
    }


def ms_per_prediction(s: Any, features: Any, runs: int = 30) -> float:
    for _ in range(3):
        s.run(None, {"input_features": features})
    seen = []
    for _ in range(runs):
        t = time.thread_time()
        s.run(None, {"input_features": features})
        seen.append(time.thread_time() - t)
    return 1e3 * statistics.median(seen)


def op_profile(s: Any, features: Any, runs: int = 5) -> str:
    for _ in range(runs):
        s.run(None, {"input_features": features})
    per_op: collections.Counter[str] = collections.Counter()
    path = s.end_profiling()
    for event in json.loads(Path(path).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    Path(path).unlink()
    return ", ".join(f"{op} {us / runs / 1e3:.1f}" for op, us in per_op.most_common(8))


# ------------------------------------------------------------------------------ rewrites


def _links(graph: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    return producer, consumers


def _keep(graph: Any, dropped: set[int], replaced: dict[int, Any] | None = None) -> None:
    replaced = replaced or {}
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)


def fuse_gelu(onnx: Any, model: Any) -> int:
    graph = model.graph
    producer, consumers = _links(graph)
    dropped: set[int] = set()
    replaced: dict[int, Any] = {}
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer[erf.input[0]]
        (add,) = consumers[erf.output[0]]
        (half,) = consumers[add.output[0]]
        (times_x,) = consumers[half.output[0]]
        assert [div.op_type, add.op_type, half.op_type, times_x.op_type] == [
            "Div",
            "Add",
            "Mul",
            "Mul",
        ]
        assert div.input[0] in times_x.input
        dropped |= {id(div), id(erf), id(add), id(half)}
        replaced[id(times_x)] = onnx.helper.make_node(
            "Gelu", [div.input[0]], [times_x.output[0]], domain="com.microsoft"
        )
    _keep(graph, dropped, replaced)
    return len(replaced)


def float_softmax_input(onnx: Any, model: Any) -> int:
    graph = model.graph
    producer, _ = _links(graph)
    dropped: set[int] = set()
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        dq = producer.get(softmax.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer[dq.input[0]]
        softmax.input[0] = q.input[0]
        dropped |= {id(q), id(dq)}
    _keep(graph, dropped)
    return len(dropped) // 2


def float_softmax_output(onnx: Any, model: Any) -> int:
    graph = model.graph
    _, consumers = _links(graph)
    dropped: set[int] = set()
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        after = consumers[softmax.output[0]]
        if len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        (dq,) = consumers[q.output[0]]
        for node in consumers[dq.output[0]]:
            for k, name in enumerate(node.input):
                if name == dq.output[0]:
                    node.input[k] = softmax.output[0]
        dropped |= {id(q), id(dq)}
    _keep(graph, dropped)
    return len(dropped) // 2


REWRITES: dict[str, tuple[Callable[[Any, Any], int], ...]] = {
    "gelu": (fuse_gelu,),
    "softmax_in": (float_softmax_input,),
    "softmax_out": (float_softmax_output,),
    "gelu + softmax_in": (fuse_gelu, float_softmax_input),
    "gelu + softmax_in + softmax_out": (fuse_gelu, float_softmax_input, float_softmax_output),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="time per operator type too")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    clips = inputs()
    features = {k: SmartTurnDetector.features(v) for k, v in clips.items()}
    timed = features["question 0"]
    path = str(smart_turn_model_path())
    original = session(path)
    p0 = probabilities(original, features)
    base = ms_per_prediction(original, timed)
    print(f"original: {base:.1f} ms per prediction; probabilities:")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in p0.items()))
    if args.profile:
        print("  per op (ms, profiler on):", op_profile(session(path, profile=True), timed))

    def report(name: str, s: Any, profiled: Any = None) -> None:
        p = probabilities(s, features)
        ms = ms_per_prediction(s, timed)
        worst = max(p0, key=lambda k: abs(p[k] - p0[k]))
        flips = [k for k in p0 if (p[k] >= 0.5) != (p0[k] >= 0.5)]
        print(
            f"{name:32} {ms:5.1f} ms {base / ms:4.2f}x  max |dp| {abs(p[worst] - p0[worst]):.3f}"
            f" ({worst})  flips {flips or 'none'}"
        )
        if profiled is not None:
            print("  per op (ms, profiler on):", op_profile(profiled, timed))

    level = onnxruntime.GraphOptimizationLevel
    for name, lvl in (("extended", level.ORT_ENABLE_EXTENDED), ("basic", level.ORT_ENABLE_BASIC)):
        report(f"optimisation level {name}", session(path, lvl))
    for key in (
        "session.enable_quant_qdq_cleanup",
        "optimization.enable_gelu_approximation",
        "session.set_denormal_as_zero",
    ):
        report(key, session(path, config={key: "1"}))
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        print("graph rewrites skipped: pip install onnx")
    else:
        for name, steps in REWRITES.items():
            model = onnx.load(path)
            for step in steps:
                step(onnx, model)
            data = model.SerializeToString()
            report(name, session(data), session(data, profile=True) if args.profile else None)
    rng = np.random.default_rng(0)
    dithered = {}
    for k, pcm in clips.items():
        x = np.frombuffer(pcm, dtype="<i2").astype(np.int32) + rng.integers(-1, 2, len(pcm) // 2)
        dithered[k] = SmartTurnDetector.features(np.clip(x, -32768, 32767).astype("<i2").tobytes())
    p = probabilities(original, dithered)
    worst = max(p0, key=lambda k: abs(p[k] - p0[k]))
    flips = [k for k in p0 if (p[k] >= 0.5) != (p0[k] >= 0.5)]
    print(
        f"{'original, +-1 LSB dither':32} max |dp| {abs(p[worst] - p0[worst]):.3f} ({worst})  "
        f"flips {flips or 'none'}"
    )


if __name__ == "__main__":
    main()
