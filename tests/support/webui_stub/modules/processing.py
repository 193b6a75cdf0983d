"""modules/processing.py: StableDiffusionProcessingTxt2Img + process_images with 1.10.1's flow
for what the extension relies on: ``p.sd_model`` is ``shared.sd_model``; override_settings applied
and restored; ``reload_model_weights``; ``state.job_count`` (-1 -> n_iter), ``state.interrupted``
ends the batch loop, ``state.nextjob()`` per batch; ``<lora:...>`` parsed and activated unless
``p.disable_extra_networks``; conditioning cached in class-level ``cached_c``/``cached_uc`` keyed
by prompts, steps, clip skip, checkpoint, extra-network data and size (not by LoRA weights trained
in place); noise from ``torch.manual_seed(seed)`` (the global RNG, as modules/rng.py); under
``torch.no_grad``; ``lowvram.send_everything_to_cpu()`` after each batch under --medvram.

The sampler is a plain DDIM over ``sd_model.apply_model`` with classifier-free guidance.
"""

import os

import numpy as np
import torch
from PIL import Image

from modules import devices, extra_networks, lowvram, paths, prompt_parser, sd_models, shared
from modules.shared import opts, state


class StableDiffusionProcessing:
    cached_c = [None, None]
    cached_uc = [None, None]

    def __init__(self, sd_model=None, prompt="", negative_prompt="", seed=-1, sampler_name=None, scheduler=None,
                 batch_size=1, n_iter=1, steps=50, cfg_scale=7.0, width=512, height=512, do_not_save_samples=False,
                 do_not_save_grid=False, override_settings=None, styles=None, **kwargs):  # fmt: skip
        self.prompt, self.negative_prompt, self.seed = prompt, negative_prompt, seed
        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.batch_size, self.n_iter, self.steps, self.cfg_scale = batch_size, n_iter, steps, cfg_scale
        self.width, self.height = width, height
        self.do_not_save_samples, self.do_not_save_grid = do_not_save_samples, do_not_save_grid
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = True
        self.disable_extra_networks = False
        self.scripts = None
        self.extra_generation_params = {}
        self.extra_network_data = {}
        self.cached_c = StableDiffusionProcessing.cached_c
        self.cached_uc = StableDiffusionProcessing.cached_uc
        self.c = self.uc = None
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def sd_model(self):
        return shared.sd_model

    def close(self):
        self.c = None
        self.uc = None
        if not opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c = [None, None]
            StableDiffusionProcessing.cached_uc = [None, None]

    def cached_params(self, required_prompts, steps, extra_network_data):
        extra = {k: [tuple(p.items) for p in v] for k, v in (extra_network_data or {}).items()}
        return (
            tuple(required_prompts), steps, opts.CLIP_stop_at_last_layers, shared.sd_model.sd_checkpoint_info,
            repr(sorted(extra.items())), self.width, self.height,
        )  # fmt: skip

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data):
        params = self.cached_params(required_prompts, steps, extra_network_data)
        for cache in caches:
            if cache[0] is not None and params == cache[0]:
                return cache[1]
        cache = caches[0]
        with devices.autocast():
            cache[1] = function(shared.sd_model, required_prompts)
        cache[0] = params
        return cache[1]

    def setup_conds(self):
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height)
        negative = prompt_parser.SdConditioning(self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True)  # fmt: skip
        learned = lambda model, texts: model.get_learned_conditioning(texts)  # noqa: E731
        self.uc = self.get_conds_with_caching(learned, negative, self.steps, [self.cached_uc], self.extra_network_data)
        self.c = self.get_conds_with_caching(learned, prompts, self.steps, [self.cached_c], self.extra_network_data)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_c = [None, None]
    cached_hr_uc = [None, None]

    def sample(self, conditioning, unconditional_conditioning, seeds):
        model = self.sd_model
        shape = (len(seeds), 4, self.height // 8, self.width // 8)
        noise = []
        for seed in seeds:
            torch.manual_seed(seed)
            noise.append(torch.randn(shape[1:], device=devices.device))
        x = torch.stack(noise)
        alphas = model.alphas_cumprod.to(x.device, torch.float32)
        timesteps = torch.linspace(999, 0, self.steps).round().long().tolist()
        state.sampling_steps = len(timesteps)
        for i, t in enumerate(timesteps):
            if state.interrupted:
                break
            state.sampling_step = i
            t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            out_c = model.apply_model(x, t_batch, conditioning)
            out_u = model.apply_model(x, t_batch, unconditional_conditioning)
            out = (out_u + self.cfg_scale * (out_c - out_u)).float()
            a = alphas[t]
            a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
            if getattr(model, "parameterization", "eps") == "v":
                x0 = a.sqrt() * x - (1 - a).sqrt() * out
                eps = (1 - a).sqrt() * x + a.sqrt() * out
            else:
                eps = out
                x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", infotexts=None):
        self.images = images_list
        self.prompt = p.prompt
        self.seed = seed
        self.infotexts = infotexts or []
        self.info = info


def create_infotext(p, prompt, seed):
    return (
        f"{prompt}\nNegative prompt: {p.negative_prompt}\nSteps: {p.steps}, Sampler: {p.sampler_name}, "
        f"CFG scale: {p.cfg_scale}, Seed: {seed}, Size: {p.width}x{p.height}"
    )


def process_images(p):
    stored_opts = {k: opts.data[k] for k in p.override_settings if k in opts.data}
    try:
        sd_models.reload_model_weights()
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
        res = process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def process_images_inner(p):
    devices.torch_gc()
    seed = int(p.seed) if p.seed not in (-1, None) else int(np.random.randint(0, 2**31))
    p.all_prompts = [p.prompt] * (p.batch_size * p.n_iter)
    p.all_negative_prompts = [p.negative_prompt] * len(p.all_prompts)
    p.all_seeds = [seed + i for i in range(len(p.all_prompts))]
    images, infotexts = [], []
    if state.job_count == -1:
        state.job_count = p.n_iter
    with torch.no_grad():
        for n in range(p.n_iter):
            if state.interrupted or state.stopping_generation:
                break
            sd_models.reload_model_weights()
            p.prompts = p.all_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size : (n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size : (n + 1) * p.batch_size]
            p.prompts, p.extra_network_data = extra_networks.parse_prompts(p.prompts)
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.extra_network_data)
            p.setup_conds()
            if n == 0 and not getattr(shared.cmd_opts, "no_prompt_history", False):
                with open(os.path.join(paths.data_path, "params.txt"), "w", encoding="utf8") as file:
                    file.write(create_infotext(p, p.prompts[0], p.seeds[0]))
            sd_models.apply_alpha_schedule_override(p.sd_model, p)
            samples = p.sample(p.c, p.uc, p.seeds)
            if state.interrupted:
                break
            decoded = p.sd_model.decode_first_stage(samples).float()
            decoded = torch.clamp((decoded + 1.0) / 2.0, 0.0, 1.0)
            if lowvram.is_enabled(shared.sd_model):
                lowvram.send_everything_to_cpu()
            state.nextjob()
            for i, x in enumerate(decoded):
                array = (255.0 * np.moveaxis(x.cpu().numpy(), 0, 2)).astype(np.uint8)
                images.append(Image.fromarray(array))
                infotexts.append(create_infotext(p, p.all_prompts[n * p.batch_size + i], p.seeds[i]))
    return Processed(p, images, seed, infotexts[0] if infotexts else "", infotexts)
