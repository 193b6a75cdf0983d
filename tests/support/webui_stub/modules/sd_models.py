"""modules/sd_models.py: ``model_data`` (the loaded model; ``get_sd_model`` of 1.10.1 loads one on
first use, the stand-in holds what the test put there), CheckpointInfo's fields,
reload_model_weights (same checkpoint: returns the model), apply_alpha_schedule_override."""

import os


class CheckpointInfo:
    def __init__(self, filename, sha256=None, hash_="0123abcd"):
        self.filename = filename
        self.name = os.path.basename(filename)
        self.name_for_extra = os.path.splitext(self.name)[0]
        self.model_name = self.name_for_extra
        self.hash = hash_
        self.sha256 = sha256
        self.shorthash = sha256[:10] if sha256 else None
        self.title = self.name if self.shorthash is None else f"{self.name} [{self.shorthash}]"


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if v is not None:
            self.was_loaded_at_least_once = True


model_data = SdModelData()
checkpoint_aliases = {}
reloads = 0


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    global reloads
    reloads += 1
    return model_data.sd_model


def apply_token_merging(sd_model, token_merging_ratio):
    pass


def apply_alpha_schedule_override(sd_model, p=None):
    if not hasattr(sd_model, "alphas_cumprod") or not hasattr(sd_model, "alphas_cumprod_original"):
        return
    sd_model.alphas_cumprod = sd_model.alphas_cumprod_original
