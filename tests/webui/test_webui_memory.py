"""Memory while training in the stand-in webui: SDPA attention whatever the webui's setting (and
the setting back afterwards), the savers (TE cache, fp8 base, checkpointing) in one run with the
model bit-identical afterwards, training on top of the webui's own FP8 weights, bad combinations
refused before anything changes, and the run's memory given back."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from lib_lora.common.errors import UserError
from support import webui_models as wm
from support.webui_env import FAST, dataset, load_model, model_state, outputs, same_outputs, state_differences


def _attention_layers(model):
    from lib_lora.engine.attention import is_ldm_attention

    return [m for m in model.model.diffusion_model.modules() if is_ldm_attention(m)]


@pytest.mark.parametrize("keep_webui_optimisations", [False, True])
def test_training_attention_is_sdpa_and_the_webui_setting_comes_back(webui, keep_webui_optimisations) -> None:
    import ldm.modules.attention

    from lib_lora.engine.attention import sdpa_forward
    from lib_lora.webui.model_bundle import TrainingSession, WebuiBundle

    webui.shared.opts.training_xattention_optimizations = keep_webui_optimisations
    model = load_model(webui, wm.tiny_sd1())
    bundle = WebuiBundle(model)
    optimised = ldm.modules.attention.CrossAttention.forward
    undo_calls = webui.sd_hijack.calls["undo"]
    before, state = outputs(model), model_state(model)
    with TrainingSession(bundle):
        with bundle.training(train_unet=True, train_text_encoder=False, gradient_checkpointing=False):
            layers = _attention_layers(model)
            assert layers and all(m.forward.__func__ is sdpa_forward for m in layers)
            x = torch.randn(1, 4, 8, 8)
            out = bundle.denoise(x, torch.tensor([10]), bundle.encode_text(["hutao"]), None)
            assert torch.isfinite(out).all()
        assert not any("forward" in m.__dict__ for m in layers)
    assert ldm.modules.attention.CrossAttention.forward is optimised  # the webui's choice, as it was
    assert webui.sd_hijack.calls["undo"] - undo_calls == (0 if keep_webui_optimisations else 1)
    assert same_outputs(before, outputs(model)) == [] and state_differences(state, model_state(model)) == []


def test_sdpa_off_trains_through_the_webui_attention(webui) -> None:
    from lib_lora.webui.model_bundle import WebuiBundle

    model = load_model(webui, wm.tiny_sd1())
    bundle = WebuiBundle(model)
    bundle.sdpa = False
    with bundle.training(train_unet=True, train_text_encoder=False, gradient_checkpointing=False):
        assert not any("forward" in m.__dict__ for m in _attention_layers(model))


def _host_train(webui, **settings):
    from lib_lora.config import build_config
    from lib_lora.events import Events, StopToken
    from lib_lora.webui.host import WebuiHost

    folder = dataset(webui.root / "data", images=2, name="1_hutao")
    values = {**FAST, "train_data_dir": str(folder), "output_name": "hutao", "sample_every_n_epochs": None, **settings}
    return WebuiHost().train(build_config(values), Events(), StopToken())


def test_a_run_with_every_saver_trains_and_leaves_the_model_as_it_was(webui) -> None:
    model = load_model(webui, wm.tiny_sd1(checkpoint_dir=str(webui.root)))
    before, state = outputs(model), model_state(model)
    result = _host_train(
        webui, network_train_unet_only=True, cache_text_encoder_outputs=True, gradient_checkpointing=True,
        fp8_base=True, sample_every_n_epochs=1,
    )  # fmt: skip
    assert result.status == "done" and result.steps == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    from lib_lora.formats.safetensors_io import read_header

    assert read_header(result.files[-1].path).metadata["ss_fp8_base"] == "True"
    assert same_outputs(before, outputs(model)) == [] and state_differences(state, model_state(model)) == []


def test_training_on_the_webuis_own_fp8_weights_leaves_them_as_they_were(webui) -> None:
    from lib_lora.webui.model_bundle import WebuiBundle, model_problem

    model = wm.tiny_sd1(checkpoint_dir=str(webui.root))
    with torch.no_grad():  # what the webui's load does with FP8 weight on: every Linear/Conv2d but the VAE's
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not name.startswith("first_stage_model"):
                module.to(torch.float8_e4m3fn)
    webui.devices.fp8 = True
    load_model(webui, model)
    assert model_problem(model) is None
    bundle = WebuiBundle(model)
    assert bundle.float8_weights and bundle.dtype == torch.float32  # computes in the webui's UNet dtype
    stored = {n: (p, p.dtype) for n, p in model.named_parameters()}
    result = _host_train(webui, network_train_unet_only=True)
    assert result.status == "done" and all(torch.isfinite(torch.tensor(result.losses)))
    assert {n: (p, p.dtype) for n, p in model.named_parameters()} == stored


def test_fp8_on_a_device_without_float8_is_refused_before_anything_changes(webui, monkeypatch) -> None:
    from lib_lora.engine import fp8
    from lib_lora.webui.model_bundle import model_problem

    model = load_model(webui, wm.tiny_sd1())
    state = model_state(model)
    sentence = "This device (cpu) cannot store float8 weights (TypeError); turn fp8_base off."
    from lib_lora.jobs import train as train_job

    monkeypatch.setattr(fp8, "float8_problem", lambda device: sentence)
    monkeypatch.setattr(train_job, "float8_problem", lambda device: sentence)
    with pytest.raises(UserError, match=r"cannot store float8 weights"):
        _host_train(webui, fp8_base=True)
    assert state_differences(state, model_state(model)) == []
    assert not list(webui.lora_dir.glob("*.safetensors"))
    webui.devices.fp8 = True  # the webui's own FP8 on such a device: refused as a model problem
    assert model_problem(model) == sentence


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"shuffle_caption": True}, "cache_text_encoder_outputs cannot be used with shuffle_caption"),
        ({"caption_tag_dropout_rate": 0.1}, "cannot be used with caption_tag_dropout_rate"),
        ({"network_train_unet_only": False}, "cache_text_encoder_outputs needs network_train_unet_only"),
    ],
)
def test_te_cache_with_changing_captions_is_refused_in_one_sentence(webui, settings, words) -> None:
    model = load_model(webui, wm.tiny_sd1())
    state = model_state(model)
    values = {"network_train_unet_only": True, "cache_text_encoder_outputs": True, **settings}
    with pytest.raises(UserError, match=words):
        _host_train(webui, **values)
    assert state_differences(state, model_state(model)) == []


def test_the_runs_memory_is_given_back(webui, monkeypatch) -> None:
    """After a run nothing it made is still alive: the LoRA network, the optimizer, the latent and
    text caches (weakrefs die), and the model holds no hook, patch or extra tensor."""
    from lib_lora.jobs import train as train_job

    made: dict[str, weakref.ref] = {}
    real_build, real_latents = train_job.build_network, train_job._prepare_latents
    real_text = train_job._prepare_text_cache

    def build_network(cfg, bundle):
        network = real_build(cfg, bundle)
        made["network"] = weakref.ref(network)
        return network

    def prepare_latents(*args, **kwargs):
        cache = real_latents(*args, **kwargs)
        made["latents"] = weakref.ref(cache)
        return cache

    def prepare_text(*args, **kwargs):
        cache = real_text(*args, **kwargs)
        made["text"] = weakref.ref(next(iter(cache.values())).context)
        return cache

    monkeypatch.setattr(train_job, "build_network", build_network)
    monkeypatch.setattr(train_job, "_prepare_latents", prepare_latents)
    monkeypatch.setattr(train_job, "_prepare_text_cache", prepare_text)
    model = load_model(webui, wm.tiny_sd1(checkpoint_dir=str(webui.root)))
    tensors = sum(1 for _ in [*model.parameters(), *model.buffers()])
    result = _host_train(
        webui, network_train_unet_only=True, cache_text_encoder_outputs=True, gradient_checkpointing=True, fp8_base=True
    )
    assert result.status == "done"
    del result
    gc.collect()
    assert set(made) == {"network", "latents", "text"}
    assert {name: ref() is None for name, ref in made.items()} == {"network": True, "latents": True, "text": True}
    assert sum(1 for _ in [*model.parameters(), *model.buffers()]) == tensors
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in model.modules())
