"""The block-wise settings (sd-scripts' ``down_lr_weight`` ``mid_lr_weight`` ``up_lr_weight``
``block_dims`` ``block_alphas`` ``conv_block_dims`` ``conv_block_alphas``) as one row per UNet block,
for the tab's table, and back.

The settings stay what sd-scripts and the config/TOML/metadata keep: comma-separated strings. The
table only shows them per block in sd-scripts' numbering (:mod:`lib_lora.engine.blocks`: SD1 25
blocks = IN00-IN11, M00, OUT00-OUT11; SDXL 23 = the embeddings, IN00-IN08, M00-M02, OUT00-OUT08,
``out``) and turns an edited table back into strings:

- a column the edit did not change keeps its string exactly as typed (a curve such as
  ``cosine+0.5`` stays a curve);
- an empty cell is the default: learning-rate factor 1, the network's dim/alpha, the conv dim/alpha
  (no conv LoRA without a conv dim; conv alpha 1 without one); a column with every cell empty is no
  setting at all;
- the lr lists are down + mid + up; SDXL's embeddings and ``out`` blocks always learn at factor 1.

A cell that is not a number is refused with one sentence naming the block (:class:`UserError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lib_lora.common.errors import UserError
from lib_lora.engine import blocks

HEADERS = ("block", "part", "LR factor", "dim", "alpha", "conv dim", "conv alpha")
LR_KEYS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
PER_BLOCK_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
KEYS = (*LR_KEYS, *PER_BLOCK_KEYS)
FIXED = "1 (fixed)"  # SDXL's embeddings and out blocks: sd-scripts gives them factor 1 always
_COLUMN = {"block_dims": 3, "block_alphas": 4, "conv_block_dims": 5, "conv_block_alphas": 6}
_WHAT = {"block_dims": "dim", "block_alphas": "alpha", "conv_block_dims": "conv dim", "conv_block_alphas": "conv alpha"}


def block_parts(sdxl: bool) -> list[str]:
    """What each block is, in sd-scripts' order (the names the LoRA Block Weight world uses too)."""
    if sdxl:
        return [
            "time + size embeddings (no LoRA)",
            "IN00 input conv (no LoRA)",
            *[f"IN{i:02d} down" for i in range(1, 9)],
            "M00 middle", "M01 middle", "M02 middle",
            *[f"OUT{i:02d} up" for i in range(9)],
            "out (no LoRA)",
        ]  # fmt: skip
    return ["IN00 input conv (no LoRA)", *[f"IN{i:02d} down" for i in range(1, 12)], "M00 middle"] + [
        f"OUT{i:02d} up" for i in range(12)
    ]


def _lr_span(sdxl: bool) -> dict[str, range]:
    """Which block rows each lr string covers."""
    side, mid = (blocks.SDXL_BLOCKS, blocks.SDXL_MID) if sdxl else (blocks.SD1_BLOCKS, blocks.SD1_MID)
    start = 1 if sdxl else 0
    return {
        "down_lr_weight": range(start, start + side),
        "mid_lr_weight": range(start + side, start + side + mid),
        "up_lr_weight": range(start + side + mid, start + 2 * side + mid),
    }


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, "g")
    return str(value).strip()


def _lr_cells(key: str, text: str | None, sdxl: bool) -> list[str]:
    """The cells of one lr string (curves worked out, short lists filled with 1 as sd-scripts)."""
    span = _lr_span(sdxl)[key]
    if text is None or not str(text).strip():
        return [""] * len(span)
    given = {k: (str(text) if k == key else None) for k in LR_KEYS}
    weights = blocks.block_lr_weights(sdxl, given["down_lr_weight"], given["mid_lr_weight"], given["up_lr_weight"])
    assert weights is not None
    return [format(weights[i], "g") for i in span]


def _per_block_cells(key: str, text: str | None, sdxl: bool) -> list[str]:
    count = blocks.num_blocks(sdxl)
    if text is None or not str(text).strip():
        return [""] * count
    values = [s.strip() for s in str(text).split(",")]
    if len(values) != count:
        family = "SDXL" if sdxl else "SD1"
        raise ValueError(
            f"{key} has {len(values)} numbers but an {family} model has {count} blocks: the table leaves them empty."
        )
    return values


def table_rows(values: Mapping[str, Any], sdxl: bool) -> tuple[list[list[str]], list[str]]:
    """The table for the settings ``values`` (the seven strings; missing = empty), and one sentence per
    string that does not fit the model (its column is shown empty)."""
    parts = block_parts(sdxl)
    rows = [[str(i), part, "", "", "", "", ""] for i, part in enumerate(parts)]
    if sdxl:
        rows[0][2] = rows[-1][2] = FIXED
    problems: list[str] = []
    for key in LR_KEYS:
        try:
            cells = _lr_cells(key, _none_if_empty(values.get(key)), sdxl)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        for i, cell in zip(_lr_span(sdxl)[key], cells):
            rows[i][2] = cell
    for key in PER_BLOCK_KEYS:
        try:
            cells = _per_block_cells(key, _none_if_empty(values.get(key)), sdxl)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        for row, cell in zip(rows, cells):
            row[_COLUMN[key]] = cell
    return rows, problems


def _none_if_empty(value: Any) -> str | None:
    text = _text(value)
    return text or None


def _number(cell: str, row: int, part: str, what: str, whole: bool) -> str:
    """A cell's number as it will be written; UserError naming the block when it is not one."""
    kind = "a whole number of 0 or more" if whole else "a number of 0 or more"
    try:
        number = float(cell)
    except ValueError:
        number = float("nan")
    if number != number or number < 0 or number == float("inf") or (whole and not number.is_integer()):
        raise UserError(f"Block {row} ({part}): the {what} must be {kind}, not {cell!r}.")
    return str(int(number)) if whole else cell


def settings_from_table(
    table: Sequence[Sequence[Any]],
    values: Mapping[str, Any],
    sdxl: bool,
    network_dim: Any,
    network_alpha: Any,
    conv_dim: Any = None,
    conv_alpha: Any = None,
) -> dict[str, str | None]:
    """The seven strings after an edit of the table: unchanged columns keep their string, edited
    ones are written out (empty cells as the defaults: lr 1, ``network_dim`` / ``network_alpha``,
    ``conv_dim`` (else 0) / ``conv_alpha`` (else 1)). UserError (one sentence) for a bad cell."""
    parts = block_parts(sdxl)
    if len(table) != len(parts):
        family = "SDXL" if sdxl else "SD1"
        raise UserError(
            f"The table has {len(table)} rows but the loaded {family} model has {len(parts)} blocks; press Refresh model."
        )
    cells = [[_text(c) for c in list(row) + [""] * (len(HEADERS) - len(row))] for row in table]
    if sorted(row[0] for row in cells) == sorted(str(i) for i in range(len(parts))):
        cells.sort(key=lambda row: int(row[0]))  # a table sorted by a column header: back in block order
    shown, _ = table_rows(values, sdxl)
    out: dict[str, str | None] = {k: _none_if_empty(values.get(k)) for k in KEYS}
    if sdxl:
        for i in (0, len(parts) - 1):
            if cells[i][2] not in ("", FIXED, "1", "1.0"):
                raise UserError(
                    f"Block {i} ({parts[i]}): its learning-rate factor is always 1 in sd-scripts; leave the cell as it is."
                )
    for key, span in _lr_span(sdxl).items():
        column = [cells[i][2] for i in span]
        if column == [shown[i][2] for i in span]:
            continue
        if not any(column):
            out[key] = None
            continue
        out[key] = ",".join(
            _number(c, i, parts[i], "learning-rate factor", False) if c else "1" for i, c in zip(span, column)
        )
    defaults = {
        "block_dims": _text(network_dim),
        "block_alphas": _text(network_alpha),
        "conv_block_dims": _text(conv_dim) or "0",
        "conv_block_alphas": _text(conv_alpha) or "1",
    }
    for key, col in _COLUMN.items():
        column = [row[col] for row in cells]
        if column == [row[col] for row in shown]:
            continue
        if not any(column):
            out[key] = None
            continue
        whole = key.endswith("dims")
        written = []
        for i, cell in enumerate(column):
            written.append(_number(cell or defaults[key], i, parts[i], _WHAT[key], whole))
        out[key] = ",".join(written)
    return out
