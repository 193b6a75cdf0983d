"""modules/sd_vae.py: which VAE is loaded (None: the checkpoint's own)."""

loaded_vae_file = None


def get_loaded_vae_name():
    return None if loaded_vae_file is None else loaded_vae_file.rsplit("/", 1)[-1]


def get_loaded_vae_hash():
    return None
