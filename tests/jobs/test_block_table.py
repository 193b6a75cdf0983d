"""The tab's per-block table <-> sd-scripts' block-wise strings (jobs.block_table), checked against the
engine's own reading of those strings (engine.blocks, sd-scripts' get_block_lr_weight / block dims)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.common.errors import UserError
from lib_lora.config import build_config, load_toml
from lib_lora.engine import blocks
from lib_lora.jobs import block_table as bt

LR, DIM, ALPHA, CONV_DIM, CONV_ALPHA = 2, 3, 4, 5, 6


def _edit(rows: list[list[str]], row: int, col: int, value: str) -> list[list[str]]:
    out = [list(r) for r in rows]
    out[row][col] = value
    return out


def test_numbering_is_sd_scripts_per_family() -> None:
    sd1, _ = bt.table_rows({}, sdxl=False)
    sdxl, _ = bt.table_rows({}, sdxl=True)
    assert len(sd1) == blocks.num_blocks(False) == 25 and len(sdxl) == blocks.num_blocks(True) == 23
    assert [r[0] for r in sd1] == [str(i) for i in range(25)]
    # sd-scripts: SD1 block 1 = down_blocks_0 (ldm IN01), 12 = mid_block, 15 = up_blocks_0 resnets_2 (OUT02)
    assert (sd1[1][1], sd1[12][1], sd1[15][1]) == ("IN01 down", "M00 middle", "OUT02 up")
    assert blocks.block_index("lora_unet_up_blocks_0_resnets_2_conv2", sdxl=False) == 15
    # SDXL: 0 embeddings, 1 + N input_blocks_N, 10 + N middle_block_N, 13 + N output_blocks_N, 22 out
    assert (sdxl[2][1], sdxl[11][1], sdxl[13][1], sdxl[22][1]) == (
        "IN01 down",
        "M01 middle",
        "OUT00 up",
        "out (no LoRA)",
    )
    assert blocks.block_index("lora_unet_input_blocks_1_0_in_layers_2", sdxl=True) == 2
    assert sdxl[0][LR] == sdxl[22][LR] == bt.FIXED  # sd-scripts adds factor 1 at both ends for SDXL
    assert all(cell == "" for row in sd1 for cell in row[2:])  # nothing set: every cell is the default


def test_editing_cells_gives_the_kohya_strings() -> None:
    rows, _ = bt.table_rows({}, sdxl=False)
    # OUT03 (block 16 = up_blocks_1 first resnet/attention) at half the learning rate
    new = bt.settings_from_table(_edit(rows, 16, LR, "0.5"), {}, False, 16, 8.0)
    assert new["up_lr_weight"] == "1,1,1,0.5,1,1,1,1,1,1,1,1"
    assert new["down_lr_weight"] is None and new["mid_lr_weight"] is None and new["block_dims"] is None
    weights = blocks.block_lr_weights(False, None, None, new["up_lr_weight"])
    assert weights is not None and weights[16] == 0.5 and weights.count(1.0) == 24
    # the browser may send the rows sorted by a column (its header buttons): the block column decides
    shuffled = sorted(_edit(rows, 16, LR, "0.5"), key=lambda r: r[1], reverse=True)
    assert bt.settings_from_table(shuffled, {}, False, 16, 8.0) == new

    # a dim: the other blocks get the network's dim (empty = default), written as sd-scripts' 25 numbers
    new = bt.settings_from_table(_edit(rows, 5, DIM, "4"), {}, False, 16, 8.0)
    assert new["block_dims"] == ",".join(["16"] * 5 + ["4"] + ["16"] * 19)
    dims, alphas, conv_dims, _ = blocks.block_dims_and_alphas(
        False, new["block_dims"], None, 16, 8.0, None, None, None, None
    )
    assert dims[5] == 4 and alphas == [8.0] * 25 and conv_dims is None

    # conv columns: empty conv dim = 0 (no conv LoRA there) without a conv_dim; conv alpha default 1
    new = bt.settings_from_table(_edit(rows, 13, CONV_DIM, "8"), {}, False, 16, 8.0)
    assert new["conv_block_dims"] == ",".join(["0"] * 13 + ["8"] + ["0"] * 11) and new["conv_block_alphas"] is None
    new = bt.settings_from_table(_edit(rows, 13, CONV_DIM, "8"), {}, False, 16, 8.0, conv_dim=4, conv_alpha=2)
    assert new["conv_block_dims"] == ",".join(["4"] * 13 + ["8"] + ["4"] * 11)

    # SDXL: the middle block's three rows are mid_lr_weight
    sdxl, _ = bt.table_rows({}, sdxl=True)
    new = bt.settings_from_table(_edit(sdxl, 11, LR, "0"), {}, True, 32, 16)
    assert new["mid_lr_weight"] == "1,0,1"
    weights = blocks.block_lr_weights(True, None, new["mid_lr_weight"], None)
    assert weights is not None and weights[11] == 0.0 and len(weights) == 23


def test_unedited_columns_keep_their_string_and_emptied_ones_are_cleared() -> None:
    values = {"up_lr_weight": "cosine+0.5", "block_dims": ",".join(["8"] * 25), "down_lr_weight": "0,1"}
    rows, problems = bt.table_rows(values, sdxl=False)
    assert problems == []
    new = bt.settings_from_table(_edit(rows, 3, ALPHA, "2"), values, False, 8, 4)
    assert new["up_lr_weight"] == "cosine+0.5" and new["down_lr_weight"] == "0,1"  # as typed, not rewritten
    assert new["block_dims"] == values["block_dims"] and new["block_alphas"] == ",".join(["4"] * 3 + ["2"] + ["4"] * 21)
    cleared = [list(r) for r in rows]
    for row in cleared:
        row[DIM] = ""
    assert bt.settings_from_table(cleared, values, False, 8, 4)["block_dims"] is None  # every cell empty: no setting


def test_a_kohya_toml_fills_the_table_as_the_engine_reads_it(tmp_path: Path) -> None:
    toml = tmp_path / "kohya.toml"
    dims = ["4"] * 12 + ["8"] + ["4"] * 12
    toml.write_text(
        'network_module = "networks.lora"\nnetwork_dim = 4\nnetwork_alpha = 2\n'
        'network_args = ["down_lr_weight=0,0,0,0,0,0,1,1,1,1,1,1", "mid_lr_weight=2", "up_lr_weight=sine", '
        f'"block_dims={",".join(dims)}"]\n',
        encoding="utf-8",
    )
    cfg = build_config(load_toml(toml), check=False)
    rows, problems = bt.table_rows(cfg.as_dict(), sdxl=False)
    assert problems == []
    engine = blocks.block_lr_weights(False, cfg.down_lr_weight, cfg.mid_lr_weight, cfg.up_lr_weight)
    assert engine is not None
    assert [float(r[LR]) for r in rows] == pytest.approx(engine, abs=1e-5)  # the curve, as the engine reads it
    assert [r[LR] for r in rows[:7]] == ["0"] * 6 + ["1"] and rows[12][LR] == "2"
    assert [r[DIM] for r in rows] == dims and all(r[ALPHA] == "" for r in rows)


def test_a_bad_cell_is_one_sentence_naming_the_block() -> None:
    rows, _ = bt.table_rows({}, sdxl=False)
    cases = [
        (5, DIM, "abc", "Block 5 (IN05 down): the dim must be a whole number of 0 or more, not 'abc'."),
        (5, DIM, "2.5", "Block 5 (IN05 down): the dim must be a whole number of 0 or more, not '2.5'."),
        (20, LR, "-1", "Block 20 (OUT07 up): the learning-rate factor must be a number of 0 or more, not '-1'."),
        (12, CONV_ALPHA, "x", "Block 12 (M00 middle): the conv alpha must be a number of 0 or more, not 'x'."),
    ]
    for row, col, cell, message in cases:
        with pytest.raises(UserError) as err:
            bt.settings_from_table(_edit(rows, row, col, cell), {}, False, 16, 8)
        assert str(err.value) == message
    sdxl, _ = bt.table_rows({}, sdxl=True)
    with pytest.raises(
        UserError, match=r"^Block 0 \(time \+ size embeddings \(no LoRA\)\): its learning-rate factor is always 1"
    ):
        bt.settings_from_table(_edit(sdxl, 0, LR, "0.5"), {}, True, 16, 8)


def test_strings_that_do_not_fit_the_model_are_named_and_left_out() -> None:
    values = {"block_dims": ",".join(["4"] * 25), "down_lr_weight": "wavy"}
    rows, problems = bt.table_rows(values, sdxl=True)
    assert len(rows) == 23 and all(r[DIM] == "" and r[LR] in ("", bt.FIXED) for r in rows)
    assert problems == [
        "down_lr_weight = 'wavy' is not valid: use numbers or one of cosine, sine, linear, reverse_linear, zeros (optionally +base).",
        "block_dims has 25 numbers but an SDXL model has 23 blocks: the table leaves them empty.",
    ]
