"""Single-file checkpoints: the VAE key map (golden, full size), every tensor of a full-size SD1.5 and
SDXL layout landing in our modules with its shape, tiny checkpoints in the real layout computing what
their source modules compute (fp32, atol 1e-5), and one clear error per bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_lora.common.errors import UserError
from lib_lora.formats import keymap
from lib_lora.standalone import checkpoint
from lib_lora.standalone.architectures import load_config
from lib_lora.standalone.bundle import text_root
from lib_lora.standalone.models import load_model
from support import full_size
from support import standalone_checkpoints as sc
from support import tiny_models as tm

ATOL = 1e-5


def _meta_state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in module.state_dict().items()}


def _full_ldm_vae() -> torch.nn.Module:
    with torch.device("meta"):
        return sc.LdmVAE(ch=128, ch_mult=(1, 2, 4, 4), blocks=2)


def _full_diffusers_vae(name: str) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL(**load_config(name))


# -- VAE key map -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["sd_vae", "sdxl_vae"])
def test_every_ldm_vae_tensor_maps_onto_diffusers_with_the_same_shape(config: str) -> None:
    ldm = _full_ldm_vae().state_dict()
    converted = keymap.convert_vae_state_dict(ldm)
    diffusers = _full_diffusers_vae(config).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in diffusers.items()}


@pytest.mark.parametrize(
    "ldm, diffusers",
    [
        ("encoder.conv_in.weight", "encoder.conv_in.weight"),
        ("encoder.down.0.block.1.conv2.bias", "encoder.down_blocks.0.resnets.1.conv2.bias"),
        ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
        ("encoder.down.2.downsample.conv.weight", "encoder.down_blocks.2.downsamplers.0.conv.weight"),
        ("encoder.mid.block_1.norm1.weight", "encoder.mid_block.resnets.0.norm1.weight"),
        ("encoder.mid.attn_1.norm.bias", "encoder.mid_block.attentions.0.group_norm.bias"),
        ("encoder.mid.attn_1.q.weight", "encoder.mid_block.attentions.0.to_q.weight"),
        ("decoder.mid.attn_1.proj_out.bias", "decoder.mid_block.attentions.0.to_out.0.bias"),
        ("decoder.mid.block_2.conv1.weight", "decoder.mid_block.resnets.1.conv1.weight"),
        ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
        ("decoder.up.3.block.2.conv1.weight", "decoder.up_blocks.0.resnets.2.conv1.weight"),
        ("decoder.up.3.upsample.conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight"),
        ("decoder.up.1.upsample.conv.bias", "decoder.up_blocks.2.upsamplers.0.conv.bias"),
        ("decoder.up.0.block.0.nin_shortcut.weight", "decoder.up_blocks.3.resnets.0.conv_shortcut.weight"),
        ("quant_conv.weight", "quant_conv.weight"),
        ("post_quant_conv.bias", "post_quant_conv.bias"),
    ],
)
def test_vae_name_pairs(ldm: str, diffusers: str) -> None:
    assert keymap.vae_ldm_to_diffusers(ldm) == diffusers


@pytest.mark.parametrize("name", ["encoder.down.4.block.0.conv1.weight", "decoder.up.0.downsample.conv.weight",
                                  "encoder.mid.attn_2.q.weight", "loss.logvar", "encoder"])  # fmt: skip
def test_vae_map_refuses_unknown_names(name: str) -> None:
    with pytest.raises(KeyError):
        keymap.vae_ldm_to_diffusers(name)


def test_vae_attention_convs_become_linear_weights() -> None:
    weight = torch.randn(8, 8, 1, 1)
    out = keymap.convert_vae_state_dict({"encoder.mid.attn_1.k.weight": weight, "loss.logvar": torch.zeros(())})
    assert list(out) == ["encoder.mid_block.attentions.0.to_k.weight"]
    assert torch.equal(out["encoder.mid_block.attentions.0.to_k.weight"], weight[:, :, 0, 0])


# -- full-size layouts (meta tensors: no memory, no download) -----------------------------------------------


def _full_sd15_source() -> checkpoint.DictSource:
    tensors = _meta_state(full_size.ldm_sd15_unet(), "model.diffusion_model.")
    tensors |= _meta_state(_full_ldm_vae(), "first_stage_model.")
    tensors |= _meta_state(full_size.hf_text_encoder("clip_l"), "cond_stage_model.transformer.")
    return checkpoint.DictSource(tensors)


def _full_sdxl_source() -> checkpoint.DictSource:
    diffusers_unet = full_size.diffusers_unet("sdxl").state_dict()
    tensors = {
        "model.diffusion_model." + keymap.diffusers_to_ldm(k, keymap.SDXL_LAYOUT): v for k, v in diffusers_unet.items()
    }
    tensors |= _meta_state(_full_ldm_vae(), "first_stage_model.")
    tensors |= _meta_state(full_size.hf_text_encoder("clip_l"), "conditioner.embedders.0.transformer.")
    bigg = "conditioner.embedders.1.model."
    tensors |= _meta_state(full_size.openclip_bigg_text(), bigg)
    # the helper's tower keeps the tiny vocabulary and context; bigG's are CLIP's
    tensors[bigg + "token_embedding.weight"] = torch.empty(49408, 1280, device="meta")
    tensors[bigg + "positional_embedding"] = torch.empty(77, 1280, device="meta")
    return checkpoint.DictSource(tensors)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_full_size_checkpoint_layout_loads_every_tensor(family: str) -> None:
    source = _full_sd15_source() if family == "sd1" else _full_sdxl_source()
    info = checkpoint.inspect_source(source, "full.safetensors")
    assert info.family == family and info.has_vae and not info.v_prediction
    unet, vae, encoders = checkpoint.build_components(
        source, family, device=torch.device("meta"), dtype=torch.float16,
        configs=checkpoint.component_configs(family),
    )  # fmt: skip
    assert sum(p.numel() for p in unet.parameters()) == (859520964 if family == "sd1" else 2567463684)
    assert sum(p.numel() for p in vae.parameters()) == 83653863
    assert set(encoders) == ({"te"} if family == "sd1" else {"te1", "te2"})
    if family == "sdxl":
        assert encoders["te2"].text_projection.weight.shape == (1280, 1280)
        assert len(encoders["te2"].text_model.encoder.layers) == 32
    for module in (unet, vae, *encoders.values()):
        assert all(p.dtype == torch.float16 and not p.requires_grad for p in module.parameters())
        assert not module.training


# -- tiny checkpoints in the real layout -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("sd1")
    parts = sc.sd1_parts()
    path = sc.save(folder / "tiny_sd1.safetensors", sc.sd1_tensors(parts))
    return path, parts, sc.tokenizer_dir(folder / "tokenizer")


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("sdxl")
    parts = sc.sdxl_parts()
    tensors = sc.sdxl_tensors(parts)
    tensors["v_pred"] = torch.tensor([])
    path = sc.save(folder / "tiny_sdxl.safetensors", tensors)
    return path, parts, sc.tokenizer_dir(folder / "tokenizer")


def _check_vae(vae, ldm_vae) -> None:
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        moments = ldm_vae.moments(x)
        dist = vae.encode(x).latent_dist
        assert torch.allclose(dist.mean, moments[:, :4], atol=ATOL)
        assert torch.allclose(dist.logvar, moments[:, 4:].clamp(-30, 20), atol=ATOL)
        assert torch.allclose(vae.decode(z).sample, ldm_vae.decode(z), atol=ATOL)


def test_tiny_sd1_checkpoint_computes_what_its_source_modules_compute(sd1_file) -> None:
    path, parts, tokenizer = sd1_file
    bundle = load_model(path, device="cpu", dtype="fp32", tokenizer_dir=tokenizer, configs=sc.sd1_configs())
    assert (bundle.family, bundle.model_name, bundle.model_path) == ("sd1", path.name, str(path))
    assert not bundle.v_prediction and bundle.latent_scaling == 0.18215
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 600])
    ctx = torch.randn(2, 5, tm.TE_HIDDEN, generator=torch.Generator().manual_seed(4))
    tokens = tm.tokens()
    with torch.no_grad():
        expected = parts["unet"](x, t, context=ctx)
        assert expected.abs().max() > 0.1
        assert torch.allclose(bundle.unet(x, t, encoder_hidden_states=ctx).sample, expected, atol=ATOL)
        ours = bundle.text_encoders["te"](tokens, output_hidden_states=True)
        theirs = parts["te"](tokens, output_hidden_states=True)
        for a, b in zip(ours.hidden_states, theirs.hidden_states):
            assert torch.allclose(a, b, atol=ATOL)
        assert torch.allclose(ours.last_hidden_state, theirs.last_hidden_state, atol=ATOL)
    _check_vae(bundle.vae, parts["vae"])


def test_tiny_sdxl_checkpoint_computes_what_its_source_modules_compute(sdxl_file) -> None:
    path, parts, tokenizer = sdxl_file
    bundle = load_model(path, device="cpu", dtype="fp32", tokenizer_dir=tokenizer, configs=sc.sdxl_configs())
    assert bundle.family == "sdxl" and bundle.v_prediction and bundle.latent_scaling == 0.13025
    assert bundle.tokenizers["te2"].pad_token_id == 0
    unet = bundle.unet
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 600])
    ctx = torch.randn(2, 5, 2 * tm.TE_HIDDEN, generator=generator)
    pooled = torch.randn(2, tm.TE_HIDDEN, generator=generator)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [80, 48, 4, 0, 64, 64]])
    with torch.no_grad():
        # sgm's vector: pooled + the 6 size numbers' sinusoidal embeddings (as diffusers' add_time_proj)
        y = torch.cat([pooled, unet.add_time_proj(time_ids.flatten()).reshape(2, -1)], dim=-1)
        expected = parts["unet"](x, t, context=ctx, y=y)
        cond = {"text_embeds": pooled, "time_ids": time_ids}
        assert torch.allclose(unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=cond).sample, expected, atol=ATOL)
        tokens = tm.tokens()
        te1 = bundle.text_encoders["te1"](tokens, output_hidden_states=True).hidden_states
        for a, b in zip(te1, parts["te1"](tokens, output_hidden_states=True).hidden_states):
            assert torch.allclose(a, b, atol=ATOL)
        te2 = bundle.text_encoders["te2"](tokens, output_hidden_states=True)
        for a, b in zip(te2.hidden_states, parts["te2"].hidden_states(tokens)):
            assert torch.allclose(a, b, atol=ATOL)
        assert torch.allclose(te2.text_embeds, parts["te2"].pooled(tokens), atol=ATOL)
    _check_vae(bundle.vae, parts["vae"])


def test_half_precision_file_loads_into_the_asked_dtype(tmp_path: Path) -> None:
    parts = sc.sd1_parts(1)
    path = sc.save(tmp_path / "half.safetensors", sc.sd1_tensors(parts), dtype=torch.float16)
    bundle = load_model(
        path, device="cpu", dtype="fp32", tokenizer_dir=sc.tokenizer_dir(tmp_path / "tok"), configs=sc.sd1_configs()
    )
    assert bundle.dtype == torch.float32 and bundle.vae.dtype == torch.float32
    weight = bundle.unet.conv_in.weight
    assert torch.equal(weight, parts["unet"].input_blocks[0][0].weight.half().float())


def test_v_prediction_and_ztsnr_flags_and_overrides(tmp_path: Path, sdxl_file) -> None:
    path, _, tokenizer = sdxl_file
    assert checkpoint.inspect_checkpoint(path).v_prediction
    forced = load_model(path, tokenizer_dir=tokenizer, configs=sc.sdxl_configs(), v_prediction=False, device="cpu")
    assert not forced.v_prediction
    tensors = sc.sd1_tensors(sc.sd1_parts()) | {"ztsnr": torch.tensor([])}
    sd1 = sc.save(tmp_path / "z.safetensors", tensors)
    info = checkpoint.inspect_checkpoint(sd1)
    assert (info.family, info.v_prediction, info.zero_terminal_snr) == ("sd1", False, True)
    bundle = load_model(sd1, tokenizer_dir=tokenizer, configs=sc.sd1_configs(), v_prediction=True, device="cpu")
    assert bundle.v_prediction and bundle.zero_terminal_snr


def test_separate_vae_file_replaces_the_built_in_one(tmp_path: Path, sd1_file) -> None:
    path, _, tokenizer = sd1_file
    other = sc.ldm_vae(seed=9)
    vae_path = sc.save(tmp_path / "other_vae.safetensors", {k: v.contiguous() for k, v in other.state_dict().items()})
    bundle = load_model(path, vae=vae_path, tokenizer_dir=tokenizer, configs=sc.sd1_configs(), device="cpu")
    _check_vae(bundle.vae, other)


# -- bad files ---------------------------------------------------------------------------------------------------


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    return sc.save(path, {k: v.contiguous() for k, v in tensors.items()})


def _unet_stub() -> dict[str, torch.Tensor]:
    return {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}


BAD_FILES = {
    "missing": (lambda d: d / "nope.safetensors", "does not exist"),
    "folder": (lambda d: (d / "model_dir").mkdir() or d / "model_dir", "is a folder"),
    "ckpt": (lambda d: (d / "model.ckpt").write_bytes(b"PK\x03\x04") and d / "model.ckpt", "Convert it to safetensors"),
    "other suffix": (lambda d: (d / "model.gguf").write_bytes(b"GGUF") and d / "model.gguf", "not a .safetensors file"),
    "garbage": (
        lambda d: (d / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
        and d / "junk.safetensors",
        "not a readable safetensors file",
    ),
    "lora": (
        lambda d: _write(d / "lora.safetensors", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}),
        "is a LoRA, not a model checkpoint",
    ),
    "embedding": (lambda d: _write(d / "emb.safetensors", {"emb_params": torch.zeros(2, 768)}), "embedding"),
    "vae only": (lambda d: _write(d / "vae.safetensors", {"encoder.conv_in.weight": torch.zeros(2)}), "a VAE file"),
    "no unet": (lambda d: _write(d / "x.safetensors", {"some.tensor": torch.zeros(2)}), "no model.diffusion_model"),
    "sd2": (
        lambda d: _write(d / "sd2.safetensors", _unet_stub() | {"cond_stage_model.model.ln_final.weight": torch.zeros(2)}),
        "SD2.x models are not supported",
    ),
    "refiner": (
        lambda d: _write(d / "ref.safetensors", _unet_stub() | {"conditioner.embedders.0.model.ln_final.weight": torch.zeros(2)}),
        "SDXL refiner",
    ),
    "no text encoder": (lambda d: _write(d / "u.safetensors", _unet_stub()), "no text encoder weights"),
    "inpainting": (
        lambda d: _write(
            d / "inpaint.safetensors",
            {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3),
             "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(2)},
        ),
        "inpainting or instruct model",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_model_files_are_one_clear_error(tmp_path: Path, case: str) -> None:
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=message):
        load_model(path, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_family_override_must_match(sd1_file) -> None:
    path, _, tokenizer = sd1_file
    with pytest.raises(UserError, match="is an SD1.x checkpoint, but family sdxl"):
        load_model(path, family="sdxl", tokenizer_dir=tokenizer, configs=sc.sd1_configs(), device="cpu")
    with pytest.raises(UserError, match="Unknown model family"):
        load_model(path, family="sd3", device="cpu")


def test_missing_vae_and_wrong_shapes(tmp_path: Path, sd1_file) -> None:
    path, parts, tokenizer = sd1_file
    tensors = {k: v for k, v in sc.sd1_tensors(parts).items() if not k.startswith("first_stage_model.")}
    no_vae = _write(tmp_path / "novae.safetensors", tensors)
    with pytest.raises(UserError, match="has no VAE weights"):
        load_model(no_vae, tokenizer_dir=tokenizer, configs=sc.sd1_configs(), device="cpu")
    # the shipped full-size configs do not fit tiny weights: a clear message, not a torch traceback
    with pytest.raises(UserError, match="do not match the expected architecture"):
        load_model(path, tokenizer_dir=tokenizer, device="cpu")


def test_missing_tokenizer_is_reported_before_loading(
    tmp_path: Path, sd1_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lib_lora.standalone import tokenizer as tok

    path, _, _ = sd1_file
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tok, "find_open_clip_bpe", lambda: None)
    built = []
    monkeypatch.setattr(checkpoint, "build_components", lambda *a, **k: built.append(1))
    with pytest.raises(UserError, match="tokenizer vocabulary was not found"):
        load_model(path, configs=sc.sd1_configs(), device="cpu")
    assert not built


def test_header_only_inspection_reads_no_weights(sd1_file, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = sd1_file
    monkeypatch.setattr(checkpoint.SafetensorsSource, "get", lambda self, name: pytest.fail(f"read {name}"))
    info = checkpoint.inspect_checkpoint(path)
    assert info.family == "sd1" and info.has_vae


def test_clip_without_the_text_model_level_loads(tmp_path: Path) -> None:
    """Some SD1 files name the text encoder ``cond_stage_model.transformer.embeddings...`` (older
    transformers); position_ids stored as floats (a known broken variant) are rebuilt, not trusted."""
    parts = sc.sd1_parts(2)
    tensors = {
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
        for k, v in sc.sd1_tensors(parts).items()
    }
    key = "cond_stage_model.transformer.embeddings.position_ids"
    tensors[key] = tensors[key].float() + 0.3
    path = _write(tmp_path / "old.safetensors", tensors)
    bundle = load_model(path, tokenizer_dir=sc.tokenizer_dir(tmp_path / "tok"), configs=sc.sd1_configs(), device="cpu")
    tokens = tm.tokens()
    with torch.no_grad():
        ours = bundle.text_encoders["te"](tokens).last_hidden_state
        assert torch.allclose(ours, parts["te"](tokens).last_hidden_state, atol=ATOL)
    position_ids = text_root(bundle.text_encoders["te"]).embeddings.position_ids
    assert torch.equal(position_ids[0], torch.arange(tm.MAX_TOKENS))
