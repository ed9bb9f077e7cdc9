"""The batched processing of the stashed layers, whose cost per call does not grow with the number of captured
layers (at a given memory budget):

* the stashed layers are grouped by shape (SD1/SD2: the latent/4 blocks, the latent/8 middle block; SDXL: its
  60 latent/4 blocks) and each group is processed with a fixed number of operations: one ``cat`` of all its
  projections, one strided copy that keeps only the needed rows (the cond rows; the uncond rows only when the
  foreground is taken from them) and splits the heads, then batched products for every layer at once;
* a group is processed when the U-Net call ends (a forward hook on the U-Net), or earlier, in layer chunks,
  as soon as the stash and the work it needs would exceed a memory budget; self-attention scores are formed in
  head chunks under the same budget;
* the refined maps of all layers are renormalised and summed over layers in one batched step
  (``MaskAccumulator.add_layers``); the foreground's [background, rest] reduction rides along as two extra
  channels (everything after the softmax is linear in the token axis).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import masks as M
from .backgrounds import _row_backgrounds, _token_and_pair
from .calls import _CallMaps
from .layer import AttentionLayer

# a DiT's maps are read at latent/4 (not at its latent/2 token grid) when that grid has at least this many cells
# on its shorter side: the official code's grid for SD1.5 at 512² (16x16); Anima at 1024² gets 32x32
MIN_POOLED_SIDE = 16


@functools.lru_cache(maxsize=16)
def _zero(device: torch.device) -> torch.Tensor:
    # the ignored ``input`` of baddbmm with beta=0 (cached: no tensor creation per call)
    return torch.zeros((), dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=32)
def _row_index(rows: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


@functools.lru_cache(maxsize=32)
def _pool_matrix(hw: tuple[int, int], stride: int, device: torch.device) -> torch.Tensor:
    """``(h * w, h' * w')`` 0/1: token ``(i, j)`` of an ``h`` x ``w`` grid -> cell ``(i // stride, j // stride)``."""
    h, w = hw
    cell = (torch.arange(h)[:, None] // stride * -(-w // stride) + torch.arange(w)[None] // stride).flatten()
    return torch.nn.functional.one_hot(cell, -(-h // stride) * -(-w // stride)).float().to(device)


@functools.lru_cache(maxsize=32)
def _heads_to_maps(tokens: int, heads: int, batch: int, device: torch.device) -> torch.Tensor:
    """``(batch, T + 2, heads * T)``: ``_token_and_pair`` divided by the head count and repeated for every head,
    so that one product with the per-head maps ``(batch, heads * T, n)`` averages the heads (cached,
    expanded)."""
    return (_token_and_pair(tokens, device) / heads).repeat(1, heads).expand(batch, tokens + 2, heads * tokens)


def _version(t: torch.Tensor) -> int | None:
    return None if t.is_inference() else t._version  # inference tensors have no version counter


@dataclass(frozen=True, slots=True)
class _Group:
    """Shapes shared by the stashed layers processed together."""

    rows: int  # needed rows of the call
    n: int  # attention positions
    tokens: int  # context length
    channels: int
    heads: int
    hw: tuple[int, int]  # the layer's grid
    scale1: float  # self-attention scale
    scale2: float  # cross-attention scale
    stash_bytes: int  # one layer's four projections
    factor: int  # downsampling level
    split: bool  # stashed as (batch, heads, tokens, head dim), not (batch, tokens, channels)
    stride: int = 1  # read at every stride-th query row and column, key columns summed over stride^2 cells

    @property
    def out_hw(self) -> tuple[int, int]:
        """The grid the group's maps come out at."""
        return (-(-self.hw[0] // self.stride), -(-self.hw[1] // self.stride))

    def work_bytes(self) -> tuple[int, int, int]:
        """Float32 bytes per layer: (the head-split copy + the head-averaged self map, the cross scores and
        maps after them, one layer-row's self scores for all heads)."""
        r, n, t, c, h = self.rows, self.n, self.tokens, self.channels, self.heads
        nq = self.out_hw[0] * self.out_hw[1]  # query positions read
        held = r * ((3 * n + t) * c + nq * n) * 4
        cross = r * (h * t * nq + 3 * (t + 2) * nq) * 4
        return held, cross, h * nq * n * 4

    def cost(self, layers: int) -> int:
        """Peak bytes of processing ``layers`` stashed layers (the stash itself included): the stash and its
        ``cat``; the ``cat`` and the head-split copy; the self scores (one layer-row at least); the cross maps."""
        held, cross, scores_row = self.work_bytes()
        stash = layers * self.stash_bytes
        copy = self.rows * (3 * self.n + self.tokens) * self.channels * 4 * layers
        return max(2 * stash, stash + copy, layers * held + scores_row, layers * (held + cross))



def _refine_transposed(st: torch.Tensor, ct: torch.Tensor, mode: str) -> torch.Tensor:
    """``refine_cross`` on transposed operands: ``(R C)^T`` from ``S^T`` and ``C^T`` (positions last)."""
    if mode == "none":
        return ct
    sc = torch.bmm(ct, st)  # (S C)^T
    if mode == "official":
        return torch.baddbmm(sc, sc, st, beta=0.25, alpha=0.75)  # ((SC + 3 S(SC)) / 4)^T
    total, cur = sc, sc
    for _ in range(3):
        cur = torch.bmm(cur, st)
        total = total + cur
    return total / 4


class _Processing:
    """``AttentionCapture``'s grouping, chunking and batched processing (its state: ``layers``, ``budget``,
    ``refine``, ``background``, ``pool``, ``observer``, ``on_process``, ``_pending``, ``_groups``, ``_left``,
    ``_per_factor``, ``_latent``, ``_device``, ``_call``)."""

    def _check(self, layer: AttentionLayer, n: int) -> tuple[int, int] | None:
        h, w = M.grid_size(self._latent, layer.factor)
        if n != h * w:
            self._fail(
                f"attention map of {n} positions in {layer.name} does not fit a {h}x{w} grid "
                f"for a {self._latent[0]}x{self._latent[1]} latent"
            )
            return None
        return h, w

    def _complete(self, i: int, tensors: list) -> None:
        """All four projections of layer ``i`` are in: check their shapes and queue the layer."""
        layer, call = self.layers[i], self._call
        q1, k1, q2, k2 = tensors
        split = layer.function is not None  # a DiT's attention function gets (batch, heads, tokens, head dim)
        if not all(isinstance(t, torch.Tensor) and t.dim() == 3 + split for t in tensors):
            shape = "(batch, heads, tokens, head dim)" if split else "(batch, tokens, channels)"
            self._fail(f"the attention q and k of {layer.name} are not {shape} tensors")
            return
        if split:
            b, heads, n, d = q1.shape
            c, t = heads * d, k2.shape[2]
            fits = k2.shape[:2] == (b, heads) and k2.shape[3] == d
        else:
            b, n, c = q1.shape
            heads, t = layer.attn1.heads, k2.shape[1]
            fits = k2.shape[0] == b and k2.shape[2] == c and layer.attn2.heads == heads
        if k1.shape != q1.shape:
            # e.g. reference-only ControlNet: extra keys appended to the self-attention context
            self._fail(f"self-attention keys {tuple(k1.shape)} of {layer.name} do not match its queries "
                       f"{tuple(q1.shape)} (another extension changed them)")
            return
        if q2.shape != q1.shape or not fits or b != len(call.roles):
            self._fail(f"unexpected attention shapes in {layer.name}: q {tuple(q2.shape)}, k {tuple(k2.shape)}, "
                       f"{len(call.roles)} rows")
            return
        hw = self._check(layer, n)
        if hw is None:
            return
        if c % heads:
            self._fail(f"{layer.name}: {c} channels do not split into {heads} heads")
            return
        d = c // heads
        scale1 = getattr(layer.attn1, "scale", d**-0.5)
        scale2 = getattr(layer.attn2, "scale", d**-0.5)
        key = (n, c, t, heads, q1.dtype, q1.device, hw, scale1, scale2, split)
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = []
            stash = sum(t.numel() * t.element_size() for t in tensors)
            stride = max(1, 4 // layer.factor) if split else 1
            pooled_side = -(-min(hw) // stride)
            if not (self.pool or (self.pool is None and pooled_side >= MIN_POOLED_SIDE)):
                stride = 1
            self._groups[key] = _Group(len(call.rows), n, t, c, heads, hw, scale1, scale2, stash, layer.factor,
                                       split, stride)
        queue.append((i, tensors, [_version(t) for t in tensors]))
        left = self._left[layer.factor] = self._left.get(layer.factor, self._per_factor[layer.factor]) - 1
        if left == 0:
            # the last block of its level: process now rather than hold the stash through the rest of the U-Net
            # (its largest activations come after the latent/4 level)
            for k in [k for k in self._pending if self._groups[k].factor == layer.factor]:
                self._process(k, call)
        elif self._groups[key].cost(len(queue) + 1) > self.budget:
            self._process(key, call)

    def _finish(self, call: _CallMaps) -> None:
        """End of a U-Net call: process what is left, then fold every layer's maps into the call's sums."""
        for key in list(self._pending):
            self._process(key, call)
            if self.error:
                return
        if call.layers != len(self.layers):
            self._fail(f"attention was captured in {call.layers} of {len(self.layers)} blocks (an attention "
                       "forward that does not call to_q/to_k?)")
            return
        call.fold(M.grid_size(self._latent))

    @torch.no_grad()
    def _process(self, key: tuple, call: _CallMaps) -> None:
        queue = self._pending.pop(key)
        group = self._groups[key]
        if any([_version(t) for t in entry[1]] != entry[2] for entry in queue):
            self._fail("the attention projections were modified in place")
            return
        layers = [self.layers[entry[0]] for entry in queue]
        stash = [entry[1] for entry in queue]
        queue.clear()  # from here on ``stash`` holds the only references: _layer_maps frees them after the cat
        with torch.autocast(self._device, enabled=False):
            refined = self._layer_maps(group, call, stash, layers)
        call.add(key, group.out_hw, refined, len(layers))
        if self.on_process is not None:
            self.on_process(len(layers))

    def _layer_maps(self, g: _Group, call: _CallMaps, stash: list, layers: list) -> torch.Tensor:
        """Refined maps of a chunk of layers: ``(L * R, T + 2, n)`` float32, layer-major; channels: the T
        token maps, then [background, rest]; transposed (positions last)."""
        n, t, c, heads = g.n, g.tokens, g.channels, g.heads
        d = c // heads
        big_l, rows = len(stash), call.rows
        r = len(rows)
        p = 3 * n + t  # positions per layer: q1, k1, q2 (n each), k2 (t)
        # (B, L * p, c), or (B, H, L * p, d) when the heads come split
        x = torch.cat([tensor for tensors in stash for tensor in tensors], dim=2 if g.split else 1)
        stash.clear()
        first = rows[0]
        if rows != list(range(first, first + r)):
            x = x.index_select(0, _row_index(tuple(rows), x.device))
            first = 0
        # one strided view (rows, heads split, layer-major) and one copy to float32: (L, R, H, p, d)
        strides = (p * d, big_l * p * c, big_l * p * d, d, 1) if g.split else (p * c, big_l * p * c, d, c, 1)
        y = x.as_strided((big_l, r, heads, p, d), strides, x.storage_offset() + first * big_l * p * c)
        z = y.to(torch.float32, copy=True, memory_format=torch.contiguous_format)
        del x, y
        g_all = big_l * r * heads
        q1 = z.as_strided((g_all, n, d), (p * d, d, 1), 0)
        k1t = z.as_strided((g_all, d, n), (p * d, 1, d), n * d)
        q2t = z.as_strided((g_all, d, n), (p * d, 1, d), 2 * n * d)
        k2 = z.as_strided((g_all, t, d), (p * d, d, 1), 3 * n * d)
        zero = _zero(z.device)
        nq = n  # query positions the maps are read at
        if g.stride > 1:  # a DiT's token grid read at the segmentation grid: every stride-th query row and column
            (h, w), st = g.hw, g.stride
            q1 = q1.view(g_all, h, w, d)[:, ::st, ::st].reshape(g_all, -1, d)
            q2t = q2t.mT.view(g_all, h, w, d)[:, ::st, ::st].reshape(g_all, -1, d).mT
            nq = q1.shape[1]

        # self-attention: s[i, j] = mean over heads of softmax_j(q_i . k_j * scale), queries first so that the
        # softmax runs along contiguous memory (3x faster on a CPU than across rows)
        held, _, scores_row = g.work_bytes()
        units = max(1, (self.budget - big_l * held) // scores_row)  # layer-rows whose scores fit at once
        if units >= big_l * r:
            s = torch.baddbmm(zero, q1, k1t, beta=0, alpha=g.scale1)
            torch.ops.aten._softmax.out(s, 2, False, out=s)
            sa = s.view(big_l * r, heads, nq, n).mean(1)
            del s
        else:
            step = units * heads
            sa = torch.empty(big_l * r, nq, n, dtype=torch.float32, device=z.device)
            buf = torch.empty(step, nq, n, dtype=torch.float32, device=z.device)
            buf4 = buf.view(units, heads, nq, n)
            for qc, kc, sc in zip(q1.split(step), k1t.split(step), sa.split(units), strict=True):
                full = qc.shape[0] == step
                out = buf if full else buf[: qc.shape[0]]
                torch.baddbmm(zero, qc, kc, beta=0, alpha=g.scale1, out=out)
                torch.ops.aten._softmax.out(out, 2, False, out=out)
                torch.mean(buf4 if full else out.view(-1, heads, nq, n), 1, out=sc)
            del buf, buf4
        if g.stride > 1:
            sa = torch.matmul(sa, _pool_matrix(g.hw, g.stride, sa.device))  # keys summed per grid cell
        if call.pair_w is not None:  # a joint model's start or end (each row's, and its tiles'), or none
            pair_w = call.pair_w.to(z.device)
        elif self.background == "start":
            pair_w = None
        else:
            pair_w = _row_backgrounds(z[0, :, 0, 3 * n :], self.background)
        # cross-attention, transposed: cm[t, i] = mean over heads of softmax_t(q_i . k_t * scale)
        pc = torch.baddbmm(zero, k2, q2t, beta=0, alpha=g.scale2)
        torch.ops.aten._softmax.out(pc, 1, False, out=pc)
        del z, q1, k1t, q2t, k2
        if self.observer is not None:
            cm = pc.view(big_l * r, heads, t, nq).mean(1)
            roles = [call.roles[i] for i in rows]
            for li, layer in enumerate(layers):
                sl = slice(li * r, (li + 1) * r)
                self.observer(layer, roles, sa[sl], cm[sl].transpose(1, 2))
        if pair_w is None:
            # the mean over heads, the token maps and their [background, rest] sums in one product: (L R, T + 2, n)
            ct = torch.bmm(_heads_to_maps(t, heads, big_l * r, pc.device), pc.view(big_l * r, heads * t, nq))
        else:  # each row's own background tokens
            tok = pc.view(big_l, r, heads, t, nq).mean(2)
            ct = torch.cat([tok, torch.matmul(pair_w, tok)], 2).view(big_l * r, t + 2, nq)
        del pc
        return _refine_transposed(sa.mT, ct, self.refine)
