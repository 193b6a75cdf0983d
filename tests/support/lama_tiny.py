"""Tiny LaMa stand-ins built in-process with the ``onnx`` package (no download), with the real I/O contracts.

- :func:`build_two_input` — Carve/LaMa-ONNX ``lama_fp32.onnx``'s contract: inputs ``image [batch, 3, 512,
  512]`` and ``mask [batch, 1, 512, 512]`` (float, 0..1 and 0/1), output ``output [batch, 3, 512, 512]`` in
  **0..255**, computed as the export does: ``clamp((mask * fill + (1 - mask) * image) * 255, 0, 255)``.
- :func:`build_four_channel` — g-ronimo/lama's contract: one input ``input [1, 4, H, W]`` (RGB 0..1 with
  the hole zeroed, then the mask), H and W multiples of 32 (the graph fails otherwise, as the real one
  does), output ``output [1, 3, H, W]`` RGB in **0..1**.

The "generator" fills the hole with the mean colour of the known pixels of the crop it is given, so
tests can predict the result: masked pixels become the surrounding colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fill_nodes(rgb: str, known: str, mask: str, out: str) -> list:
    """Nodes computing ``out = mask * mean_known(rgb) + known * rgb`` (all [B, C, H, W])."""
    from onnx import helper

    return [
        helper.make_node("Mul", [rgb, known], ["known_rgb"]),
        helper.make_node("ReduceSum", ["known_rgb", "axes_hw"], ["sum_rgb"], keepdims=1),
        helper.make_node("ReduceSum", [known, "axes_hw"], ["sum_known"], keepdims=1),
        helper.make_node("Max", ["sum_known", "one"], ["count"]),
        helper.make_node("Div", ["sum_rgb", "count"], ["fill"]),
        helper.make_node("Mul", [mask, "fill"], ["hole_part"]),
        helper.make_node("Add", ["hole_part", "known_rgb"], [out]),
    ]


def _constants() -> list:
    from onnx import numpy_helper

    return [
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes_hw"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "v255"),
    ]


def build_two_input(size: int = 512, image_name: str = "image", mask_name: str = "mask"):
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Sub", ["one", mask_name], ["known"]),
        *_fill_nodes(image_name, "known", mask_name, "inpainted"),
        helper.make_node("Mul", ["inpainted", "v255"], ["scaled"]),
        helper.make_node("Clip", ["scaled", "zero", "v255"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_lama_image_mask",
        [
            helper.make_tensor_value_info(image_name, TensorProto.FLOAT, ["batch", 3, size, size]),
            helper.make_tensor_value_info(mask_name, TensorProto.FLOAT, ["batch", 1, size, size]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, size, size])],
        initializer=_constants(),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tiny-lama")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_four_channel(fixed: int | None = None):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side_h, side_w = (fixed, fixed) if fixed else ("height", "width")
    nodes = [
        helper.make_node("Slice", ["input", "c0", "c3", "c_axis"], ["rgb"]),
        helper.make_node("Slice", ["input", "c3", "c4", "c_axis"], ["hole"]),
        helper.make_node("Sub", ["one", "hole"], ["known"]),
        *_fill_nodes("rgb", "known", "hole", "filled"),
        # the real graph downsamples by 32 overall: sides that are not multiples of 32 fail here too
        helper.make_node("SpaceToDepth", ["input"], ["blocks"], blocksize=32),
        helper.make_node("ReduceSum", ["blocks"], ["block_sum"], keepdims=0),
        helper.make_node("Mul", ["block_sum", "zero"], ["nothing"]),
        helper.make_node("Add", ["filled", "nothing"], ["output"]),
    ]
    consts = _constants() + [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "c0"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "c3"),
        numpy_helper.from_array(np.array([4], dtype=np.int64), "c4"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "c_axis"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_lama_four_channel",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, side_h, side_w])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, side_h, side_w])],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tiny-lama")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_other(shape: list) -> object:
    """A valid ONNX model that is not LaMa (one input of ``shape``, output = input)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "not_lama",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_model(path: str | Path, form: str = "image+mask", **kwargs) -> Path:
    """Write a tiny LaMa (``form`` "image+mask" or "4-channel") to ``path``; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_two_input(**kwargs) if form == "image+mask" else build_four_channel(**kwargs)
    onnx.save(model, str(path))
    return path
