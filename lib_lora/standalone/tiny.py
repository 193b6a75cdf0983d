"""Built-in demo models ``tiny-sd15`` and ``tiny-sdxl``: the real architectures in miniature.

Random weights from a fixed seed (the same model every time), created in-process in well under a
second, small enough to train on a CPU:

- ``tiny-sd15``: UNet with 4 levels, attention on levels 1-2 (SD1.5 also has it on level 0, where it
  costs most of a CPU training step at 64x64 latents, so the demo leaves it out), 1x1-conv
  proj_in/proj_out; one CLIP text encoder.
- ``tiny-sdxl``: UNet with 3 levels, attention on levels 1-2 (two transformer blocks at the
  deepest), Linear proj_in/proj_out, ``text_time`` vector conditioning; CLIP-L-like and
  bigG-like text encoders (the second with a projection).
- both: a VAE with the real x8 downsampling and 4 latent channels; a real ``CLIPTokenizer`` over a
  small BPE vocabulary generated here (CLIP's layout: bytes, bytes + ``</w>``, merges, BOS, EOS).

Channels are 16 on the outer levels and 32 deeper (GroupNorm with 16 groups; the real models use
32). Each model's module names are a subset of the full-size model's, so LoRA files trained on
them carry real kohya names. A training step at 512 px, batch 2, takes about 0.15 s on a 2-core CPU:
the ``character`` preset on 12 images (550 steps) finishes in about a minute and a half.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from functools import lru_cache

import torch

from lib_lora.common.errors import UserError
from lib_lora.standalone.bundle import DiffusersBundle
from lib_lora.standalone.tokenizer import bytes_to_unicode, tokenizer_from_files, write_tokenizer_files

TINY_MODELS = ("tiny-sd15", "tiny-sdxl")
SEED = 1234

# Words the generated vocabulary is learned from (booru-style tags and plain words).
_CORPUS_TEXT = """
1girl 1boy solo multiple girls long hair short hair blonde hair brown hair black hair white hair silver hair
pink hair blue hair red hair green hair purple hair twintails ponytail braid bangs ahoge hair ornament
blue eyes red eyes green eyes brown eyes yellow eyes purple eyes closed eyes smile open mouth blush
looking at viewer looking away simple background white background black background gradient background
dress skirt shirt jacket coat hat hood gloves boots thighhighs school uniform serafuku kimono armor
holding sword weapon book umbrella flower cup sitting standing walking lying running kneeling
outdoors indoors sky cloud tree grass flower water ocean beach river lake mountain forest city street
night day sunset sunrise rain snow autumn leaves cherry blossoms window room bed chair table
portrait upper body full body cowboy shot close up from side from behind from above from below
cat dog bird horse fox rabbit dragon animal ears tail wings
red orange yellow green blue purple pink white black grey brown silver gold colorful monochrome
circle square triangle star shape stripes pattern gradient noise abstract
photo photograph painting drawing sketch illustration anime style realistic watercolor oil lineart
masterpiece best quality high quality detailed highres absurdres lowres worst quality bad anatomy
a an the of in on at with and or for by to from character concept style art image picture demo
"""
CORPUS = tuple(_CORPUS_TEXT.split())
MAX_MERGES = 480


def _learn_bpe(words: tuple[str, ...], max_merges: int) -> list[str]:
    """Byte-pair merges learned greedily from ``words`` (most frequent pair first, ties broken by
    the pair itself so the result never changes)."""
    table = bytes_to_unicode()
    counts = Counter("".join(table[b] for b in word.lower().encode("utf-8")) for word in words)
    vocab = {(*word[:-1], word[-1] + "</w>"): n for word, n in counts.items()}
    merges: list[str] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in vocab.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(f"{best[0]} {best[1]}")
        merged = best[0] + best[1]
        new_vocab = {}
        for symbols, n in vocab.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_vocab[tuple(out)] = n
        vocab = new_vocab
    return merges


@lru_cache(maxsize=1)
def tiny_merges() -> tuple[str, ...]:
    return tuple(_learn_bpe(CORPUS, MAX_MERGES))


def tiny_vocab_size() -> int:
    return 2 * 256 + len(tiny_merges()) + 2


def tiny_tokenizer(pad_token: str | None = None):
    """A real ``CLIPTokenizer`` over the generated vocabulary (files written to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="lib_lora_tiny_tok_") as tmp:
        return tokenizer_from_files(write_tokenizer_files(tmp, tiny_merges()), pad_token=pad_token)


def _text_config(hidden: int, layers: int, heads: int, act: str, projection: int | None = None) -> dict:
    vocab = tiny_vocab_size()
    config = {
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "max_position_embeddings": 77,
        "hidden_act": act, "layer_norm_eps": 1e-5, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1,
        "pad_token_id": vocab - 1,
    }  # fmt: skip
    if projection:
        config["projection_dim"] = projection
    return config


def _vae_config(scaling: float) -> dict:
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 32, 64, 64], "norm_num_groups": 32, "act_fn": "silu",
        "sample_size": 512, "scaling_factor": scaling,
    }  # fmt: skip


SD15_TE = (64, 3, 2)  # hidden, layers, heads
SDXL_TE1 = (32, 3, 2)
SDXL_TE2 = (64, 3, 2)
SDXL_TIME_DIM = 16


def tiny_configs(name: str) -> dict[str, dict]:
    """diffusers/transformers configs of a tiny model by component (``unet``, ``vae``, ``te`` | ``te1``, ``te2``)."""
    if name == "tiny-sd15":
        hidden, layers, heads = SD15_TE
        return {
            "unet": {
                "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                "block_out_channels": [16, 16, 32, 32],
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "attention_head_dim": [1, 1, 2, 2], "cross_attention_dim": hidden, "norm_num_groups": 16,
                "use_linear_projection": False, "flip_sin_to_cos": True, "freq_shift": 0,
            },
            "vae": _vae_config(0.18215),
            "te": _text_config(hidden, layers, heads, "quick_gelu"),
        }  # fmt: skip
    if name == "tiny-sdxl":
        h1, l1, n1 = SDXL_TE1
        h2, l2, n2 = SDXL_TE2
        return {
            "unet": {
                "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                "block_out_channels": [16, 16, 32],
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "transformer_layers_per_block": [1, 1, 2], "attention_head_dim": [1, 1, 2],
                "cross_attention_dim": h1 + h2, "norm_num_groups": 16, "use_linear_projection": True,
                "flip_sin_to_cos": True, "freq_shift": 0, "addition_embed_type": "text_time",
                "addition_time_embed_dim": SDXL_TIME_DIM, "projection_class_embeddings_input_dim": h2 + 6 * SDXL_TIME_DIM,
            },
            "vae": _vae_config(0.13025),
            "te1": _text_config(h1, l1, n1, "quick_gelu"),
            "te2": _text_config(h2, l2, n2, "gelu", projection=h2),
        }  # fmt: skip
    raise UserError(f"Unknown demo model {name!r}; the built-in ones are {', '.join(TINY_MODELS)}.")


def build_tiny(
    name: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    v_prediction: bool = False,
    clip_skip: int | None = None,
) -> DiffusersBundle:
    """Create ``tiny-sd15`` or ``tiny-sdxl`` (the same weights every time; the global RNG is untouched)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = tiny_configs(name)
    family = "sd1" if name == "tiny-sd15" else "sdxl"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        encoders = {}
        for component in ("te", "te1", "te2"):
            if component in configs:
                cls = CLIPTextModelWithProjection if component == "te2" else CLIPTextModel
                encoders[component] = cls(CLIPTextConfig(**configs[component]))
    if family == "sd1":
        tokenizers = {"te": tiny_tokenizer()}
    else:
        tokenizers = {"te1": tiny_tokenizer(), "te2": tiny_tokenizer(pad_token="!")}
    for module in (unet, vae, *encoders.values()):
        module.requires_grad_(False)
        module.eval()
        module.to(device=device, dtype=dtype)
    return DiffusersBundle(
        family, unet, vae, encoders, tokenizers,
        model_name=name, model_path=None, v_prediction=v_prediction, clip_skip=clip_skip,
    )  # fmt: skip
