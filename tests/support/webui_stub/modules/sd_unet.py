"""modules/sd_unet.py: the active SD Unet replacement (None: the model's own UNet)."""

current_unet = None
