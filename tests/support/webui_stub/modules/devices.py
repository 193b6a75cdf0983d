"""modules/devices.py: the device and dtypes the webui chose, autocast() and torch_gc() with the
1.10.1 rules that matter on a float32 CPU setup (``--use-cpu all --no-half``: autocast is a no-op,
except with FP8 weight storage, which computes in bfloat16 on the CPU)."""

import contextlib

import torch

cpu = torch.device("cpu")
device = torch.device("cpu")
dtype = torch.float32
dtype_vae = torch.float32
dtype_unet = torch.float32
dtype_inference = torch.float32
unet_needs_upcast = False
fp8 = False
force_fp16 = False
gc_calls = 0


def autocast(disable=False):
    if disable or force_fp16:
        return contextlib.nullcontext()
    if fp8 and device == cpu:  # FP8 weight storage on the CPU computes in bfloat16 (1.10.1)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=True)
    if dtype == torch.float32 or dtype_inference == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda")


def without_autocast(disable=False):
    return contextlib.nullcontext()


def cond_cast_unet(input):
    return input.to(dtype_unet) if unet_needs_upcast else input


def torch_gc():
    global gc_calls
    gc_calls += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def test_for_nans(x, where):
    pass
