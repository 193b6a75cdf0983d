"""The standalone sampler: deterministic per seed, LoRA files change the image and are removed
afterwards (model outputs bit-identical), stop and bad settings handled."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lib_lora.common.errors import UserError
from lib_lora.engine.network import LoRANetwork
from lib_lora.engine.targets import select_targets
from lib_lora.events import RecordingEvents, StopToken
from lib_lora.jobs.lora_files import save_network
from lib_lora.standalone.sampler import euler_schedule, generate
from lib_lora.standalone.tiny import build_tiny

SETTINGS = {"steps": 3, "width": 64, "height": 64, "cfg": 5.0}


@pytest.fixture(scope="module")
def sd15():
    return build_tiny("tiny-sd15")


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def _write_lora(bundle, path: Path, seed: int = 0, scale: float = 0.5, conv: bool = True) -> Path:
    unet, encoders, naming = bundle.lora_hosts()
    network = LoRANetwork(
        select_targets(bundle.family, unet, encoders, conv=conv), 4, 4, conv_rank=2 if conv else None,
        naming=naming, family=bundle.family,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network:
            module.lora_up.weight.copy_(torch.randn(module.lora_up.weight.shape, generator=generator) * scale)
    version = "sd_v1" if bundle.family == "sd1" else "sdxl_base_v1-0"
    save_network(network, path, {"ss_network_module": "networks.lora", "ss_base_model_version": version}, "float")
    return path


def _model_outputs(bundle):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        cond = bundle.encode_text(["1girl, smile"])
        return cond.context.clone(), bundle.denoise(x, torch.tensor([500]), cond, None).clone()


def test_same_seed_same_image_other_seed_other_image(sd15) -> None:
    a = _pixels(generate(sd15, ["a cat", "1girl"], seed=3, **SETTINGS))
    b = _pixels(generate(sd15, ["a cat", "1girl"], seed=3, **SETTINGS))
    c = _pixels(generate(sd15, ["a cat"], seed=4, **SETTINGS))
    assert len(a) == 2 and a[0].shape == (64, 64, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # image i uses seed + i and its own prompt
    assert a[0].std() > 1  # not a flat image


def test_lora_changes_the_image_and_is_removed_afterwards(sd15, tmp_path: Path) -> None:
    lora = _write_lora(sd15, tmp_path / "style.safetensors")
    before = _model_outputs(sd15)
    plain = _pixels(generate(sd15, ["a cat"], seed=1, **SETTINGS))[0]
    with_lora = _pixels(generate(sd15, ["a cat"], seed=1, lora=[(lora, 1.0)], **SETTINGS))[0]
    zero_weight = _pixels(generate(sd15, ["a cat"], seed=1, lora=[(lora, 0.0)], **SETTINGS))[0]
    again = _pixels(generate(sd15, ["a cat"], seed=1, lora=[(lora, 1.0)], **SETTINGS))[0]
    assert np.abs(with_lora.astype(int) - plain.astype(int)).max() > 10
    assert np.array_equal(zero_weight, plain) and np.array_equal(again, with_lora)
    after = _model_outputs(sd15)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert np.array_equal(_pixels(generate(sd15, ["a cat"], seed=1, **SETTINGS))[0], plain)


def test_two_loras_stack_and_both_are_removed(sd15, tmp_path: Path) -> None:
    first = _write_lora(sd15, tmp_path / "a.safetensors", seed=1, conv=False)
    second = _write_lora(sd15, tmp_path / "b.safetensors", seed=2)
    before = _model_outputs(sd15)
    one = _pixels(generate(sd15, ["a cat"], seed=1, lora=[(first, 1.0)], **SETTINGS))[0]
    both = _pixels(generate(sd15, ["a cat"], seed=1, lora=[(first, 1.0), (second, 0.7)], **SETTINGS))[0]
    assert not np.array_equal(one, both)
    after = _model_outputs(sd15)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_modes_are_restored_and_a_bad_lora_leaves_the_model_untouched(sd15, tmp_path: Path) -> None:
    sdxl = build_tiny("tiny-sdxl")
    wrong = _write_lora(sdxl, tmp_path / "xl.safetensors")
    good = _write_lora(sd15, tmp_path / "ok.safetensors")
    sd15.unet.train()
    try:
        before = [m.training for module in sd15.modules() for m in module.modules()]
        with pytest.raises(UserError, match="is a LoRA for SDXL, but the model is SD1.x"):
            generate(sd15, ["a cat"], lora=[(good, 1.0), (wrong, 1.0)], **SETTINGS)
        assert [m.training for module in sd15.modules() for m in module.modules()] == before
    finally:
        sd15.unet.eval()
    assert "forward" not in sd15.unet.down_blocks[1].attentions[0].proj_in.__dict__  # first LoRA removed too


def test_sdxl_and_v_prediction(tmp_path: Path) -> None:
    sdxl = build_tiny("tiny-sdxl")
    lora = _write_lora(sdxl, tmp_path / "xl.safetensors")
    eps = _pixels(generate(sdxl, ["a cat"], seed=2, **SETTINGS))[0]
    with_lora = _pixels(generate(sdxl, ["a cat"], seed=2, lora=[(lora, 1.0)], **SETTINGS))[0]
    assert np.abs(with_lora.astype(int) - eps.astype(int)).max() > 10
    sdxl.v_prediction = True
    v = _pixels(generate(sdxl, ["a cat"], seed=2, width=64, height=96, steps=3))[0]
    assert v.shape == (96, 64, 3) and not np.array_equal(v[:64], eps)


def test_progress_and_stop(sd15) -> None:
    events = RecordingEvents()
    images = generate(sd15, ["a", "b"], events=events, **SETTINGS)
    assert len(images) == 2 and events.last_progress == ("sampling", 6, 6, "")
    stop = StopToken()

    class StopAfterFirst(RecordingEvents):
        def progress(self, stage: str, done: int, total: int, text: str = "") -> None:
            super().progress(stage, done, total, text)
            if done == 3:
                stop.request()

    assert len(generate(sd15, ["a", "b", "c"], events=StopAfterFirst(), stop=stop, **SETTINGS)) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 100}, "width 100 is invalid"),
        ({"height": 32}, "height 32 is invalid"),
        ({"steps": 0}, "steps must be 1 or more"),
        ({"cfg": -1.0}, "CFG scale must not be negative"),
    ],
)
def test_bad_settings(sd15, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        generate(sd15, ["a cat"], **{**SETTINGS, **kwargs})
    with pytest.raises(UserError, match="one or more prompts"):
        generate(sd15, "a cat", **SETTINGS)  # type: ignore[arg-type]


def test_schedule_runs_from_the_largest_sigma_to_zero(sd15) -> None:
    timesteps, sigmas = euler_schedule(sd15.alphas_cumprod, 4)
    assert timesteps.tolist() == [999.0, 666.0, 333.0, 0.0]
    ac = sd15.alphas_cumprod.double()
    assert sigmas[0].item() == pytest.approx(((1 - ac[-1]) / ac[-1]).sqrt().item(), rel=1e-5)
    assert sigmas[-1].item() == 0 and bool((sigmas[:-1] > sigmas[1:]).all())


class _PerfectDenoiser:
    """Knows the clean latent x0: predicts ε or v exactly for the sampler's input, so a correct
    sampler ends at x0 whatever the schedule."""

    family = "sd1"
    device = torch.device("cpu")
    latent_scaling = 1.0

    def __init__(self, v_prediction: bool, zero_terminal_snr: bool = False) -> None:
        from lib_lora.engine.noise import scaled_linear_alphas_cumprod

        self.v_prediction = v_prediction
        self.zero_terminal_snr = zero_terminal_snr
        self.alphas_cumprod = scaled_linear_alphas_cumprod().float()
        self.x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))

    def encode_text(self, texts):
        return None

    def denoise(self, model_in, t, cond, size):
        from lib_lora.standalone.sampler import sampling_alphas_cumprod

        ac = sampling_alphas_cumprod(self.alphas_cumprod, self.zero_terminal_snr).double()
        log_sigmas = ((1 - ac) / ac).sqrt().log()
        tt = float(t[0])
        low, high = math.floor(tt), math.ceil(tt)
        sigma = math.exp((1 - (tt - low)) * float(log_sigmas[low]) + (tt - low) * float(log_sigmas[high]))
        a = 1.0 / (sigma**2 + 1.0)
        eps = (model_in - a**0.5 * self.x0) / (1 - a) ** 0.5
        return a**0.5 * eps - (1 - a) ** 0.5 * self.x0 if self.v_prediction else eps


@pytest.mark.parametrize(("v_prediction", "ztsnr"), [(False, False), (True, False), (True, True)])
def test_sampler_recovers_the_clean_latent_for_eps_v_and_zero_terminal_snr(v_prediction: bool, ztsnr: bool) -> None:
    from lib_lora.standalone.sampler import sample_latents

    model = _PerfectDenoiser(v_prediction, ztsnr)
    for steps in (1, 12):  # one step: the first prediction alone must give x0
        out = sample_latents(model, "a", "", seed=3, steps=steps, cfg=1.0, width=64, height=64)
        assert torch.isfinite(out).all()
        assert torch.allclose(out, model.x0, atol=1e-3)


def test_v_prediction_model_sampled_as_eps_does_not_recover() -> None:
    from lib_lora.standalone.sampler import sample_latents

    model = _PerfectDenoiser(True)
    wrong = sample_latents(model, "a", "", seed=3, steps=1, cfg=1.0, width=64, height=64, v_prediction=False)
    assert (wrong - model.x0).abs().mean() > 0.5


def test_zero_terminal_snr_sampling_schedule_is_finite() -> None:
    from lib_lora.engine.noise import scaled_linear_alphas_cumprod
    from lib_lora.standalone.sampler import sampling_alphas_cumprod

    ac = sampling_alphas_cumprod(scaled_linear_alphas_cumprod(), True)
    _, sigmas = euler_schedule(ac, 10)
    assert torch.isfinite(sigmas).all() and float(sigmas[0]) > 1000  # starts from (almost) pure noise
