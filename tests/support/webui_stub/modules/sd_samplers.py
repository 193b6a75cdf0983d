"""modules/sd_samplers.py: ``samplers_map`` (lower-case names and aliases -> sampler name)."""

samplers_map = {
    "euler a": "Euler a", "k_euler_a": "Euler a", "k_euler_ancestral": "Euler a", "euler": "Euler",
    "k_euler": "Euler", "ddim": "DDIM", "dpm++ 2m": "DPM++ 2M", "k_dpmpp_2m": "DPM++ 2M",
}  # fmt: skip


def find_sampler_config(name):
    return name if name in samplers_map.values() else None
