"""The rows of a U-Net call and their maps.

Which U-Net rows belong to which image is explicit (``Cond``/``Uncond`` roles), because a step may span several
U-Net calls, AND prompts give several cond rows per image and the uncond rows may be missing. ``_CallMaps``
holds one call's needed rows, their refined maps per group and the running sums over layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import masks as M


@dataclass(frozen=True)
class Cond:
    """A cond row: image ``image``'s ``index``-th sub-prompt (``AND``)."""

    image: int
    index: int = 0


@dataclass(frozen=True)
class Uncond:
    """The uncond (negative prompt) row of image ``image``."""

    image: int


Role = Cond | Uncond


class _CallMaps:
    """The rows of one U-Net call whose maps are needed, their refined maps per group and their sums."""

    def __init__(self, roles: list[Role | None], uncond_needed: bool):
        self.roles = roles
        wanted = {r for r in roles if isinstance(r, Cond)}
        if uncond_needed:
            wanted |= {r for r in roles if isinstance(r, Uncond)}
        self.rows = [i for i, r in enumerate(roles) if r in wanted]
        self.pair_w: torch.Tensor | None = None  # (R, 2, T) a joint model's [background, rest] weights of the rows
        self.chunks: dict[tuple, tuple[tuple[int, int], list[torch.Tensor]]] = {}
        self.layers = 0
        self.acc = M.MaskAccumulator()

    def add(self, key, hw, maps: torch.Tensor, layers: int) -> None:
        self.chunks.setdefault(key, (hw, []))[1].append(maps)
        self.layers += layers

    @torch.no_grad()
    def fold(self, grid: tuple[int, int]) -> None:
        """Every layer's maps (resized to the grid where needed) into the running sums, in one batched step."""
        with torch.autocast(self.acc_device(), enabled=False):
            maps = []
            for hw, chunks in self.chunks.values():
                m = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
                if tuple(hw) != tuple(grid):
                    m = torch.matmul(m, M.resize_matrix(tuple(hw), tuple(grid), m.device))
                maps.append(m)
            self.chunks.clear()
            m = maps[0] if len(maps) == 1 else torch.cat(maps)
            k = m.shape[1]
            self.acc.add_layers(m.view(-1, len(self.rows), k, *grid))

    def acc_device(self) -> str:
        for _, chunks in self.chunks.values():
            return chunks[0].device.type
        return "cpu"

    def results(self, expected_layers: int, tokens: dict, pairs: dict) -> None:
        """Add this call's complete rows to ``tokens`` (cond rows) and ``pairs`` (every row)."""
        if self.acc.layers != expected_layers:
            return
        tok, pair = self.acc.tokens(), self.acc.pair()
        for j, i in enumerate(self.rows):
            role = self.roles[i]
            if isinstance(role, Cond):
                tokens[role] = tok[j : j + 1]
            pairs[role] = pair[j : j + 1]
