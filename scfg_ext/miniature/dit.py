"""The miniature diffusion transformer: Anima's network (Forge Neo ``backend/nn/anima.py``, NVIDIA's
Cosmos-Predict2 ``MiniTrainDIT``), small, for the miniature world.

What is kept of Anima, because S-CFG's capture depends on it:

* ``blocks[i]`` each run a self-attention over the image tokens (``self_attn``), a cross-attention from the
  image tokens to the text context (``cross_attn``) and a GELU MLP, each behind a LayerNorm with adaLN
  shift/scale and a gate from the timestep embedding;
* the attention modules project q, k, v without bias, split the heads, RMS-normalise q and k per head
  (``q_norm``/``k_norm``), rotate q and k by a rotary position embedding in the self-attention only, and call
  the module-level ``attention_function(q, k, v, heads, skip_reshape=True)`` on ``(B, H, L, D)`` tensors, as
  Anima calls Forge's ``backend.attention.attention_function``; so a capture that wraps that name sees q and
  k exactly as the attention uses them;
* patches of ``patch`` x ``patch`` latent cells, tokens in row-major order (h, then w);
* the rotary embedding is Cosmos' 3-D one with a single frame: the head dimension is split into a temporal
  part (position 0 here, so no rotation), a height part and a width part, each rotating the pairs
  ``(x[j], x[j + d/2])`` of its slice.

Left out: video frames, the padding-mask input channel (always zero at inference), adaLN-LoRA, the fps
modulation, Anima's LLM adapter (the miniature's text encoder gives the context directly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention_function(q, k, v, heads, mask=None, skip_reshape=False, **kwargs):
    """Forge Neo ``backend/attention.py`` ``attention_pytorch``'s contract: ``(B, H, L, D)`` inputs with
    ``skip_reshape``, else ``(B, L, H * D)``; returns ``(B, L, H * D)``."""
    if skip_reshape:
        b, _, _, d = q.shape
    else:
        b, _, c = q.shape
        d = c // heads
        q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, -1, heads * d)


def rotate(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``t`` ``(B, L, H, D)`` by ``freqs`` ``(L, 1, D/2, 2, 2)`` (rotation matrices of the
    pairs ``(t[..., j], t[..., j + D/2])``), Cosmos' convention."""
    pairs = t.reshape(*t.shape[:-1], 2, -1).movedim(-2, -1).unsqueeze(-2).float()  # (B, L, H, D/2, 1, 2)
    out = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]  # (B, L, H, D/2, 2)
    return out.movedim(-1, -2).reshape(t.shape).type_as(t)


def rope_frequencies(head_dim: int, h: int, w: int, device=None, theta: float = 10000.0) -> torch.Tensor:
    """``(h * w, 1, D/2, 2, 2)``: Cosmos' 3-D rotary embedding for one frame of an ``h`` x ``w`` token grid."""
    dim_h = head_dim // 6 * 2
    dim_t = head_dim - 2 * dim_h

    def angles(n: int, dim: int) -> torch.Tensor:  # (n, dim / 2)
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim)
        return torch.outer(torch.arange(n, device=device, dtype=torch.float32), freqs)

    ah, aw, at = angles(h, dim_h), angles(w, dim_h), angles(1, dim_t)
    a = torch.cat([at[0].expand(h, w, -1), ah[:, None].expand(h, w, -1), aw[None].expand(h, w, -1)], -1)
    cos, sin = a.cos(), a.sin()
    return torch.stack([cos, -sin, sin, cos], -1).view(h * w, 1, -1, 2, 2)


class SelfCrossAttention(nn.Module):
    """Anima's ``SelfCrossAttention``: self-attention when ``context_dim`` is None, else cross-attention."""

    def __init__(self, dim: int, context_dim: int | None, heads: int):
        super().__init__()
        self.is_selfattn = context_dim is None
        self.n_heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(context_dim or dim, dim, bias=False)
        self.v_proj = nn.Linear(context_dim or dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.output_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, context=None, rope_emb=None):
        context = x if context is None else context
        h, d = self.n_heads, self.head_dim
        q = self.q_norm(self.q_proj(x).unflatten(-1, (h, d)))
        k = self.k_norm(self.k_proj(context).unflatten(-1, (h, d)))
        v = self.v_proj(context).unflatten(-1, (h, d))
        if self.is_selfattn and rope_emb is not None:
            q, k = rotate(q, rope_emb), rotate(k, rope_emb)
        out = attention_function(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), h, skip_reshape=True)
        return self.output_proj(out)


def _modulate(x, norm, shift, scale):
    return norm(x) * (1 + scale) + shift


class Block(nn.Module):
    """Anima's ``Block``: self-attention, cross-attention, MLP, each with adaLN shift/scale/gate."""

    def __init__(self, dim: int, context_dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.layer_norm_self_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfCrossAttention(dim, None, heads)
        self.layer_norm_cross_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = SelfCrossAttention(dim, context_dim, heads)
        self.layer_norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio), bias=False), nn.GELU(),
                                 nn.Linear(int(dim * mlp_ratio), dim, bias=False))
        self.adaln_modulation_self_attn = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim, bias=False))
        self.adaln_modulation_cross_attn = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim, bias=False))
        self.adaln_modulation_mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim, bias=False))

    def forward(self, x, emb, context, rope_emb):
        shift, scale, gate = self.adaln_modulation_self_attn(emb)[:, None].chunk(3, -1)
        x = x + gate * self.self_attn(_modulate(x, self.layer_norm_self_attn, shift, scale), None, rope_emb=rope_emb)
        shift, scale, gate = self.adaln_modulation_cross_attn(emb)[:, None].chunk(3, -1)
        x = x + gate * self.cross_attn(_modulate(x, self.layer_norm_cross_attn, shift, scale), context,
                                       rope_emb=rope_emb)
        shift, scale, gate = self.adaln_modulation_mlp(emb)[:, None].chunk(3, -1)
        return x + gate * self.mlp(_modulate(x, self.layer_norm_mlp, shift, scale))


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosmos' ``Timesteps``: ``[cos, sin]`` of ``t`` times ``10000^(-k / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.cos(), a.sin()], -1)


def patchify(x: torch.Tensor, p: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, C, H, W)`` -> ``(B, h w, C p p)`` tokens of ``p x p`` patches (padded to whole patches) and ``(h, w)``."""
    b, c, hh, ww = x.shape
    x = F.pad(x, (0, -ww % p, 0, -hh % p))
    h, w = x.shape[-2] // p, x.shape[-1] // p
    return x.view(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p), (h, w)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], p: int, size: tuple[int, int]) -> torch.Tensor:
    """``patchify``'s inverse: ``(B, h w, C p p)`` -> ``(B, C, H, W)`` cropped to ``size``."""
    (b, _, d), (h, w) = tokens.shape, grid
    out = tokens.view(b, h, w, d // (p * p), p, p).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(b, d // (p * p), h * p, w * p)[:, :, :size[0], :size[1]]


class MiniatureDiT(nn.Module):
    """``net(x (B, C, H, W), timesteps (B,), context=(B, T, context_dim)) -> (B, C, H, W)``."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4, patch: int = 2, dim: int = 128, depth: int = 6,
                 heads: int = 4, context_dim: int = 64, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_spatial, self.out_channels, self.dim, self.heads = patch, out_channels, dim, heads
        self.x_embedder = nn.Linear(in_channels * patch * patch, dim, bias=False)
        self.t_embedder = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim, bias=False))
        self.t_embedding_norm = nn.RMSNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(Block(dim, context_dim, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=False))
        self.final_linear = nn.Linear(dim, patch * patch * out_channels, bias=False)

    def forward(self, x, timesteps, context=None, **kwargs):
        tokens, (h, w) = patchify(x, self.patch_spatial)
        size, x = x.shape[-2:], self.x_embedder(tokens)
        emb = self.t_embedding_norm(self.t_embedder(timestep_features(timesteps, self.dim).to(x.dtype)))
        rope = rope_frequencies(self.dim // self.heads, h, w, x.device)
        for block in self.blocks:
            x = block(x, emb, context, rope)
        shift, scale = self.final_modulation(emb)[:, None].chunk(2, -1)
        out = self.final_linear(_modulate(x, self.final_norm, shift, scale))
        return unpatchify(out, (h, w), self.patch_spatial, size)
