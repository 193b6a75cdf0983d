"""Pure tensor math of a LoRA branch (no modules, no state).

A LoRA adds ``up(down(x)) * multiplier * scale`` to a layer's output, ``scale = alpha / rank``.
For Linear layers ``down`` is ``[rank, in]`` and ``up`` ``[out, rank]``; for Conv2d, ``down`` is a
conv with the host's kernel/stride/padding (``[rank, in, kh, kw]``) and ``up`` a 1x1 conv
(``[out, rank, 1, 1]``), exactly as kohya sd-scripts lays them out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def effective_alpha(alpha: float | None, rank: int) -> float:
    """kohya's rule: an alpha of None or 0 means alpha = rank (scale 1)."""
    if alpha is None or alpha == 0:
        return float(rank)
    return float(alpha)


def lora_scale(alpha: float | None, rank: int) -> float:
    return effective_alpha(alpha, rank) / rank


def init_lora_(down: torch.Tensor, up: torch.Tensor) -> None:
    """Microsoft/kohya init: down kaiming-uniform(a=sqrt 5), up zeros -> the branch starts at zero."""
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        torch.nn.init.zeros_(up)


def delta_weight(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """The weight change ``up @ down * scale`` in the host weight's shape, computed in fp32.

    Linear: ``[out, in]``; 1x1 conv: ``[out, in, 1, 1]``; kxk conv: ``[out, in, k, k]`` (the
    composition of the k x k ``down`` conv and the 1x1 ``up`` conv).
    """
    down = down.float()
    up = up.float()
    if down.dim() == 2:
        return (up @ down) * scale
    if down.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1)).unsqueeze(2).unsqueeze(3) * scale
    return F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * scale


def rank_dropout_mask(shape: torch.Size, rank_dim: int, p: float, device: torch.device) -> torch.Tensor:
    """Per-sample Bernoulli keep-mask over the rank channels, shaped to broadcast over ``lx``.

    ``lx`` is ``[B, r]`` / ``[B, L, r]`` (Linear: rank last) or ``[B, r, H, W]`` (conv: rank_dim 1).
    """
    batch, rank = shape[0], shape[rank_dim]
    mask = (torch.rand((batch, rank), device=device) > p).to(torch.float32)
    view = [batch] + [1] * (len(shape) - 1)
    view[rank_dim] = rank
    return mask.view(view)


# -- Tucker (CP) rebuild, shared by LoCon (``lora_mid``), LoHa (``hada_t*``) and LoKr (``lokr_t2``) ---------------
# A Tucker conv factor keeps the k x k kernel in a small core ``t`` [r, r, kh, kw] and two 1x1 factors:
# ``rebuild = sum_ij t[i, j] * a[i, :] (outer) b[j, :]`` -> [a_cols, b_cols, kh, kw]. The webui's
# ``lyco_helpers.make_weight_cp`` (LoHa, LoKr) and ``rebuild_cp_decomposition`` (LoCon, with up/down
# in the [out, r] / [r, in] layout) compute the same contraction.


def tucker_rebuild(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``core`` [r1, r2, kh, kw], ``a`` [r1, p], ``b`` [r2, q] -> [p, q, kh, kw]."""
    return torch.einsum("ijkl,ip,jq->pqkl", core.float(), a.float(), b.float())


def locon_tucker_delta(down: torch.Tensor, mid: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """LoCon with a Tucker core: 1x1 ``down`` [r, in, 1, 1], k x k ``mid`` [r, r, kh, kw], 1x1 ``up``
    [out, r, 1, 1] -> ``[out, in, kh, kw] * scale``."""
    up2 = up.reshape(up.shape[0], -1).float()
    down2 = down.reshape(down.shape[0], -1).float()
    return tucker_rebuild(mid, up2.t(), down2) * scale


# -- LoHa: Hadamard product of two low-rank pairs -------------------------------------------------------------------


def loha_delta(
    w1a: torch.Tensor,
    w1b: torch.Tensor,
    w2a: torch.Tensor,
    w2b: torch.Tensor,
    scale: float,
    shape: tuple[int, ...],
    t1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
) -> torch.Tensor:
    """``((w1a @ w1b) * (w2a @ w2b)) * scale`` reshaped to the host weight ``shape``.

    Plain: ``w*a`` [out, r], ``w*b`` [r, in * kh * kw]. Tucker (k x k conv): ``t*`` [r, r, kh, kw],
    ``w*a`` [r, out], ``w*b`` [r, in]. ``scale = alpha / r``, applied once (as the webui and Forge
    apply it when they load the file).
    """
    if t1 is not None and t2 is not None:
        first, second = tucker_rebuild(t1, w1a, w1b), tucker_rebuild(t2, w2a, w2b)
    else:
        first = w1a.float() @ w1b.float()
        second = w2a.float() @ w2b.float()
    return (first * second).reshape(shape) * scale


# -- LoKr: Kronecker product of a small and a (low-rank or full) large factor ----------------------------------------


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)``, ``m <= n``, ``m * n == dimension``, the LyCORIS/webui rule.

    ``factor > 0`` that divides ``dimension``: ``(factor, dimension // factor)`` sorted. Otherwise
    ``m`` is the divisor ``<= factor`` (any size when ``factor`` is -1) with the smallest ``m + n``,
    i.e. the one closest to the square root: 128 -> (8, 16), 320 -> (16, 20), 127 -> (1, 127).
    """
    if factor > 0 and dimension % factor == 0:
        return tuple(sorted((factor, dimension // factor)))  # type: ignore[return-value]
    limit = dimension if factor < 0 else factor
    best = (1, dimension)
    m = 1
    while m * m <= dimension:
        if dimension % m == 0 and m <= limit and m + dimension // m < sum(best):
            best = (m, dimension // m)
        m += 1
    return best


def lokr_layout(
    out_dim: int,
    in_dim: int,
    kernel: tuple[int, ...],
    rank: int,
    factor: int = -1,
    decompose_both: bool = False,
    full_matrix: bool = False,
    use_tucker: bool = False,
) -> dict[str, tuple[int, ...]]:
    """The LoKr tensors (file names -> shapes) for a host weight ``[out, in, *kernel]``.

    ``out = a * b``, ``in = c * d`` (``factorization``); ``lokr_w1`` [a, c] is the small factor (a
    low-rank pair ``lokr_w1_a`` [a, r] / ``lokr_w1_b`` [r, c] with ``decompose_both`` when the rank is
    below half of it). The large factor is ``lokr_w2`` [b, d, *kernel] — full when the rank is at
    least half its larger side or ``full_matrix`` — else ``lokr_w2_a`` [b, r] / ``lokr_w2_b``
    [r, d * kh * kw], or with a Tucker core on a k x k conv ``lokr_t2`` [r, r, kh, kw],
    ``lokr_w2_a`` [r, b], ``lokr_w2_b`` [r, d]. These are LyCORIS's rules, so the same settings
    give the same file layout.
    """
    a, b = factorization(out_dim, factor)
    c, d = factorization(in_dim, factor)
    kernel = tuple(kernel)
    ksize = math.prod(kernel) if kernel else 1
    tucker = use_tucker and any(k != 1 for k in kernel)
    layout: dict[str, tuple[int, ...]] = {}
    if decompose_both and rank < max(a, c) / 2 and not full_matrix:
        layout["lokr_w1_a"], layout["lokr_w1_b"] = (a, rank), (rank, c)
    else:
        layout["lokr_w1"] = (a, c)
    if full_matrix or rank >= max(b, d) / 2:
        layout["lokr_w2"] = (b, d, *kernel)
    elif tucker:
        layout["lokr_t2"], layout["lokr_w2_a"], layout["lokr_w2_b"] = (rank, rank, *kernel), (rank, b), (rank, d)
    else:
        layout["lokr_w2_a"], layout["lokr_w2_b"] = (b, rank), (rank, d * ksize)
    return layout


def lokr_delta(
    w1: torch.Tensor | None,
    w1a: torch.Tensor | None,
    w1b: torch.Tensor | None,
    w2: torch.Tensor | None,
    w2a: torch.Tensor | None,
    w2b: torch.Tensor | None,
    scale: float,
    shape: tuple[int, ...],
    t2: torch.Tensor | None = None,
) -> torch.Tensor:
    """``kron(w1, w2) * scale`` in the host weight ``shape`` (each factor rebuilt from its pair or
    Tucker core first; a 2-D ``w2`` of a conv holds ``d * kh * kw`` columns)."""
    small = w1.float() if w1 is not None else w1a.float() @ w1b.float()
    if w2 is not None:
        large = w2.float()
    elif t2 is not None:
        large = tucker_rebuild(t2, w2a, w2b)
    else:
        large = w2a.float() @ w2b.float()
    if large.dim() == 4:
        small = small[:, :, None, None]
    return torch.kron(small.contiguous(), large.contiguous()).reshape(shape) * scale


# -- DoRA: weight decomposition, magnitude per INPUT column ------------------------------------------------------------
# The magnitude ``dora_scale`` is [1, in] (conv [1, in, 1, 1]): one norm per input column, taken over the
# output rows (and the kernel). This is the layout the webui 1.10.1 (``network.py::apply_weight_decompose``)
# and Forge apply correctly; LyCORIS >= 3.2 defaults to the output axis ([out, 1]), which the webui
# broadcasts without an error into wrong weights. We only ever write the input axis.


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """Norm of each input column of ``weight`` [out, in, ...] -> [1, in] (conv [1, in, 1, 1])."""
    weight = weight.float()
    norms = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
    return norms.reshape(1, weight.shape[1], *[1] * (weight.dim() - 2))


def dora_delta(orig: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA's weight change: ``(W + dW) * magnitude / column_norm(W + dW) - W`` (fp32).

    ``delta`` is the branch's scaled change (``alpha / rank`` applied); a multiplier scales the
    result afterwards, as the webui's ``finalize_updown`` does.
    """
    orig = orig.float()
    merged = orig + delta
    return merged * (magnitude.float() / column_norm(merged)) - orig
