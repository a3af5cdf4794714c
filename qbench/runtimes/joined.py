"""Several layers' tensors as one launch's: lean's 16-bit GEMV (`lean.Gemv.fuse`) and qbench-int4's
(`Int4Gemv.fuse`) join q, k, v and gate, up the same way, through `join_rows`."""

from __future__ import annotations

import torch


def join_rows(parts: list[torch.Tensor], interleave: bool = False, group_major: bool = False):
    """The layers' tensors [N_i, ...] (a weight, a bias, scales) as one [sum N_i, ...], in the layout
    they came in: concatenated along the rows or, `interleave` (lean's fold of gate and up: two
    tensors of one shape), their rows alternating, so a program holds whole (gate, up) pairs.
    `group_major`: [N, G] tensors stored G-major (stride (1, N), gemv_int4's scales and zeros), and
    so is the join. Returns (joined, [each layer's view into it])."""
    if group_major:  # join the [G, N] transposes along their second dimension
        joined, views = _join([p.t() for p in parts], interleave, 1)
        return joined.t(), [v.t() for v in views]
    return _join(parts, interleave, 0)


def _join(parts: list[torch.Tensor], interleave: bool, dim: int):
    if interleave:
        if len(parts) != 2 or parts[0].shape != parts[1].shape:
            raise ValueError("interleaving takes two tensors of one shape (gate and up)")
        joined = torch.stack(parts, dim=dim + 1).flatten(dim, dim + 1).contiguous()
        pairs = joined.unflatten(dim, (-1, 2))
        return joined, [pairs.select(dim + 1, i) for i in range(2)]
    joined = (parts[0] if len(parts) == 1 else torch.cat(parts, dim)).contiguous()
    views, start = [], 0
    for part in parts:
        views.append(joined.narrow(dim, start, part.shape[dim]))
        start += part.shape[dim]
    return joined, views
