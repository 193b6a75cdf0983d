"""Single-file checkpoints for the standalone loader's tests, laid out exactly as real ones.

Built from the webui-family tiny models (``support.tiny_models``: ldm UNet, HF CLIP, OpenCLIP-shaped
bigG) plus a tiny ldm VAE from the real ``ldm`` Encoder/Decoder, saved under the real prefixes
(``model.diffusion_model.``, ``first_stage_model.``, ``cond_stage_model.transformer.`` /
``conditioner.embedders.{0,1}...``). ``*_configs()`` give the diffusers/transformers configs that
match those tiny shapes (the loader's config override).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch
from torch import nn

from support import tiny_models as tm

VAE_CH, VAE_MULT, VAE_BLOCKS = 32, (1, 1, 2, 2), 1
# typical non-model tensors of a real ldm checkpoint (the loader must ignore them)
# SDXL's vector: the pooled bigG embedding (its width) + 6 size embeddings of 8 each
SDXL_ADM = tm.TE_HIDDEN + 6 * 8
SCHEDULE_EXTRAS = ("alphas_cumprod", "betas", "sqrt_alphas_cumprod", "model_ema.decay")


class LdmVAE(nn.Module):
    """ldm's AutoencoderKL module layout (encoder, decoder, quant_conv, post_quant_conv) in miniature,
    from the real ldm Encoder/Decoder (the full class needs pytorch_lightning)."""

    def __init__(self, ch: int = VAE_CH, ch_mult: tuple[int, ...] = VAE_MULT, blocks: int = VAE_BLOCKS) -> None:
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder, Encoder

        common = dict(ch=ch, out_ch=3, ch_mult=ch_mult, num_res_blocks=blocks, attn_resolutions=[],
                      in_channels=3, resolution=64, z_channels=4)  # fmt: skip
        self.encoder = Encoder(double_z=True, **common)
        self.decoder = Decoder(**common)
        self.quant_conv = nn.Conv2d(8, 8, 1)
        self.post_quant_conv = nn.Conv2d(4, 4, 1)

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


def ldm_vae(seed: int = 0) -> LdmVAE:
    torch.manual_seed(seed)
    return LdmVAE().eval()


def vae_config(scaling: float = 0.18215) -> dict:
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": VAE_BLOCKS,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [VAE_CH * m for m in VAE_MULT], "norm_num_groups": 32, "scaling_factor": scaling,
    }  # fmt: skip


def sd1_configs() -> dict[str, dict]:
    return {"unet": tm.diffusers_sd1_unet_config(), "vae": vae_config(), "te": tm.hf_clip_config().to_dict()}


def sdxl_te2_config() -> dict:
    config = tm.hf_clip_config(projection_dim=tm.TE_HIDDEN).to_dict()
    config["hidden_act"] = "gelu"  # OpenCLIP's GELU
    return config


def sdxl_configs() -> dict[str, dict]:
    return {
        "unet": tm.diffusers_sdxl_unet_config(adm_in_channels=SDXL_ADM),
        "vae": vae_config(0.13025),
        "te1": tm.hf_clip_config().to_dict(),
        "te2": sdxl_te2_config(),
    }


def _prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def sd1_parts(seed: int = 0) -> dict[str, nn.Module]:
    return {"unet": tm.ldm_sd1_unet(seed), "vae": ldm_vae(seed), "te": tm.hf_clip_text_model(seed)}


def sdxl_parts(seed: int = 0) -> dict[str, nn.Module]:
    return {
        "unet": tm.ldm_sdxl_unet(seed, adm_in_channels=SDXL_ADM),
        "vae": ldm_vae(seed),
        "te1": tm.hf_clip_text_model(seed + 1),
        "te2": tm.openclip_text_model(seed + 2),
    }


def sd1_tensors(parts: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    tensors = _prefixed("model.diffusion_model.", parts["unet"])
    tensors |= _prefixed("first_stage_model.", parts["vae"])
    tensors |= _prefixed("cond_stage_model.transformer.", parts["te"])
    tensors |= {name: torch.rand(4) for name in SCHEDULE_EXTRAS}
    return tensors


def sdxl_tensors(parts: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    tensors = _prefixed("model.diffusion_model.", parts["unet"])
    tensors |= _prefixed("first_stage_model.", parts["vae"])
    tensors |= _prefixed("conditioner.embedders.0.transformer.", parts["te1"])
    tensors |= _prefixed("conditioner.embedders.1.model.", parts["te2"])
    tensors["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6)
    tensors |= {name: torch.rand(4) for name in SCHEDULE_EXTRAS}
    return tensors


def save(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> Path:
    from safetensors.torch import save_file

    if dtype is not None:
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    save_file(tensors, str(path))
    return path


def tokenizer_dir(folder: Path) -> Path:
    """A tokenizer folder (vocab.json + merges.txt) with the tiny generated vocabulary."""
    from lib_lora.standalone.tiny import tiny_merges
    from lib_lora.standalone.tokenizer import write_tokenizer_files

    write_tokenizer_files(folder, tiny_merges())
    return folder


def write_bpe_archive(path: Path, merges: list[str]) -> Path:
    """An open_clip-style ``bpe_simple_vocab_16e6.txt.gz``: a header line, then one merge per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(["bpe_simple_vocab_16e6.txt#version: 0.2", *merges]) + "\n")
    return path


def fake_hf_cache(cache: Path, repo: str, files: dict[str, bytes], revision: str = "a" * 40) -> Path:
    """A hub-cache entry as huggingface_hub lays it out (refs/main naming a snapshot folder)."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(revision)
    snapshot = entry / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (cache / "version.txt").write_text("1")
    return snapshot
