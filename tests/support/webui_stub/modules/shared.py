"""modules/shared.py: cmd_opts, opts, state, parallel_processing_allowed and ``sd_model``, which is
a module property reading ``sd_models.model_data`` (as shared_items.Shared makes it in 1.10.1; the
real one loads a checkpoint on first access). ``sd_model_reads`` counts the reads for tests."""

import sys

from modules import options, paths_internal, shared_cmd_options, shared_state
from modules.paths_internal import data_path, models_path, script_path  # noqa: F401

cmd_opts = shared_cmd_options.cmd_opts
parallel_processing_allowed = True
config_filename = cmd_opts.ui_settings_file
device = None
state = shared_state.State()
OptionInfo = options.OptionInfo
options_section = options.options_section
options_templates: dict = {}
options_templates.update(options_section(("sd", "Stable Diffusion"), {
    "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip"),
    "emphasis": OptionInfo("Original", "Emphasis mode"),
    "training_xattention_optimizations": OptionInfo(False, "Use cross attention optimizations while training"),
    "cross_attention_optimization": OptionInfo("Automatic", "Cross attention optimization"),
    "persistent_cond_cache": OptionInfo(True, "Persistent cond cache"),
    "sdxl_crop_top": OptionInfo(0, "crop top coordinate"),
    "sdxl_crop_left": OptionInfo(0, "crop left coordinate"),
    "sdxl_refiner_low_aesthetic_score": OptionInfo(2.5, "SDXL low aesthetic score"),
    "sdxl_refiner_high_aesthetic_score": OptionInfo(6.0, "SDXL high aesthetic score"),
    "outdir_grids": OptionInfo("", "Output directory for grids"),
    "outdir_txt2img_grids": OptionInfo("outputs/txt2img-grids", "Output directory for txt2img grids"),
    "live_previews_enable": OptionInfo(True, "Show live previews"),
    "grid_background_color": OptionInfo("#ffffff", "Grid background color"),
}))  # fmt: skip
options_templates.update(options_section(("sampler-params", "Sampler parameters", "sd"), {
    # 1.10.1's choices: "Default" and "Zero Terminal SNR" (sd_models.apply_alpha_schedule_override reads it)
    "sd_noise_schedule": OptionInfo("Default", "Noise schedule for sampling"),
}))  # fmt: skip
options_templates.update(options_section(("optimizations", "Optimizations", "sd"), {
    "fp8_storage": OptionInfo("Disable", "FP8 weight"),
    "cache_fp16_weight": OptionInfo(False, "Cache FP16 weight for LoRA"),
}))  # fmt: skip
opts = options.Options(options_templates)
sd_model_reads = 0


class Shared(sys.modules[__name__].__class__):
    @property
    def sd_model(self):
        import modules.sd_models

        global sd_model_reads
        sd_model_reads += 1
        return modules.sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        import modules.sd_models

        modules.sd_models.model_data.set_sd_model(value)


sys.modules[__name__].__class__ = Shared
del paths_internal
