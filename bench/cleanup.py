"""Dataset cleaning speed: seconds per 1024 px image through ``lib_lora.cleanup`` (crop around the
mask -> fit to the model -> LaMa -> paste back -> encode), on a big-lama-shaped network.

The real ``lama_fp32.onnx`` (Carve/LaMa-ONNX, 208 MB) cannot be fetched offline, so by default the
network is a stand-in built here with the ``onnx`` helpers and random weights that has big-lama's
layers (advimman/lama ``configs/training/big-lama.yaml`` + ``saicinpainting/training/modules/ffc.py``):
reflection pad + 7x7 conv 4->64 at 512x512; three stride-2 3x3 convs to 512 channels at 64x64;
18 FFC ResNet blocks of two FFCs each (global ratio 0.75: local 128 / global 384 channels; 3x3
l2l 128->128, l2g 128->384, g2l 384->128; the spectral g2g: 1x1 384->192, a Fourier unit — rFFT
over W and FFT over H as DFT matrix products, as Carve's exportable ``FourierUnitJIT`` computes
them, a 1x1 conv 384->384 on the stacked real/imaginary spectrum, the inverse transform — and 1x1
192->384); three stride-2 3x3 transposed convs back to 64 channels; reflection pad + 7x7 conv
64->3 and a sigmoid. BatchNorm is left out (onnxruntime folds it into the convolutions). It has
Carve's contract: inputs ``image [1, 3, 512, 512]`` + ``mask [1, 1, 512, 512]``, the graph masks the
image, concatenates the mask, composites the prediction into the hole and returns
``clamp(x * 255, 0, 255)``. Its cost is the real graph's to within the DFT's exact formulation;
``--model FILE`` measures a real LaMa ``.onnx`` instead.

    python bench/cleanup.py                    # 3 images, 1024x1024, CPU, the stand-in
    python bench/cleanup.py --images 5 --threads 2 --model lama_fp32.onnx
    python bench/cleanup.py --device cuda

Prints the model's seconds per 512x512 forward pass, and seconds per 1024 px image for two masks:
a watermark corner (one crop) and a watermark + a signature far apart (two crops).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_lora.cleanup.clean import clean_image, load_lama  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cleanup"


def build_big_lama(size: int = 512, seed: int = 0):
    """The stand-in ``ModelProto`` (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(array: np.ndarray) -> str:
        key = name("c")
        inits.append(numpy_helper.from_array(np.asarray(array), key))
        return key

    def op(kind: str, inputs: list[str], **attrs: object) -> str:
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def conv(x: str, c_in: int, c_out: int, k: int, stride: int = 1, pad: int | None = None) -> str:
        std = (2.0 / (c_in * k * k)) ** 0.5
        weight = const((rng.standard_normal((c_out, c_in, k, k)) * std).astype(np.float32))
        bias = const(np.zeros(c_out, dtype=np.float32))
        p = k // 2 if pad is None else pad
        return op("Conv", [x, weight, bias], kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p])

    def relu(x: str) -> str:
        return op("Relu", [x])

    def reflect(x: str, p: int) -> str:
        return op("Pad", [x, const(np.array([0, 0, p, p, 0, 0, p, p], dtype=np.int64))], mode="reflect")

    side = size // 8
    half = side // 2 + 1
    n = np.arange(side)
    # rFFT over W: [W, W/2+1]; FFT over H: [H, H] (ortho norm); inverse transforms likewise
    ang_w = 2 * np.pi * np.outer(n, np.arange(half)) / side
    ang_h = 2 * np.pi * np.outer(n, n) / side
    scale = 1 / np.sqrt(side)
    cw, sw = const((np.cos(ang_w) * scale).astype(np.float32)), const((-np.sin(ang_w) * scale).astype(np.float32))
    ch, sh = const((np.cos(ang_h) * scale).astype(np.float32)), const((-np.sin(ang_h) * scale).astype(np.float32))
    ich, ish = const((np.cos(ang_h) * scale).astype(np.float32)), const((np.sin(ang_h) * scale).astype(np.float32))
    weights_w = np.full(half, 2.0)
    weights_w[0] = 1.0
    weights_w[-1] = 1.0
    icw = const((np.cos(ang_w.T) * weights_w[:, None] * scale).astype(np.float32))  # [W/2+1, W]
    isw = const((-np.sin(ang_w.T) * weights_w[:, None] * scale).astype(np.float32))

    def fourier_unit(x: str, c: int) -> str:
        re_w, im_w = op("MatMul", [x, cw]), op("MatMul", [x, sw])  # rfft over W
        xt_re = op("Transpose", [re_w], perm=[0, 1, 3, 2])
        xt_im = op("Transpose", [im_w], perm=[0, 1, 3, 2])
        re = op("Sub", [op("MatMul", [xt_re, ch]), op("MatMul", [xt_im, sh])])  # fft over H
        im = op("Add", [op("MatMul", [xt_re, sh]), op("MatMul", [xt_im, ch])])
        re, im = op("Transpose", [re], perm=[0, 1, 3, 2]), op("Transpose", [im], perm=[0, 1, 3, 2])
        spec = relu(conv(op("Concat", [re, im], axis=1), 2 * c, 2 * c, 1))
        re = op("Slice", [spec, const(np.array([0])), const(np.array([c])), const(np.array([1]))])
        im = op("Slice", [spec, const(np.array([c])), const(np.array([2 * c])), const(np.array([1]))])
        re_t, im_t = op("Transpose", [re], perm=[0, 1, 3, 2]), op("Transpose", [im], perm=[0, 1, 3, 2])
        re_h = op("Sub", [op("MatMul", [re_t, ich]), op("MatMul", [im_t, ish])])  # inverse fft over H
        im_h = op("Add", [op("MatMul", [re_t, ish]), op("MatMul", [im_t, ich])])
        re_h, im_h = op("Transpose", [re_h], perm=[0, 1, 3, 2]), op("Transpose", [im_h], perm=[0, 1, 3, 2])
        return op("Add", [op("MatMul", [re_h, icw]), op("MatMul", [im_h, isw])])  # inverse rfft over W

    def spectral(x: str, c_in: int, c_out: int) -> str:
        y = relu(conv(x, c_in, c_out // 2, 1))
        return conv(op("Add", [y, fourier_unit(y, c_out // 2)]), c_out // 2, c_out, 1)

    def ffc(xl: str, xg: str, local: int = 128, glob: int = 384) -> tuple[str, str]:
        out_l = op("Add", [conv(xl, local, local, 3), conv(xg, glob, local, 3)])
        out_g = op("Add", [conv(xl, local, glob, 3), spectral(xg, glob, glob)])
        return relu(out_l), relu(out_g)

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, size, size])
    one = const(np.array(1.0, dtype=np.float32))
    known = op("Sub", [one, "mask"])
    x = op("Concat", [op("Mul", ["image", known]), "mask"], axis=1)
    x = relu(conv(reflect(x, 3), 4, 64, 7, pad=0))
    for c_in in (64, 128, 256):
        x = relu(conv(x, c_in, c_in * 2, 3, stride=2))
    xl = op("Slice", [x, const(np.array([0])), const(np.array([128])), const(np.array([1]))])
    xg = op("Slice", [x, const(np.array([128])), const(np.array([512])), const(np.array([1]))])
    for _ in range(18):
        yl, yg = ffc(*ffc(xl, xg))
        xl, xg = op("Add", [xl, yl]), op("Add", [xg, yg])
    x = op("Concat", [xl, xg], axis=1)
    for c_in in (512, 256, 128):
        std = (2.0 / (c_in * 9)) ** 0.5
        weight = const((rng.standard_normal((c_in, c_in // 2, 3, 3)) * std).astype(np.float32))
        x = relu(op("ConvTranspose", [x, weight], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], kernel_shape=[3, 3]))  # fmt: skip
    predicted = op("Sigmoid", [conv(reflect(x, 3), 64, 3, 7, pad=0)])
    inpainted = op("Add", [op("Mul", ["mask", predicted]), op("Mul", [known, "image"])])
    scaled = op("Mul", [inpainted, const(np.array(255.0, dtype=np.float32))])
    zero, top = const(np.array(0.0, dtype=np.float32)), const(np.array(255.0, dtype=np.float32))
    nodes.append(helper.make_node("Clip", [scaled, zero, top], ["output"]))
    graph = helper.make_graph(
        nodes, "big_lama_standin", [image, mask],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, size, size])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench-big-lama")
    model.ir_version = 8
    return model


def standin_path() -> Path:
    import onnx

    path = RESULTS / "big-lama-standin.onnx"
    if not path.is_file():
        RESULTS.mkdir(parents=True, exist_ok=True)
        model = build_big_lama()
        tmp = path.with_suffix(".tmp")
        onnx.save(model, str(tmp))
        tmp.replace(path)
    return path


def photo(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 200 // size, y * 200 // size, np.full_like(x, 120)], axis=-1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def masks(size: int) -> dict[str, np.ndarray]:
    corner = np.zeros((size, size), dtype=bool)
    corner[int(size * 0.9) : int(size * 0.96), int(size * 0.7) : int(size * 0.97)] = True  # a watermark
    two = corner.copy()
    two[int(size * 0.04) : int(size * 0.1), int(size * 0.03) : int(size * 0.25)] = True  # + a signature
    return {"watermark corner (1 crop)": corner, "watermark + signature (2 crops)": two}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--model", help="a real LaMa .onnx (default: the big-lama-shaped stand-in)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cuda", "directml", "cpu"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    path = Path(args.model) if args.model else standin_path()
    lama = load_lama(str(path), device=args.device, threads=args.threads)
    print(f"model: {path.name} ({lama.contract.describe()}) on {lama.device}")
    side = lama.contract.size or (512, 512)
    probe = np.zeros((side[0], side[1], 3), dtype=np.uint8)
    hole = np.zeros(side, dtype=bool)
    hole[side[0] // 4 : side[0] // 2, side[1] // 4 : side[1] // 2] = True
    lama.run(probe, hole)  # warm-up (session initialisation, allocations)
    start, cpu = time.perf_counter(), time.process_time()
    lama.run(probe, hole)
    forward, forward_cpu = time.perf_counter() - start, time.process_time() - cpu
    # CPU seconds (all threads) beside the wall time: on a busy machine the wall time is the one that lies
    print(f"one forward pass at {side[1]}x{side[0]}: {forward:.2f} s wall, {forward_cpu:.2f} s CPU")
    figures = {"model": path.name, "device": lama.device, "forward_s": forward, "forward_cpu_s": forward_cpu}
    with tempfile.TemporaryDirectory() as tmp:
        for label, mask in masks(args.size).items():
            times, cpu_times = [], []
            for i in range(args.images):
                image = Path(tmp) / f"{i}.png"
                Image.fromarray(photo(args.size, i)).save(image)
                start, cpu = time.perf_counter(), time.process_time()
                clean_image(image, mask, lama, root=tmp)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu)
            per_image, per_image_cpu = float(np.median(times)), float(np.median(cpu_times))
            figures[label] = {"wall_s": per_image, "cpu_s": per_image_cpu}
            print(
                f"{args.size} px image, {label}: {per_image:.2f} s per image wall, {per_image_cpu:.2f} s CPU "
                f"(median of {args.images}; {per_image / forward:.2f}x one forward pass)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
