"""DiffusersBundle over the tiny demo models: the tiny architectures, sd-scripts' text path (clip skip,
long prompts, SDXL's two encoders and pooled embedding), SDXL size conditioning, VAE latents with the
half-precision fallback, and a training context that puts everything back."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from lib_lora.common.errors import UserError
from lib_lora.engine.bundle import ModelBundle
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import select_targets
from lib_lora.formats import kohya
from lib_lora.standalone.bundle import ddpm_alphas_cumprod, join_chunks, text_root, token_chunks
from lib_lora.standalone.models import load_model
from lib_lora.standalone.tiny import TINY_MODELS, build_tiny

CAPTIONS = ["1girl, solo, long hair, smile", "a cat sitting on a chair, outdoors"]


@pytest.fixture(scope="module")
def sd15():
    return build_tiny("tiny-sd15")


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny("tiny-sdxl")


def _lora(bundle, seed: int = 0) -> LoRANetwork:
    unet, encoders, naming = bundle.lora_hosts()
    network = LoRANetwork(select_targets(bundle.family, unet, encoders), 4, 2, naming=naming, family=bundle.family)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network:
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=generator) * 0.1)
    return network


# -- the tiny models ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_are_the_same_every_time_and_leave_the_global_rng_alone(name: str) -> None:
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    a = build_tiny(name)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_tiny(name)
    for module_a, module_b in zip(a.modules(), b.modules()):
        state_a, state_b = module_a.state_dict(), module_b.state_dict()
        assert state_a.keys() == state_b.keys()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert isinstance(a, ModelBundle)
    assert a.model_name == name and a.model_path is None and not a.v_prediction


def test_tiny_sd15_architecture(sd15) -> None:
    unet = sd15.unet
    # SD1's 4 levels; attention on levels 1-2 (level 0's is left out for CPU speed), 1x1-conv projections
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2 + [
        "DownBlock2D"
    ]
    proj_in = unet.down_blocks[1].attentions[0].proj_in
    assert isinstance(proj_in, nn.Conv2d) and proj_in.kernel_size == (1, 1)
    assert all(c % unet.config.norm_num_groups == 0 for c in unet.config.block_out_channels)
    assert unet.config.cross_attention_dim == sd15.text_encoders["te"].config.hidden_size
    assert sd15.latent_scaling == 0.18215 and sd15.clip_skip is None
    assert sd15.lora_hosts()[2] == {"unet": "diffusers", "te": "hf"}


def test_tiny_sdxl_architecture(sdxl) -> None:
    unet = sdxl.unet
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2
    assert isinstance(unet.down_blocks[1].attentions[0].proj_in, nn.Linear)
    assert unet.config.addition_embed_type == "text_time"
    te1, te2 = sdxl.text_encoders["te1"], sdxl.text_encoders["te2"]
    assert unet.config.cross_attention_dim == te1.config.hidden_size + te2.config.hidden_size
    assert type(te2).__name__ == "CLIPTextModelWithProjection"
    assert sdxl.latent_scaling == 0.13025
    assert sdxl.lora_hosts()[2] == {"unet": "diffusers", "te1": "hf", "te2": "hf"}


@pytest.mark.parametrize("name", TINY_MODELS)
def test_vae_downsamples_by_eight_into_four_channels(name: str, sd15, sdxl) -> None:
    bundle = sd15 if name == "tiny-sd15" else sdxl
    latents = bundle.encode_images(torch.rand(2, 3, 64, 96) * 2 - 1, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 12) and latents.dtype == torch.float32
    images = bundle.decode_latents(latents)
    assert images.shape == (2, 3, 64, 96) and images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_lora_files_carry_real_kohya_names(name: str, sd15, sdxl) -> None:
    """Every module a (conv) LoRA on a tiny model gets has a name sd-scripts writes for the full model."""
    bundle = sd15 if name == "tiny-sd15" else sdxl
    unet, encoders, naming = bundle.lora_hosts()
    keys = [t.key for t in select_targets(bundle.family, unet, encoders, conv=True)]
    stems = set(kohya.stem_map(bundle.family, keys, naming).values())
    assert stems <= set(kohya.known_stems(bundle.family))
    assert kohya.detect_family(sorted(stems)) == bundle.family
    assert any(s.startswith("lora_unet_") and "transformer_blocks" in s for s in stems)


def test_schedule_is_sds() -> None:
    ac = ddpm_alphas_cumprod()
    assert ac.shape == (1000,) and ac.dtype == torch.float32
    assert ac[0].item() == pytest.approx(1 - 0.00085, abs=1e-7)
    assert ac[-1].item() == pytest.approx(0.0046, abs=1e-4)


# -- text ------------------------------------------------------------------------------------------------------


def test_sd1_clip_skip(sd15) -> None:
    te = sd15.text_encoders["te"]
    ids = sd15.tokenize(CAPTIONS)["te"][:, 0]
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
        sd15.set_text_options(clip_skip=None)
        assert torch.equal(sd15.encode_text(CAPTIONS).context, out.last_hidden_state)
        sd15.set_text_options(clip_skip=1)
        assert torch.equal(sd15.encode_text(CAPTIONS).context, out.last_hidden_state)
        sd15.set_text_options(clip_skip=2)
        skip2 = sd15.encode_text(CAPTIONS)
        assert skip2.pooled is None
        assert torch.allclose(skip2.context, text_root(te).final_layer_norm(out.hidden_states[-2]))
        assert not torch.allclose(skip2.context, out.last_hidden_state, atol=1e-3)
        sd15.set_text_options(clip_skip=9)
        with pytest.raises(UserError, match="clip_skip 9 is out of range"):
            sd15.encode_text(CAPTIONS)
    sd15.set_text_options(clip_skip=None)
    with pytest.raises(UserError, match="max_token_length must be 75, 150 or 225"):
        sd15.set_text_options(clip_skip=None, max_token_length=100)


def test_long_prompts_are_chunked_as_sd_scripts(sd15) -> None:
    tokenizer = sd15.tokenizers["te"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    long_caption = ", ".join(["long hair", "blue eyes", "school uniform", "cherry blossoms"] * 14)
    words = tokenizer(long_caption).input_ids[1:-1]
    assert len(words) > 150
    ids = token_chunks(tokenizer, [long_caption, "a cat"], 150)
    assert ids.shape == (2, 2, 77)
    assert (ids[:, :, 0] == bos).all() and (ids[:, :, -1] == eos).all()
    assert ids[0, 0, 1:76].tolist() == words[:75] and ids[0, 1, 1:76].tolist() == words[75:150]
    assert (ids[1, 1, 1:] == eos).all()  # the short caption's second chunk is all padding (= EOS for CLIP-L)
    sd15.set_text_options(clip_skip=2, max_token_length=150)
    try:
        with torch.no_grad():
            cond = sd15.encode_text([long_caption, "a cat"])
            te = sd15.text_encoders["te"]
            parts = [
                text_root(te).final_layer_norm(te(ids[:, i], output_hidden_states=True).hidden_states[-2])
                for i in range(2)
            ]
    finally:
        sd15.set_text_options(clip_skip=None)
    assert cond.context.shape == (2, 152, 64)
    expected = torch.cat([parts[0][:, :1], parts[0][:, 1:76], parts[1][:, 1:76], parts[1][:, -1:]], dim=1)
    assert torch.allclose(cond.context, expected, atol=1e-6)
    assert torch.equal(join_chunks(torch.arange(154).view(1, 154, 1), 2).flatten()[[0, 75, 76, 150, 151]],
                       torch.tensor([0, 75, 78, 152, 153]))  # fmt: skip


def test_sdxl_second_tokenizer_pads_with_bang_and_fixes_chunk_ends(sdxl) -> None:
    tok1, tok2 = sdxl.tokenizers["te1"], sdxl.tokenizers["te2"]
    eos = tok2.eos_token_id
    assert tok2.pad_token_id == 0 and tok1.pad_token_id == eos
    ids = token_chunks(tok2, ["a cat"], 75)[0, 0]
    end = ids.tolist().index(eos)
    assert (ids[end + 1 :] == 0).all()
    # exactly 75 words: chunk 1 ends on a real token -> its last slot becomes EOS; chunk 2 starts with
    # padding -> BOS EOS ! ! ...
    caption = " ".join(["cat"] * 75)
    chunks = token_chunks(tok2, [caption], 150)[0]
    assert chunks[0, -1] == eos and chunks[0, -2] != eos
    assert chunks[1, 1] == eos and (chunks[1, 2:] == 0).all()


def test_sdxl_text_path(sdxl) -> None:
    te1, te2 = sdxl.text_encoders["te1"], sdxl.text_encoders["te2"]
    tokens = sdxl.tokenize(CAPTIONS)
    with torch.no_grad():
        cond = sdxl.encode_text(CAPTIONS)
        out1 = te1(tokens["te1"][:, 0], output_hidden_states=True)
        out2 = te2(tokens["te2"][:, 0], output_hidden_states=True)
    assert cond.context.shape == (2, 77, 96) and cond.pooled.shape == (2, 64)
    # penultimate layers, no final layer norm, concatenated
    assert torch.equal(cond.context, torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1))
    # pooled = the final-LN EOS state through text_projection (= transformers' text_embeds: EOS is the largest id)
    assert torch.allclose(cond.pooled, out2.text_embeds, atol=1e-6)
    sdxl.set_text_options(clip_skip=2)
    assert sdxl.clip_skip is None  # SDXL ignores clip skip, as sd-scripts
    with torch.no_grad():
        assert torch.equal(sdxl.encode_text(CAPTIONS).context, cond.context)


def test_sdxl_long_prompt_pooled_is_the_first_chunks(sdxl) -> None:
    caption = ", ".join(["long hair", "blue eyes", "school uniform"] * 15)
    sdxl.set_text_options(clip_skip=None, max_token_length=225)
    try:
        with torch.no_grad():
            cond = sdxl.encode_text([caption])
            first = sdxl.text_encoders["te2"](sdxl.tokenize([caption])["te2"][:, 0]).text_embeds
    finally:
        sdxl.set_text_options(clip_skip=None)
    assert cond.context.shape == (1, 227, 96)
    assert torch.allclose(cond.pooled, first, atol=1e-6)


def test_text_gradients_reach_text_encoder_loras(sd15) -> None:
    network = _lora(sd15)
    network.apply_to()
    try:
        with sd15.training(train_unet=False, train_text_encoder=True, gradient_checkpointing=False):
            sd15.encode_text(CAPTIONS).context.square().mean().backward()
    finally:
        network.restore()
    grads = [m.lora_up.weight.grad for m in network.modules_of("te")]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in sd15.text_encoders["te"].parameters())


# -- denoising ----------------------------------------------------------------------------------------------------


def test_sdxl_denoise_uses_pooled_and_size_conditioning(sdxl) -> None:
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([20, 700])
    with torch.no_grad():
        cond = sdxl.encode_text(CAPTIONS)
        size = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
        out = sdxl.denoise(x, t, cond, size)
        kwargs = {"text_embeds": cond.pooled, "time_ids": size}
        direct = sdxl.unet(x, t, encoder_hidden_states=cond.context, added_cond_kwargs=kwargs).sample
        assert torch.equal(out, direct)
        assert torch.equal(sdxl.denoise(x, t, cond, None), out)  # default: the latents' own size, uncropped
        cropped = sdxl.denoise(x, t, cond, torch.tensor([[96.0, 64, 16, 0, 64, 64]] * 2))
        assert (cropped - out).abs().max() > 1e-4
        other_pooled = cond.__class__(cond.context, cond.pooled.flip(0))
        assert (sdxl.denoise(x, t, other_pooled, size) - out).abs().max() > 1e-4


# -- latents ---------------------------------------------------------------------------------------------------------


def test_encode_images_samples_the_posterior_with_the_generator(sd15) -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = sd15.encode_images(images, torch.Generator().manual_seed(5))
    b = sd15.encode_images(images, torch.Generator().manual_seed(5))
    c = sd15.encode_images(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with torch.no_grad():
        dist = sd15.vae.encode(images).latent_dist
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, dist.mean + dist.std * noise, atol=1e-6)


def test_half_vae_that_overflows_is_redone_in_float32() -> None:
    bundle = build_tiny("tiny-sd15")
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference = bundle.encode_images(images, torch.Generator().manual_seed(3))
    full_id = bundle.vae_identity()
    bundle.vae.to(torch.bfloat16)
    bundle._vae_id = None
    half_id = bundle.vae_identity()

    def overflow(module, inputs, output):  # what SDXL's VAE does in fp16
        return output if output.dtype == torch.float32 else output * float("inf")

    hook = bundle.vae.encoder.conv_out.register_forward_hook(overflow)
    try:
        latents = bundle.encode_images(images, torch.Generator().manual_seed(3))
    finally:
        hook.remove()
    assert torch.isfinite(latents).all() and latents.dtype == torch.float32
    assert torch.allclose(latents, reference, atol=0.05)  # float32 pass over bf16-rounded weights
    assert all(p.dtype == torch.bfloat16 for p in bundle.vae.parameters())
    assert full_id.endswith("-float32") and half_id.endswith("-bfloat16")  # cached latents are keyed by both
    assert bundle.vae_identity() == half_id


# -- training context -------------------------------------------------------------------------------------------------


def _snapshot(bundle):
    modules = bundle.modules()
    grads = [p.requires_grad for m in modules for p in m.parameters()]
    modes = [sub.training for m in modules for sub in m.modules()]
    ckpt = [getattr(sub, "gradient_checkpointing", None) for sub in bundle.unet.modules()]
    return grads, modes, ckpt


def _outputs(bundle):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cond = bundle.encode_text(CAPTIONS[:1])
        return cond.context, bundle.denoise(x, torch.tensor([300]), cond, None)


@pytest.mark.parametrize("raise_inside", [False, True])
def test_training_context_restores_everything(raise_inside: bool) -> None:
    bundle = build_tiny("tiny-sdxl")
    bundle.text_encoders["te2"].requires_grad_(True)  # an odd starting state must come back too
    bundle.unet.down_blocks[1].train()
    before, outputs = _snapshot(bundle), _outputs(bundle)

    class Boom(Exception):
        pass

    expect = pytest.raises(Boom) if raise_inside else contextlib.nullcontext()
    with expect, bundle.training(train_unet=True, train_text_encoder=False, gradient_checkpointing=True):
        assert all(not p.requires_grad for m in bundle.modules() for p in m.parameters())
        assert bundle.unet.training and not bundle.text_encoders["te1"].training and not bundle.vae.training
        assert any(getattr(m, "gradient_checkpointing", False) for m in bundle.unet.modules())
        if raise_inside:
            raise Boom
    after = _snapshot(bundle)
    assert after == before
    context, denoised = _outputs(bundle)
    assert torch.equal(context, outputs[0]) and torch.equal(denoised, outputs[1])


def test_modes_follow_what_is_trained(sd15) -> None:
    te = sd15.text_encoders["te"]
    with sd15.training(train_unet=False, train_text_encoder=True, gradient_checkpointing=False):
        assert not sd15.unet.training and te.training
    with sd15.training(train_unet=True, train_text_encoder=False, gradient_checkpointing=False):
        assert sd15.unet.training and not te.training
    # text encoder only, with checkpointing: the UNet (which the gradients cross) checkpoints too
    with sd15.training(train_unet=False, train_text_encoder=True, gradient_checkpointing=True):
        assert sd15.unet.training and te.training
        assert any(getattr(m, "gradient_checkpointing", False) for m in sd15.unet.modules())
    assert not sd15.unet.training and not te.training
    assert not any(getattr(m, "gradient_checkpointing", False) for m in sd15.unet.modules())


def test_gradient_checkpointing_gives_the_same_lora_gradients(sd15) -> None:
    network = _lora(sd15, seed=3)
    network.apply_to()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    target = torch.randn_like(x)
    grads = []
    try:
        for checkpointing in (False, True):
            network.zero_grad(set_to_none=True)
            with sd15.training(train_unet=True, train_text_encoder=True, gradient_checkpointing=checkpointing):
                cond = sd15.encode_text(CAPTIONS)
                loss = (sd15.denoise(x, torch.tensor([100, 800]), cond, None) - target).square().mean()
                loss.backward()
            grads.append([m.lora_up.weight.grad.clone() for m in network])
    finally:
        network.restore()
    assert any(g.abs().sum() > 0 for g in grads[0])
    for plain, checkpointed in zip(*grads):
        assert torch.allclose(plain, checkpointed, atol=1e-6)


def test_a_few_lora_steps_lower_the_loss_on_a_tiny_model() -> None:
    bundle = load_model("tiny-sdxl", device="cpu", dtype="fp32")
    network = _lora(bundle)
    with torch.no_grad():
        for module in network:
            module.lora_up.weight.zero_()
    network.requires_grad_(True)
    network.apply_to()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    losses = []
    try:
        with bundle.training(train_unet=True, train_text_encoder=True, gradient_checkpointing=False):
            for _ in range(16):
                loss = bundle.denoise(x, torch.tensor([100, 800]), bundle.encode_text(CAPTIONS), None) - target
                loss = loss.square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    finally:
        network.restore()
    assert losses[-1] < 0.9 * losses[0]
