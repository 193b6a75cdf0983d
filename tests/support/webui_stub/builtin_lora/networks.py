"""Stand-in of the built-in Lora extension's ``networks`` module (extensions-builtin/Lora, 1.10.1).

Same state and verbs: ``loaded_networks``, ``available_networks`` / ``available_network_aliases`` /
``forbidden_network_aliases``, ``list_available_networks()`` (recursive scan of ``--lora-dir``),
``load_networks(names, te_multipliers, unet_multipliers, dyn_dims)``; class-level patches of
Linear/Conv2d/MultiheadAttention ``forward`` (lora_patches.LoraPatches) that call
``network_apply_weights`` first, which merges the loaded networks into the layer's weights with a
CPU backup (``network_weights_backup``, ``network_current_names``) and restores from the backup
when the wanted set changes. Names: ``network_layer_name`` is set on every LoRA-able layer
(``assign_network_names_to_compvis_modules``); here it is Train LoRA's canonical key, and files
are matched through lib_lora.formats (the real one has its own name conversion). File tensors
that match no layer are counted in ``unmatched`` (the real extension ignores them silently).
"""

from __future__ import annotations

import os

import torch
from modules import extra_networks, shared

loaded_networks: list = []
available_networks: dict = {}
available_network_aliases: dict = {}
forbidden_network_aliases: dict = {}
networks_in_memory: dict = {}
unmatched: dict[str, list[str]] = {}
originals = None
applied_calls = 0


class NetworkOnDisk:
    def __init__(self, name, filename):
        from lib_lora.formats import safetensors_io

        self.name = name
        self.filename = filename
        _, self.metadata = safetensors_io.load(filename)
        self.alias = self.metadata.get("ss_output_name", name)
        self.mtime = os.path.getmtime(filename)


class Network:
    def __init__(self, name, network_on_disk):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules: dict[str, dict[str, torch.Tensor]] = {}
        self.mtime = network_on_disk.mtime


def list_available_networks():
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    root = shared.cmd_opts.lora_dir
    if not root or not os.path.isdir(root):
        return
    for folder, _, files in sorted(os.walk(root)):
        for file in sorted(files):
            if not file.endswith(".safetensors"):
                continue
            name = os.path.splitext(file)[0]
            entry = NetworkOnDisk(name, os.path.join(folder, file))
            available_networks[name] = entry
            if entry.alias in available_network_aliases:
                forbidden_network_aliases[entry.alias.lower()] = 1
            available_network_aliases[name] = entry
            available_network_aliases[entry.alias] = entry


def _layers(sd_model):
    from lib_lora.engine.targets import select_targets

    family = "sdxl" if getattr(sd_model, "is_sdxl", False) else "sd1"
    if family == "sd1":
        encoders, naming = {"te": sd_model.cond_stage_model.wrapped.transformer}, {"unet": "ldm", "te": "hf"}
    else:
        emb = sd_model.conditioner.embedders
        encoders = {"te1": emb[0].wrapped.transformer, "te2": emb[1].wrapped.model}
        naming = {"unet": "ldm", "te1": "hf", "te2": "openclip"}
    return family, select_targets(family, sd_model.model.diffusion_model, encoders, conv=True), naming


def assign_network_names_to_compvis_modules(sd_model):
    _, targets, _ = _layers(sd_model)
    for target in targets:
        name = target.key.split(":")[0]
        if target.kind == "mha_out":
            name = name.rsplit(".out_proj", 1)[0]
        target.module.network_layer_name = name


def load_network(name, network_on_disk):
    from lib_lora.formats import kohya, safetensors_io

    sd_model = shared.sd_model
    family, targets, naming = _layers(sd_model)
    tensors, _ = safetensors_io.load(network_on_disk.filename)
    canonical, unknown = kohya.from_kohya(tensors, family, [t.key for t in targets], naming)
    unmatched[name] = unknown
    net = Network(name, network_on_disk)
    for tensor_name, tensor in canonical.items():
        key, suffix = kohya.split_tensor_name(tensor_name)
        net.modules.setdefault(key, {})[suffix] = tensor
    return net


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    loaded_networks.clear()
    if any(name not in available_network_aliases and name not in available_networks for name in names):
        list_available_networks()
    for i, name in enumerate(names):
        disk = (
            available_networks.get(name)
            if name.lower() in forbidden_network_aliases
            else available_network_aliases.get(name)
        )
        if disk is None:
            continue
        net = networks_in_memory.get(name)
        if net is None or os.path.getmtime(disk.filename) > net.mtime:
            net = load_network(name, disk)
            networks_in_memory[name] = net
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        loaded_networks.append(net)


def _cp(core, wa, wb):
    """lyco_helpers.make_weight_cp: core [r, r, k, k], wa [r, out], wb [r, in] -> [out, in, k, k]."""
    temp = torch.einsum("i j k l, j r -> i r k l", core, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def _updown(tensors, orig_weight, multiplier):
    """The webui 1.10.1's weight change for one module: network_lora / network_hada / network_lokr
    (``calc_updown``), then ``finalize_updown``: alpha / dim, DoRA per input column, multiplier."""
    t = {k: v.float() for k, v in tensors.items()}
    shape = tuple(orig_weight.shape)
    dim = None
    if "lora_down.weight" in t:
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        dim = down.shape[0]
        if "lora_mid.weight" in t:
            updown = torch.einsum("n m k l, i n, m j -> i j k l", t["lora_mid.weight"], up.flatten(1), down.flatten(1))
        else:
            updown = up.flatten(1) @ down.flatten(1)
    elif "hada_w1_a" in t:
        dim = t["hada_w1_b"].shape[0]
        if "hada_t1" in t:
            updown = _cp(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * _cp(
                t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"]
            )
        else:
            updown = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    else:
        w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
        dim = t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else None
        if "lokr_w2" in t:
            w2 = t["lokr_w2"]
        elif "lokr_t2" in t:
            w2 = _cp(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
        else:
            w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
        dim = t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else dim
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        updown = torch.kron(w1, w2.contiguous())
    updown = updown.reshape(shape)
    if dim is not None and "alpha" in t:
        updown = updown * (float(t["alpha"]) / dim)
    if "dora_scale" in t:
        orig = orig_weight.float()
        merged = updown + orig
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
        updown = merged * (t["dora_scale"] / norm) - orig
    return updown * multiplier


def network_restore_weights_from_backup(self):
    weights_backup = getattr(self, "network_weights_backup", None)
    if weights_backup is None:
        return
    with torch.no_grad():
        if isinstance(self, torch.nn.MultiheadAttention):
            self.in_proj_weight.copy_(weights_backup[0])
            self.out_proj.weight.copy_(weights_backup[1])
        else:
            self.weight.copy_(weights_backup)


def network_apply_weights(self):
    global applied_calls
    name = getattr(self, "network_layer_name", None)
    if name is None:
        return
    current = getattr(self, "network_current_names", ())
    wanted = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in loaded_networks)
    if getattr(self, "network_weights_backup", None) is None and wanted != ():
        if isinstance(self, torch.nn.MultiheadAttention):
            self.network_weights_backup = (
                self.in_proj_weight.to("cpu", copy=True),
                self.out_proj.weight.to("cpu", copy=True),
            )
        else:
            self.network_weights_backup = self.weight.to("cpu", copy=True)
    if current == wanted:
        return
    applied_calls += 1
    network_restore_weights_from_backup(self)
    with torch.no_grad():
        for net in loaded_networks:
            multiplier = net.unet_multiplier if name.startswith("unet/") else net.te_multiplier
            if isinstance(self, torch.nn.MultiheadAttention):
                parts = [net.modules.get(f"{name}:{letter}") for letter in "qkv"]
                dim = self.embed_dim
                for index, tensors in enumerate(parts):
                    if tensors:
                        part = self.in_proj_weight[index * dim : (index + 1) * dim]
                        part += _updown(tensors, part, multiplier).to(self.in_proj_weight.dtype)
                out = net.modules.get(f"{name}.out_proj")
                if out:
                    self.out_proj.weight += _updown(out, self.out_proj.weight, multiplier).to(
                        self.out_proj.weight.dtype
                    )
            elif name in net.modules:
                self.weight += _updown(net.modules[name], self.weight, multiplier).to(self.weight.dtype)
    self.network_current_names = wanted


class LoraPatches:
    def __init__(self):
        self.saved = {}
        for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.MultiheadAttention):
            original = cls.forward
            self.saved[cls] = original

            def forward(self, *args, __original=original, **kwargs):
                network_apply_weights(self)
                return __original(self, *args, **kwargs)

            cls.forward = forward

    def undo(self):
        for cls, original in self.saved.items():
            cls.forward = original


class ExtraNetworkLora:
    def activate(self, p, params_list):
        names = [params.positional[0] for params in params_list]
        te = [float(params.positional[1]) if len(params.positional) > 1 else 1.0 for params in params_list]
        unet = [float(params.positional[2]) if len(params.positional) > 2 else m for params, m in zip(params_list, te)]
        load_networks(names, te, unet, [None] * len(names))


def install():
    """What scripts/lora_script.py does at start-up: patches, the ``lora`` extra network."""
    global originals
    originals = LoraPatches()
    extra_networks.extra_network_registry["lora"] = ExtraNetworkLora()


def uninstall():
    global originals
    if originals is not None:
        originals.undo()
        originals = None
    extra_networks.extra_network_registry.pop("lora", None)
    loaded_networks.clear()
    networks_in_memory.clear()
