"""A tiny WD-style tagger built in-process with the ``onnx`` package (no download).

It has the real contract: one float32 input ``[B, size, size, 3]`` (NHWC, BGR, 0..255, name
``input_1:0`` as in the v2 exports) and one output ``[B, n_labels]`` that is already a sigmoid, over
the rows of a ``selected_tags.csv`` written beside it (ratings first with category 9, general 0,
character 4; kaomoji and tags with parentheses included).

Its scores depend only on the image's per-channel means, so tests can predict captions: with
``r, g, b`` the mean red/green/blue of the prepared image divided by 255, label ``k`` scores
``sigmoid(black + (red - black) * r + (green - black) * g + (blue - black) * b)`` where
``black, red, green, blue`` are the label's logits on a pure black/red/green/blue image (table
below). The graph reads the channels in BGR order, so a model fed RGB would tag red images blue.

Predicted captions at the default thresholds (general > 0.35, character > 0.85), by confidence:

    red     1girl, hu tao (genshin impact), solo, looking at viewer, smile, ^_^, long hair, red theme
    blue    1girl, long hair, solo, blue sky, >_<            (amiya scores 0.73: below 0.85)
    green   no humans, star (symbol), looking at viewer, smile
    black   hatsune miku, no humans, >_<, star (symbol)
    white   1girl, long hair, looking at viewer, smile, solo, blue sky, white background,
            simple background, hu tao (genshin impact), ^_^, red theme
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# name, category, logit on pure black, red, green, blue
TINY_LABELS: list[tuple[str, int, float, float, float, float]] = [
    ("general", 9, 1.0, -1.0, 2.0, 0.5),
    ("sensitive", 9, -1.0, 1.5, 0.0, -0.5),
    ("questionable", 9, -2.0, -1.0, -1.5, 1.0),
    ("explicit", 9, -3.0, -2.0, -3.0, -2.5),
    ("1girl", 0, -2.0, 3.0, -1.0, 2.5),
    ("solo", 0, -1.5, 2.2, -1.0, 1.0),
    ("long_hair", 0, -3.0, 0.2, -2.0, 1.6),
    ("smile", 0, -2.5, 0.8, 0.6, -1.0),
    ("looking_at_viewer", 0, -2.5, 0.8, 0.6, -1.0),  # same weights as smile: ties sort by name
    ("^_^", 0, -3.0, 0.3, -2.0, -2.0),
    (">_<", 0, 1.2, -3.0, -3.0, 0.0),
    ("star_(symbol)", 0, 0.5, -2.0, 1.0, -2.5),
    ("white_background", 0, -7.0, -3.5, -3.5, -3.5),
    ("simple_background", 0, -6.0, -3.0, -3.0, -3.0),
    ("no_humans", 0, 1.5, -4.0, 2.5, -3.0),
    ("red_theme", 0, -4.0, -0.2, -4.0, -4.0),
    ("blue_sky", 0, -4.0, -4.0, -1.0, 0.9),
    ("hu_tao_(genshin_impact)", 4, -4.0, 2.4, -4.0, -4.0),
    ("amiya_(arknights)", 4, -4.0, -4.0, -4.0, 1.0),
    ("hatsune_miku", 4, 2.5, -3.0, 1.2, -3.0),
]


def tiny_weights(
    labels: list[tuple[str, int, float, float, float, float]] = TINY_LABELS,
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, bias)`` with ``logits = [r, g, b] @ W + bias`` (RGB order, means scaled to 0..1)."""
    table = np.array([row[2:] for row in labels], dtype=np.float64)
    black = table[:, 0]
    weights = (table[:, 1:] - black[:, None]).T  # [3, n]: red, green, blue rows
    return weights, black


def tiny_scores(
    rgb_means: np.ndarray, labels: list[tuple[str, int, float, float, float, float]] = TINY_LABELS
) -> np.ndarray:
    """The scores the tiny model gives images whose mean RGB (0..255) is ``rgb_means`` ``[N, 3]``."""
    weights, bias = tiny_weights(labels)
    logits = np.asarray(rgb_means, dtype=np.float64).reshape(-1, 3) / 255.0 @ weights + bias
    return 1.0 / (1.0 + np.exp(-logits))


def write_selected_tags(path: Path, labels: list[tuple[str, int, float, float, float, float]] = TINY_LABELS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, row in enumerate(labels):
            writer.writerow([100000 + i, row[0], row[1], 1000 - i])
    return path


def build_tiny_model(
    n_labels: int | None = None,
    *,
    size: int = 448,
    fixed_batch: int | None = None,
    input_name: str = "input_1:0",
    output_name: str = "output",
    labels: list[tuple[str, int, float, float, float, float]] = TINY_LABELS,
    input_shape: list | None = None,
):
    """The ONNX ``ModelProto``. ``n_labels`` other than ``len(labels)`` pads or cuts the output
    (a model that does not match its CSV); ``input_shape`` overrides the input (a non-tagger)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights, bias = tiny_weights(labels)
    n = len(labels) if n_labels is None else n_labels
    if n != weights.shape[1]:
        weights = np.resize(weights, (3, n)) if n > 0 else weights[:, :0]
        bias = np.resize(bias, n)
    bgr_weights = weights[::-1] / 255.0  # rows for the B, G, R input channels, 0..255 scale
    batch = fixed_batch if fixed_batch is not None else "batch"
    shape = input_shape if input_shape is not None else [batch, size, size, 3]
    if input_shape is not None:  # a valid graph for any input: mean over the middle axes
        weights = np.resize(weights, (shape[-1], n))
        bgr_weights = weights / 255.0
    # the mean in two steps (rows, then columns): onnxruntime's one-step mean over 200k values
    # drifts in float32 (255.67 for an all-255 channel at batch 1)
    middle = list(range(len(shape) - 2, 0, -1))
    nodes = []
    current = input_name
    for step, axis in enumerate(middle):
        out = "means" if step == len(middle) - 1 else f"partial_mean_{step}"
        nodes.append(helper.make_node("ReduceMean", [current], [out], axes=[axis], keepdims=0))
        current = out
    nodes += [
        helper.make_node("MatMul", ["means", "weights"], ["logits_nb"]),
        helper.make_node("Add", ["logits_nb", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_wd_tagger",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, n])],
        initializer=[
            numpy_helper.from_array(bgr_weights.astype(np.float32), "weights"),
            numpy_helper.from_array(bias.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tiny-wd-tagger")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_tagger(
    folder: str | Path,
    *,
    fixed_batch: int | None = None,
    size: int = 448,
    n_labels: int | None = None,
    with_labels: bool = True,
    input_shape: list | None = None,
    labels: list[tuple[str, int, float, float, float, float]] = TINY_LABELS,
) -> Path:
    """Write ``model.onnx`` (+ ``selected_tags.csv``) into ``folder``; returns the folder.

    ``fixed_batch=1`` makes a fixed batch-1 export like the v2.0 models; the default is dynamic.
    """
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(n_labels, size=size, fixed_batch=fixed_batch, labels=labels, input_shape=input_shape)
    onnx.save(model, str(folder / "model.onnx"))
    if with_labels:
        write_selected_tags(folder / "selected_tags.csv", labels)
    return folder


COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}

EXPECTED_CAPTIONS: dict[str, str] = {
    "red": "1girl, hu tao (genshin impact), solo, looking at viewer, smile, ^_^, long hair, red theme",
    "blue": "1girl, long hair, solo, blue sky, >_<",
    "green": "no humans, star (symbol), looking at viewer, smile",
    "black": "hatsune miku, no humans, >_<, star (symbol)",
    "white": (
        "1girl, long hair, looking at viewer, smile, solo, blue sky, white background, simple background, "
        "hu tao (genshin impact), ^_^, red theme"
    ),
}


# The built-in demo tagger (lib_lora/tagger/demo_tagger): logits on pure black/red/green/blue chosen
# so the demo dataset's folders (mean colours about red 0.73,0.36,0.34 / blue 0.33,0.43,0.72 /
# green 0.39,0.63,0.43) get their own tags; no character ever scores 0.85.
DEMO_LABELS: list[tuple[str, int, float, float, float, float]] = [
    ("general", 9, 3.0, 3.0, 3.0, 3.0),
    ("sensitive", 9, -3.0, -3.0, -3.0, -3.0),
    ("questionable", 9, -4.0, -4.0, -4.0, -4.0),
    ("explicit", 9, -5.0, -5.0, -5.0, -5.0),
    ("no_humans", 0, 2.0, 2.0, 2.0, 2.0),
    ("gradient_background", 0, 0.5, 0.5, 0.5, 0.5),
    ("red_theme", 0, -1.0, 9.0, -6.0, -6.0),
    ("simple_background", 0, -1.5, 8.5, -6.5, -6.5),
    ("blue_sky", 0, -1.0, -6.0, -6.0, 9.0),
    ("green_theme", 0, -1.0, -6.0, 9.0, -6.0),
    ("nature", 0, -1.5, -6.5, 8.5, -6.5),
    ("outdoors", 0, -2.0, -8.0, 3.0, 3.0),
    ("demo_mascot_(train_lora)", 4, -6.0, -6.0, -6.0, -6.0),
]
DEMO_SIZE = 448  # the WD taggers' input size


def write_demo_tagger(folder: str | Path) -> Path:
    """The shipped demo tagger's two files (regenerate: ``python -c "import sys; sys.path.insert(0,
    'tests'); from support.tagger_tiny import write_demo_tagger; write_demo_tagger('lib_lora/tagger/demo_tagger')"``)."""
    return write_tiny_tagger(folder, size=DEMO_SIZE, labels=DEMO_LABELS)
