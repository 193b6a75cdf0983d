"""modules/lowvram.py: ``--medvram``'s module swapping as 1.10.1 sets it up: forward pre-hooks
named ``send_me_to_gpu`` on the UNet wrapper, the text encoder and the VAE (whose encode/decode
are wrapped per instance), one of them on the GPU at a time (``module_in_gpu``)."""

import torch

from modules import devices, shared

module_in_gpu = None
cpu = torch.device("cpu")
moves = []


def send_everything_to_cpu():
    global module_in_gpu
    if module_in_gpu is not None:
        module_in_gpu.to(cpu)
    module_in_gpu = None


def is_needed(sd_model):
    return shared.cmd_opts.lowvram or shared.cmd_opts.medvram


def setup_for_low_vram(sd_model, use_medvram):
    if getattr(sd_model, "lowvram", False):
        return
    sd_model.lowvram = True
    parents = {}

    def send_me_to_gpu(module, _):
        global module_in_gpu
        module = parents.get(module, module)
        if module_in_gpu == module:
            return
        if module_in_gpu is not None:
            module_in_gpu.to(cpu)
        module.to(devices.device)
        moves.append(type(module).__name__)
        module_in_gpu = module

    first_stage_model = sd_model.first_stage_model
    encode, decode = first_stage_model.encode, first_stage_model.decode

    def first_stage_model_encode_wrap(x):
        send_me_to_gpu(first_stage_model, None)
        return encode(x)

    def first_stage_model_decode_wrap(z):
        send_me_to_gpu(first_stage_model, None)
        return decode(z)

    if hasattr(sd_model, "conditioner"):
        sd_model.conditioner.register_forward_pre_hook(send_me_to_gpu)
    else:
        # registered before the hijack, on ldm's FrozenCLIPEmbedder (now the wrapper's .wrapped)
        text = sd_model.cond_stage_model.wrapped
        text.transformer.register_forward_pre_hook(send_me_to_gpu)
        parents[text.transformer] = text
    sd_model.first_stage_model.register_forward_pre_hook(send_me_to_gpu)
    sd_model.first_stage_model.encode = first_stage_model_encode_wrap
    sd_model.first_stage_model.decode = first_stage_model_decode_wrap
    sd_model.model.register_forward_pre_hook(send_me_to_gpu)


def is_enabled(sd_model):
    return sd_model.lowvram
