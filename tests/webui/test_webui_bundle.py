"""WebuiBundle and TrainingSession on the stand-in webui: the webui's own paths, refusals, restore."""

from __future__ import annotations

import pytest
import torch

from lib_lora.common.errors import UserError
from support import webui_models as wm
from support.webui_env import load_model, model_state, network_for, outputs, same_outputs, state_differences, write_lora


def bundle_of(webui, model, **kwargs):
    from lib_lora.webui.model_bundle import WebuiBundle

    load_model(webui, model)
    return WebuiBundle(model, **kwargs)


# -- refusals ----------------------------------------------------------------------------------------


def _forge(webui):
    model = wm.tiny_sd1()
    model.forge_objects = object()
    model.first_stage_model = None
    return model


def _inpaint(webui):
    model = wm.tiny_sd1()
    model.model.conditioning_key = "hybrid"
    return model


def _sd3(webui):
    model = wm.tiny_sd1()
    model.is_sd1, model.is_sd3 = False, True
    return model


def _lowvram(webui):
    webui.shared.cmd_opts.lowvram = True
    return wm.tiny_sd1()


def _sd_unet(webui):
    import modules.sd_unet

    modules.sd_unet.current_unet = type("TRT", (), {"option": type("O", (), {"label": "trt-unet"})()})()
    return wm.tiny_sd1()


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda webui: None, "No Stable Diffusion checkpoint is loaded"),
        (lambda webui: wm.tiny_sd2(), "SD2.x models are not supported"),
        (_lowvram, "--lowvram"),
        (_forge, "Forge model object"),
        (_sd3, "SD3 models are not supported"),
        (_inpaint, "Inpainting"),
        (_sd_unet, "SD Unet option 'trt-unet'"),
    ],
)
def test_unsupported_models_are_refused_with_one_sentence(webui, make, words) -> None:
    from lib_lora.webui.host import WebuiHost
    from lib_lora.webui.model_bundle import WebuiBundle

    model = make(webui)
    if model is not None:
        load_model(webui, model)
    info = WebuiHost().model_info()
    assert info.problem and words in info.problem
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(".", r"\.")):
        WebuiBundle(model)


def test_medvram_model_is_accepted(webui) -> None:
    from lib_lora.webui.model_bundle import model_problem

    webui.shared.cmd_opts.medvram = True
    model = wm.tiny_sd1()
    webui.lowvram.setup_for_low_vram(model, True)
    assert model.lowvram and model_problem(model) is None


def test_model_info_reports_the_loaded_model(webui) -> None:
    from lib_lora.webui.host import WebuiHost

    webui.shared.opts.CLIP_stop_at_last_layers = 2
    load_model(webui, wm.tiny_sd1(parameterization="v"))
    info = WebuiHost().model_info()
    assert (info.loaded, info.name, info.family, info.v_prediction, info.clip_skip, info.problem) == (
        True, "tiny-sd15", "sd1", True, 2, None,
    )  # fmt: skip
    load_model(webui, wm.tiny_sdxl())
    assert WebuiHost().model_info().family == "sdxl" and WebuiHost().model_info().clip_skip is None


def _checkpoint_with(folder, name: str, keys: tuple[str, ...]) -> None:
    """The loaded model's checkpoint file, carrying NoobAI-style flag keys (empty tensors)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"model.diffusion_model.out.2.bias": torch.zeros(4), **{k: torch.tensor([]) for k in keys}}
    save_file(tensors, str(folder / f"{name}.safetensors"))


def test_v_prediction_and_ztsnr_follow_the_webuis_config_and_noise_schedule(webui) -> None:
    # webui 1.10.1: parameterization from the model's config; ZTSNR from Settings > Noise schedule for sampling
    from lib_lora.config import TrainConfig
    from lib_lora.jobs.train_options import loss_settings
    from lib_lora.ui.train_panel import model_html
    from lib_lora.webui.host import WebuiHost

    bundle = bundle_of(webui, wm.tiny_sdxl())
    info = WebuiHost().model_info()
    assert (info.v_prediction, info.zero_terminal_snr, bundle.v_prediction, bundle.zero_terminal_snr) == (False,) * 4
    assert "epsilon" in model_html(info) and "zero terminal SNR" not in model_html(info)

    webui.shared.opts.sd_noise_schedule = "Zero Terminal SNR"
    bundle = bundle_of(webui, wm.tiny_sdxl(parameterization="v"))
    info = WebuiHost().model_info()
    assert (info.v_prediction, info.zero_terminal_snr, info.notes) == (True, True, ())
    assert "SDXL, v-prediction, zero terminal SNR" in model_html(info)
    settings = loss_settings(TrainConfig(), bundle)  # empty v_parameterization / zero_terminal_snr: the model's
    assert settings.v_prediction and settings.alphas_cumprod is not None and float(settings.alphas_cumprod[-1]) < 1e-6
    assert loss_settings(TrainConfig(zero_terminal_snr=False), bundle).alphas_cumprod is None  # the config wins


def test_checkpoint_v_pred_and_ztsnr_keys_are_honoured_and_the_webuis_view_is_named(webui, tmp_path) -> None:
    # a NoobAI-XL v-pred file: 1.10.1 does not read its keys (no .yaml beside it: eps, Default schedule)
    from lib_lora.config import TrainConfig
    from lib_lora.jobs.train_options import loss_settings
    from lib_lora.ui.train_panel import model_html
    from lib_lora.webui.host import WebuiHost

    folder = tmp_path / "models" / "Stable-diffusion"
    _checkpoint_with(folder, "tiny-sdxl", ("v_pred", "ztsnr"))
    bundle = bundle_of(webui, wm.tiny_sdxl(checkpoint_dir=str(folder)))
    info = WebuiHost().model_info()
    assert (info.v_prediction, info.zero_terminal_snr, bundle.v_prediction, bundle.zero_terminal_snr) == (True,) * 4
    assert len(info.notes) == 2 and "v_pred key" in info.notes[0] and "Noise schedule for sampling" in info.notes[1]
    shown = model_html(info)
    assert "v-prediction, zero terminal SNR" in shown and "samples the model as epsilon" in shown
    assert loss_settings(TrainConfig(), bundle).v_prediction

    # the webui's own config says v and its setting says ZTSNR: nothing to warn about
    webui.shared.opts.sd_noise_schedule = "Zero Terminal SNR"
    load_model(webui, wm.tiny_sdxl(checkpoint_dir=str(folder), parameterization="v"))
    assert WebuiHost().model_info().notes == ()

    # a plain checkpoint (no keys) under the default settings is epsilon
    webui.shared.opts.sd_noise_schedule = "Default"
    _checkpoint_with(folder, "tiny-sd15", ())
    load_model(webui, wm.tiny_sd1(checkpoint_dir=str(folder)))
    info = WebuiHost().model_info()
    assert (info.v_prediction, info.zero_terminal_snr, info.notes) == (False, False, ())


def test_reading_model_info_never_loads_a_model(webui) -> None:
    from lib_lora.webui.host import WebuiHost

    reads = webui.shared.sd_model_reads
    assert WebuiHost().model_info().loaded is False
    assert webui.shared.sd_model_reads == reads


# -- the webui's text path -----------------------------------------------------------------------------


def test_sd1_text_is_the_webui_conditioning_with_clip_skip_and_literal_brackets(webui) -> None:
    webui.shared.opts.CLIP_stop_at_last_layers = 2
    model = wm.tiny_sd1()
    bundle = bundle_of(webui, model)
    assert bundle.clip_skip == 2
    caption = "hutao, hu_tao_(genshin_impact), [smile]"
    with torch.no_grad():
        ours = bundle.encode_text([caption]).context
        webui_escaped = model.get_learned_conditioning([r"hutao, hu_tao_\(genshin_impact\), \[smile\]"])
        webui_raw = model.get_learned_conditioning([caption])
        webui.shared.opts.CLIP_stop_at_last_layers = 1
        skip1 = model.get_learned_conditioning([r"hutao, hu_tao_\(genshin_impact\), \[smile\]"])
    first = slice(0, model.cond_stage_model.chunk_length + 2)  # one chunk: max_token_length 75
    assert torch.equal(ours, webui_escaped[:, first])
    assert not torch.equal(ours, webui_raw[:, first])  # unescaped brackets would be read as weights
    assert not torch.equal(ours, skip1[:, first])


def test_long_captions_are_cut_or_padded_to_max_token_length(webui) -> None:
    model = wm.tiny_sd1()
    long_caption = ", ".join(f"tag{i}" for i in range(20))  # > one 14-token chunk of the tiny CLIP
    with torch.no_grad():
        one = bundle_of(webui, model).encode_text([long_caption, "smile"]).context
        two = bundle_of(webui, model, max_token_length=150).encode_text([long_caption, "smile"]).context
        full = model.get_learned_conditioning([r"" + long_caption])
    per_chunk = model.cond_stage_model.chunk_length + 2
    assert one.shape[1] == per_chunk and two.shape[1] == 2 * per_chunk
    assert torch.equal(two[0], full[0, : 2 * per_chunk])
    assert torch.equal(one[0], full[0, :per_chunk])


@pytest.mark.parametrize("make", [wm.tiny_sd1, wm.tiny_sdxl])
def test_text_encoder_loras_get_gradients_through_the_webui_path(webui, make) -> None:
    bundle = bundle_of(webui, make())
    network = network_for(bundle, unet=False)
    network.apply_to()
    try:
        with bundle.training(train_unet=False, train_text_encoder=True, gradient_checkpointing=False):
            text = bundle.encode_text(["hutao, smile"])
            loss = text.context.square().mean() + (text.pooled.square().mean() if text.pooled is not None else 0)
            loss.backward()
    finally:
        network.restore()
    assert network.components() == (["te"] if bundle.family == "sd1" else ["te1", "te2"])
    for component in network.components():
        grads = [m.lora_up.weight.grad for m in network.modules_of(component)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), component


def test_sdxl_size_conditioning_reaches_the_size_embedders_as_the_webui_computes_it(webui) -> None:
    from modules.prompt_parser import SdConditioning

    model = wm.tiny_sdxl()
    bundle = bundle_of(webui, model)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([400])
    with torch.no_grad():
        text = bundle.encode_text(["hu_tao_(genshin_impact)"])
        ours = bundle.denoise(x, t, text, torch.tensor([[64.0, 64, 0, 0, 64, 64]]))
        cond = model.get_learned_conditioning(SdConditioning([r"hu_tao_\(genshin_impact\)"], width=64, height=64))
        webui_out = model.apply_model(x, t, cond)
        cropped = bundle.denoise(x, t, text, torch.tensor([[96.0, 80, 16, 8, 64, 64]]))
    assert torch.equal(ours, webui_out)
    assert not torch.equal(ours, cropped)


# -- VAE -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [wm.tiny_sd1, wm.tiny_sdxl])
def test_latents_are_sampled_with_our_generator_and_leave_the_global_rng_alone(webui, make) -> None:
    model = make()
    bundle = bundle_of(webui, model)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    state = torch.get_rng_state()
    a = bundle.encode_images(images, generator=torch.Generator().manual_seed(5))
    b = bundle.encode_images(images, generator=torch.Generator().manual_seed(5))
    c = bundle.encode_images(images, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 4, 8, 8) and a.dtype == torch.float32
    with torch.no_grad():  # unscaled posterior samples: mean + std * our noise
        posterior = model.first_stage_model.quant_conv(model.first_stage_model.encoder(images))
    mean, logvar = posterior.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise, atol=1e-5)


def test_half_vae_nan_is_redone_in_float32_and_the_vae_stays_half(webui) -> None:
    model = wm.tiny_sdxl()
    bundle = bundle_of(webui, model)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = bundle.encode_images(images, generator=torch.Generator().manual_seed(5))
    vae = model.first_stage_model
    vae.half()
    encoder_forward = vae.encoder.forward

    def overflowing(x):  # SDXL's fp16 VAE overflows to NaN
        out = encoder_forward(x)
        return torch.full_like(out, float("nan")) if x.dtype == torch.float16 else out

    vae.encoder.forward = overflowing
    latents = bundle.encode_images(images, generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(latents).all()
    assert torch.allclose(latents, reference, atol=1e-2)
    assert all(p.dtype == torch.float16 for p in vae.parameters())


# -- training mode and session ----------------------------------------------------------------------------


def test_training_mode_turns_sgm_checkpoint_flags_off_and_back(webui) -> None:
    model = wm.tiny_sdxl()
    bundle = bundle_of(webui, model)
    before = model_state(model)
    flagged = [
        m for m in model.modules() if m.__dict__.get("checkpoint") is True or m.__dict__.get("use_checkpoint") is True
    ]
    assert flagged  # as sd_xl_base.yaml builds it
    with bundle.training(train_unet=True, train_text_encoder=True, gradient_checkpointing=True):
        assert not any(m.__dict__.get("checkpoint") or m.__dict__.get("use_checkpoint") for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        assert "forward" in model.model.diffusion_model.input_blocks[1].__dict__
    assert state_differences(before, model_state(model)) == []


def test_gradient_checkpointing_gives_the_same_gradients(webui) -> None:
    model = wm.tiny_sd1()
    bundle = bundle_of(webui, model)
    network = network_for(bundle, text=False, seed=1)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([100, 700])
    grads = []
    network.apply_to()
    try:
        for checkpointing in (False, True):
            network.zero_grad()
            with bundle.training(train_unet=True, train_text_encoder=False, gradient_checkpointing=checkpointing):
                text = bundle.encode_text(["hutao", "smile"])
                bundle.denoise(x, t, text, None).square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None]))
    finally:
        network.restore()
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_session_clears_the_builtin_loras_merged_weights(webui) -> None:
    from lib_lora.webui.host import WebuiHost
    from lib_lora.webui.model_bundle import TrainingSession

    model = wm.tiny_sd1()
    bundle = bundle_of(webui, model)
    clean, clean_state = outputs(model), model_state(model)
    write_lora(bundle, webui.lora_dir / "other.safetensors")
    p = webui.processing.StableDiffusionProcessingTxt2Img(
        prompt="smile <lora:other:1>", seed=1, steps=2, width=64, height=64
    )
    webui.processing.process_images(p)  # the last generation merged "other" into the weights
    assert webui.networks.loaded_networks and webui.networks.unmatched["other"] == []
    assert same_outputs(clean, outputs(model))  # merged: the model is not the clean one now
    with TrainingSession(WebuiHost().bundle()) as session:
        assert session.restored_lora_layers > 0 and webui.networks.loaded_networks == []
        assert state_differences(clean_state, model_state(model)) == []
    assert same_outputs(clean, outputs(model)) == []


def test_session_puts_optimisations_flags_and_medvram_hooks_back(webui) -> None:
    import ldm.modules.attention

    from lib_lora.webui.model_bundle import TrainingSession

    webui.shared.cmd_opts.medvram = True
    model = wm.tiny_sd1()
    webui.lowvram.setup_for_low_vram(model, True)
    bundle = bundle_of(webui, model)
    hooks = {name: list(m._forward_pre_hooks.values()) for name, m in model.named_modules() if m._forward_pre_hooks}
    wrappers = {k: model.first_stage_model.__dict__[k] for k in ("encode", "decode")}
    optimised = ldm.modules.attention.CrossAttention.forward
    before, state = outputs(model), model_state(model)
    with TrainingSession(bundle):
        assert ldm.modules.attention.CrossAttention.forward is webui.sd_hijack.attention_CrossAttention_forward
        assert webui.shared.parallel_processing_allowed is False
        assert not any(m._forward_pre_hooks for m in model.modules())
        assert "encode" not in model.first_stage_model.__dict__
    assert ldm.modules.attention.CrossAttention.forward is optimised
    assert webui.shared.parallel_processing_allowed is True
    assert {
        name: list(m._forward_pre_hooks.values()) for name, m in model.named_modules() if m._forward_pre_hooks
    } == hooks
    assert {k: model.first_stage_model.__dict__[k] for k in ("encode", "decode")} == wrappers
    assert webui.lowvram.module_in_gpu is None
    assert same_outputs(before, outputs(model)) == [] and state_differences(state, model_state(model)) == []
