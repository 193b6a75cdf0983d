"""``inspect``: what a LoRA file holds — family, modules, ranks, metadata, hashes, unknown keys."""

from __future__ import annotations

import argparse
import json

HELP = """Inspect a LoRA file (ours or kohya sd-scripts'): family, modules, rank/alpha, metadata, hashes.

Shows the family, module counts, rank/alpha, all metadata, the stored and recomputed
sshs_model_hash, and keys no known architecture matches.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a .safetensors LoRA")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--expect", choices=["sd1", "sdxl"], help="fail unless the LoRA is for this family")


def run(args: argparse.Namespace) -> int:
    import torch

    from lib_lora.common.errors import UserError
    from lib_lora.formats.metadata import sshs_model_hash_of_file
    from lib_lora.jobs.lora_files import FAMILY_NAMES, check_file_family, read_lora_file

    tensors, metadata, summary = read_lora_file(args.file)
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{args.file}: tensor {name} contains NaN or infinite values; this LoRA is broken.")
    if summary.family not in ("sd1", "sdxl"):
        check_file_family(args.file, summary.family, args.expect or "sd1")
    if args.expect:
        check_file_family(args.file, summary.family, args.expect)
    computed = sshs_model_hash_of_file(args.file)
    stored = metadata.get("sshs_model_hash")
    report = {
        "family": summary.family,
        "network": summary.describe(),
        "algos": dict(summary.algos),
        "dora_modules": summary.dora,
        "dora_output_axis_modules": summary.dora_output_axis,
        "lokr_factors": {str(k): v for k, v in sorted(summary.factors.items())},
        "lokr_full_matrix_modules": summary.full_matrix,
        "modules": sum(summary.by_component.values()),
        "by_component": summary.by_component,
        "ranks": {str(k): v for k, v in sorted(summary.ranks.items())},
        "alphas": {repr(k): v for k, v in sorted(summary.alphas.items())},
        "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()}),
        "metadata": metadata,
        "sshs_model_hash": {"stored": stored, "computed": computed, "match": stored == computed if stored else None},
        "unknown_keys": summary.unknown_keys,
        "incomplete_modules": summary.incomplete,
    }
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
        return 0
    print(f"file: {args.file}")
    print(f"family: {FAMILY_NAMES.get(summary.family, summary.family)} ({summary.family})")
    parts = ", ".join(f"{c} {n}" for c, n in sorted(summary.by_component.items()))
    print(f"modules: {report['modules']} ({parts})")
    print(f"network: {summary.describe()} (" + ", ".join(f"{a} x{n}" for a, n in sorted(summary.algos.items())) + ")")
    if summary.dora:
        axis = (
            f"{summary.dora_output_axis} on the OUTPUT axis (LyCORIS wd_on_output=True): the webui 1.10.1 applies those wrongly"
            if summary.dora_output_axis
            else "input axis, as the webui and Forge apply it"
        )
        print(f"DoRA: {summary.dora} modules, {axis}")
    if summary.factors or summary.full_matrix:
        factors = ", ".join(f"{f} x{n}" for f, n in sorted(summary.factors.items()))
        print(f"LoKr factor (small side): {factors}; both factors full: {summary.full_matrix} modules")
    print("rank: " + ", ".join(f"{r} x{n}" for r, n in sorted(summary.ranks.items())))
    print("alpha: " + ", ".join(f"{a:g} x{n}" for a, n in sorted(summary.alphas.items())))
    print("dtypes: " + ", ".join(report["dtypes"]))
    if stored:
        verdict = "matches" if stored == computed else "DOES NOT MATCH"
        print(f"sshs_model_hash: stored {stored}, computed {computed} ({verdict})")
    else:
        print(f"sshs_model_hash: none stored, computed {computed}")
    print(f"unknown keys: {len(summary.unknown_keys)}")
    for key in summary.unknown_keys[:20]:
        print(f"  {key}")
    if summary.incomplete:
        print(f"incomplete modules (missing tensors their type needs): {len(summary.incomplete)}")
    print(f"metadata: {len(metadata)} keys")
    for key in sorted(metadata):
        value = metadata[key]
        print(f"  {key}: {value if len(value) <= 200 else value[:200] + ' ...'}")
    return 0
