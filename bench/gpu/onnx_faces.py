"""ONNX face models of insightface's buffalo_l layout (an SCRFD-shaped detector, an ArcFace R50 recognizer) with
random weights, for the identity stage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ARCFACE_KPS = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))


class _Graph:
    """A tiny helper for writing convolution networks as ONNX graphs with random weights (batch-norms folded)."""

    def __init__(self, seed: int) -> None:
        import numpy as np

        self.np, self.rng = np, np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int, name: str, act: bool = True, bias: float = 0.0
    ) -> str:
        np = self.np
        weight = self.rng.standard_normal((cout, cin, k, k)) * math.sqrt(2 / (cin * k * k))
        w = self.const(name + ".w", weight.astype(np.float32))
        b = self.const(name + ".b", np.full(cout, bias, np.float32))
        y = self.node("Conv", [x, w, b], name, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        if not act:
            return y
        slope = self.const(name + ".slope", np.full((cout, 1, 1), 0.25, np.float32))
        return self.node("PRelu", [y, slope], name + ".act")

    def save(self, path: Path, name: str, inputs: list[Any], outputs: list[Any]) -> int:
        import onnx
        from onnx import helper

        model = helper.make_model(
            helper.make_graph(self.nodes, name, inputs, outputs, self.inits),
            opset_imports=[helper.make_opsetid("", 13)],
        )
        model.ir_version = 8
        onnx.save(model, str(path))
        return sum(int(self.np.prod(t.dims)) for t in self.inits)


def write_recognizer(path: Path) -> int:
    """ArcFace's IResNet-50 (buffalo_l's w600k_r50: 112² input, 512-d output) with random weights; returns params."""
    from onnx import TensorProto, helper

    g = _Graph(1)
    x = g.conv("data", 3, 64, 3, 1, "stem")
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 14, 3), strict=True)):
        for i in range(blocks):
            stride, name = (2 if i == 0 else 1), f"layer{stage + 1}.{i}"
            h = g.conv(g.conv(x, cin, planes, 3, 1, name + ".c1"), planes, planes, 3, stride, name + ".c2", act=False)
            skip = x if stride == 1 and cin == planes else g.conv(x, cin, planes, 1, stride, name + ".ds", act=False)
            x, cin = g.node("Add", [h, skip], name + ".add"), planes
    flat = g.node("Flatten", [x], "flatten", axis=1)
    fc = g.const("fc.w", (g.rng.standard_normal((512 * 7 * 7, 512)) / math.sqrt(512 * 7 * 7)).astype(g.np.float32))
    g.node("MatMul", [flat, fc], "fc1")
    return g.save(
        path,
        "iresnet50",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", 512])],
    )


def write_detector(path: Path) -> int:
    """A detector with SCRFD's interface (640² input; scores, boxes and five landmarks at strides 8, 16 and 32,
    two anchors) and a plain backbone of about det_10g's cost (~7 G multiply-adds). Its score heads are biased
    so that a random-weight network proposes no faces: the NMS of a real photo (a handful of boxes) is not in it."""
    from onnx import TensorProto, helper

    g = _Graph(2)
    x = g.conv("input.1", 3, 32, 3, 2, "stem")
    x = g.conv(g.conv(x, 32, 64, 3, 2, "s4a"), 64, 64, 3, 1, "s4b")
    feats, cin = [], 64
    for stride, cout in ((8, 128), (16, 256), (32, 512)):
        x = g.conv(g.conv(x, cin, cout, 3, 2, f"s{stride}a"), cout, cout, 3, 1, f"s{stride}b")
        feats.append((stride, x, cout))
        cin = cout
    outs: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for stride, f, c in feats:
        h = g.conv(f, c, 64, 3, 1, f"head{stride}")
        for what, ch, width, bias in (("score", 2, 1, -20.0), ("bbox", 8, 4, 0.0), ("kps", 20, 10, 0.0)):
            y = g.conv(h, 64, ch, 1, 1, f"{what}{stride}.conv", act=False, bias=bias)
            y = g.node("Sigmoid", [y], f"{what}{stride}.sig") if what == "score" else y
            y = g.node("Transpose", [y], f"{what}{stride}.t", perm=[0, 2, 3, 1])
            shape = g.const(f"{what}{stride}.shape", g.np.array([-1, width], g.np.int64))
            outs[what].append(g.node("Reshape", [y, shape], f"{what}_{stride}"))
    names = outs["score"] + outs["bbox"] + outs["kps"]
    widths = [1] * 3 + [4] * 3 + [10] * 3
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"n_{n}", w]) for n, w in zip(names, widths, strict=True)
    ]
    return g.save(path, "scrfd_layout", inputs, outputs)
