"""The standalone (diffusers) host trains with SDPA attention, can fall back to the plain one,
and names the modules a run may move off the GPU."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")


def test_training_attention_is_sdpa_unless_turned_off() -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from lib_lora.standalone.models import load_model

    bundle = load_model("tiny-sd15", device="cpu", dtype="fp32")
    before = dict(bundle.unet.attn_processors)
    assert before and all(isinstance(p, AttnProcessor2_0) for p in before.values())
    with bundle.training(train_unet=True, train_text_encoder=False, gradient_checkpointing=False):
        assert all(isinstance(p, AttnProcessor2_0) for p in bundle.unet.attn_processors.values())
    bundle.sdpa = False
    with bundle.training(train_unet=True, train_text_encoder=False, gradient_checkpointing=False):
        assert all(type(p) is AttnProcessor for p in bundle.unet.attn_processors.values())
    after = bundle.unet.attn_processors
    assert all(after[name] is processor for name, processor in before.items())


def test_offload_modules_and_the_compute_dtype_under_fp8() -> None:
    from lib_lora.engine.fp8 import Fp8Base
    from lib_lora.standalone.models import load_model

    bundle = load_model("tiny-sdxl", device="cpu", dtype="fp32")
    assert bundle.offload_modules("vae") == [bundle.vae]
    assert bundle.offload_modules("text") == list(bundle.text_encoders.values())
    with Fp8Base([bundle.unet]):
        assert bundle.dtype.is_floating_point and "float8" not in str(bundle.dtype)  # latents are not cast to float8
