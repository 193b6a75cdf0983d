"""``modules``: the kohya module names and tensor shapes training would create for a full-size model,
for any network type."""

from __future__ import annotations

import argparse
import json

HELP = """List the LoRA modules training would create for a full-size SD1.5 or SDXL model.

The model is built on the meta device (no weights, no download); names and lora_down/lora_up
shapes are exactly those kohya sd-scripts writes.
"""

ARCH_FAMILY = {"sd15": "sd1", "sdxl": "sdxl"}
TE_LABELS = {"te": "Text Encoder", "te1": "Text Encoder 1", "te2": "Text Encoder 2"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=sorted(ARCH_FAMILY), required=True, help="model architecture")
    parser.add_argument("--dim", type=int, default=4, help="network_dim (rank) of Linear / 1x1 modules (default 4)")
    parser.add_argument("--conv-dim", type=int, default=None, help="conv_dim: also train 3x3 convs at this rank")
    parser.add_argument(
        "--algo", choices=["lora", "locon", "lokr", "loha"], default="lora",
        help="network type (locon/lokr/loha train the 3x3 convs at --dim unless --conv-dim is given)",
    )  # fmt: skip
    parser.add_argument("--factor", type=int, default=-1, help="LoKr factor (default -1: as square as possible)")
    parser.add_argument("--dora", action="store_true", help="DoRA: add each module's dora_scale [1, in]")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from lib_lora.common.errors import UserError
    from lib_lora.engine.lora_module import host_dims, module_layout
    from lib_lora.engine.targets import select_targets, text_encoder_naming, unet_naming
    from lib_lora.formats.kohya import kohya_stem
    from lib_lora.standalone.architectures import build_text_encoders, build_unet

    if args.dim < 1 or (args.conv_dim is not None and args.conv_dim < 1):
        raise UserError("--dim and --conv-dim must be at least 1.")
    family = ARCH_FAMILY[args.arch]
    unet = build_unet(args.arch)
    encoders = build_text_encoders(args.arch)
    naming = {"unet": unet_naming(unet), **{c: text_encoder_naming(te) for c, te in encoders.items()}}
    conv_dim = args.conv_dim if args.conv_dim is not None or args.algo == "lora" else args.dim
    targets = select_targets(family, unet, encoders, conv=conv_dim is not None)
    engine_algo = "lora" if args.algo == "locon" else args.algo
    modules: dict[str, dict[str, list[int]]] = {}
    counts: dict[str, int] = {}
    tensors = 0
    for target in targets:
        rank = conv_dim if target.conv_rank else args.dim
        layout = module_layout(engine_algo, target.module, target.kind, rank, factor=args.factor)
        shapes = {name.replace(".weight", "").replace("lora_", ""): list(shape) for name, shape in layout.items()}
        if args.dora:
            shapes["dora_scale"] = [1, host_dims(target.module, target.kind)[0]] + (
                [1, 1] if target.kind == "conv" else []
            )
        modules[kohya_stem(family, target.component, target.path, naming[target.component])] = shapes
        counts[target.component] = counts.get(target.component, 0) + 1
        tensors += len(shapes) + 1  # + alpha
    if args.json:
        print(json.dumps({"arch": args.arch, "modules": modules, "counts": counts}, indent=1))
        return 0
    width = max(len(name) for name in modules)
    for name, shapes in modules.items():
        print(f"{name:<{width}}  " + "  ".join(f"{k} {v}" for k, v in shapes.items()))
    te_components = [c for c in counts if c != "unet"]
    for component in te_components:
        if len(te_components) > 1:
            print(f"create LoRA for {TE_LABELS[component]}: {counts[component]} modules.")
    print(f"create LoRA for Text Encoder: {sum(counts[c] for c in te_components)} modules.")
    print(f"create LoRA for U-Net: {counts.get('unet', 0)} modules.")
    print(f"total: {sum(counts.values())} modules, {tensors} tensors")
    return 0
