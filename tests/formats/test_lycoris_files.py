"""Files we write for every network type load in LyCORIS's own loaders with no missing and no
unexpected keys, and LyCORIS computes the same weight change from them as our engine.

LyCORIS's kohya entry (``lycoris.kohya.create_network_from_weights``) names modules from the module
tree (``lora_unet_`` + path), which is our SDXL naming (sgm paths) and HF CLIP naming for the text
encoders; its generic ``create_lycoris_from_weights`` does the same under the ``lycoris_`` prefix.

DoRA files: lycoris-lora 4.1.3's loaders rebuild every DoRA module with its default
``wd_on_output=True`` and cannot take an input-axis ``dora_scale`` ([1, in]) at all — the layout the
webui 1.10.1 and Forge apply correctly, which we must write. For those the test checks that LyCORIS's
own key reader (``get_module``) recognises the type and takes every tensor of each module, and pins
the loader's refusal; the weight change itself is checked against LyCORIS with ``wd_on_output=False``
in tests/engine/test_lycoris_oracle.py and against the webui's own classes outside the tree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("lycoris", reason="the LyCORIS oracle needs the lycoris-lora dev dependency")
from lycoris.kohya import create_network_from_weights
from lycoris.wrapper import create_lycoris_from_weights

from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import select_targets
from lib_lora.formats import safetensors_io
from lib_lora.jobs.lora_files import save_network
from support import tiny_models as tm

TYPES = {
    "lora": {"algo": "lora"},
    "locon-tucker": {"algo": "lora", "use_tucker": True},
    "loha": {"algo": "loha"},
    "lokr": {"algo": "lokr", "factor": 4},
    "lokr-full": {"algo": "lokr", "factor": 8, "full_matrix": True},
    "lora-dora": {"algo": "lora", "dora_wd": True},
    "loha-dora": {"algo": "loha", "dora_wd": True},
    "lokr-dora": {"algo": "lokr", "factor": 4, "dora_wd": True},
}


LYCORIS_CLASS = {"lora": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule"}


def _network(options: dict):
    torch.manual_seed(0)
    unet = tm.ldm_sdxl_unet()
    te1, te2 = tm.hf_clip_text_model(seed=1), tm.hf_clip_text_model(seed=2)
    targets = select_targets("sdxl", unet, {"te1": te1, "te2": te2}, conv=True)
    network = LoRANetwork(
        targets, 4, 4, conv_rank=4, conv_alpha=4, naming={"unet": "ldm", "te1": "hf", "te2": "hf"}, family="sdxl",
        **options,
    )  # fmt: skip
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in network:
            for name, tensor in module.file_tensors().items():
                if name == "dora_scale":
                    tensor.mul_(1 + 0.2 * torch.rand(tensor.shape, generator=g))
                elif name != "alpha":
                    tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.1)
    return network, unet, [te1, te2]


@pytest.mark.parametrize("kind", list(TYPES))
def test_lycoris_loads_our_file_with_no_missing_or_unexpected_keys(tmp_path: Path, kind: str) -> None:
    network, unet, encoders = _network(TYPES[kind])
    path = tmp_path / f"{kind}.safetensors"
    save_network(network, path, {"ss_network_module": "lycoris.kohya"}, save_precision="float")
    tensors, _ = safetensors_io.load(path)
    stems = {name.split(".", 1)[0] for name in tensors}

    if TYPES[kind].get("dora_wd"):
        from lycoris.modules import get_module

        for stem in stems:
            lyco_type, params = get_module(tensors, stem)
            assert lyco_type.__name__ == LYCORIS_CLASS[TYPES[kind]["algo"]], stem
            taken = sum(p is not None for p in params)
            assert taken == sum(1 for name in tensors if name.startswith(stem + ".")), stem
        with pytest.raises(RuntimeError, match="shape"):
            create_network_from_weights(1.0, str(path), None, encoders, unet)
        return

    lyco, _ = create_network_from_weights(1.0, str(path), None, encoders, unet)
    loaded = {m.lora_name: m for m in lyco.unet_loras + lyco.text_encoder_loras}
    assert set(loaded) == stems, "every module of the file is loaded, and nothing else"
    theirs_keys = {f"{stem}.{k}" for stem, m in loaded.items() for k in m.custom_state_dict()}
    assert theirs_keys == set(tensors), sorted(theirs_keys ^ set(tensors))[:5]

    ours = {m.key: m for m in network}
    by_stem = {}
    from lib_lora.formats.kohya import stem_map

    for key, stem in stem_map("sdxl", list(ours), network.naming).items():
        by_stem[stem] = ours[key]
    worst = 0.0
    for stem, module in loaded.items():
        with torch.no_grad():
            weight = module.org_module[0].weight
            theirs = module.get_merged_weight(multiplier=1.0, shape=weight.shape)[0] - weight
            worst = max(worst, (by_stem[stem].delta_weight() - theirs.reshape(weight.shape)).abs().max().item())
    assert worst <= 1e-5, worst

    generic = {
        name.replace("lora_unet_", "lycoris_", 1): t for name, t in tensors.items() if name.startswith("lora_unet_")
    }
    lyco2, _ = create_lycoris_from_weights(1.0, "", unet, weights_sd=generic)
    assert {m.lora_name for m in lyco2.loras} == {name.split(".", 1)[0] for name in generic}
