"""The miniature two-stream diffusion transformer (MMDiT): Chroma's network (Forge Neo ``backend/nn/chroma.py``
``IntegratedChromaTransformer2DModel``, built from ``backend/nn/flux.py``'s blocks), small, for the miniature
world and the capture's tests.

What is kept of Chroma, because S-CFG's capture depends on it:

* ``double_blocks[i]`` (``DoubleStreamBlock``): the image and the text stream each project their own q, k, v
  (``img_attn.qkv``, ``txt_attn.qkv``), RMS-normalise q and k per head (``QKNorm``), and join them **text
  first**, ``cat(txt, img)`` on the token axis, for one attention;
* ``single_blocks[i]`` (``SingleStreamBlock``) then run on ``cat(txt, img)`` with one fused ``linear1``;
* both call the module-level ``attention(q, k, v, pe)``, which rotates q and k and calls the module-level
  ``attention_function(q, k, v, heads, skip_reshape=True)`` on ``(B, H, L, D)``, as flux.py calls Forge's;
  the blocks are modules, the attention is not (the capture arms on the block);
* the text positions are all zero (``txt_ids``: no rotation of the text keys), the image tokens' are
  ``(0, h, w)``; patches of ``patch_size`` x ``patch_size`` latent cells in row-major order (h, then w).

Left out: Chroma's ``distilled_guidance_layer`` (its per-block modulation vectors come from one small MLP
of the timestep here, as Flux's ``Modulation`` makes them), the attention mask (Neo passes none), Flux's
rope as 2x2 matrices (the same rotation of channel pairs, written as angles).

``MiniatureQwenImage``: Qwen-Image's MMDiT (``backend/nn/qwen.py`` ``QwenImageTransformer2DModel``), kept as far
as the capture depends on it: ``transformer_blocks[i].attn`` (``Attention``) projects each stream
(``to_q``/``add_q_proj``...), RMS-normalises q and k per head, joins them text first, rotates them (the text
positions count on from the image grid's middle), flattens the heads and calls the module-level
``attention_function(q, k, v, heads, mask)`` on ``(B, L, H * D)``; an edit's reference latents
(``ref_latents``: more image tokens after the image's) and 5-D latents ``(B, C, 1, H, W)``. Left out: the
timestep projection's details, the text norm's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dit import attention_function, patchify, timestep_features, unpatchify
from .nextdit import apply_rope, rope_angles

__all__ = ["MiniatureMMDiT", "MiniatureQwenImage", "attention", "attention_function"]


def attention(q, k, v, pe):
    """flux.py's ``attention``: rotate q and k ``(B, H, L, D)`` by ``pe`` (L, D/2), then the attention function."""
    q, k = (apply_rope(t.transpose(1, 2), pe).transpose(1, 2) for t in (q, k))
    return attention_function(q, k, v, q.shape[1], skip_reshape=True)


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm, self.key_norm = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)


def mlp(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, L, 3 * H * D)`` -> q, k, v ``(B, H, L, D)``, flux.py's ``view(...).permute(2, 0, 3, 1, 4)``."""
    return qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


class DoubleStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.img_mod, self.txt_mod = nn.Linear(dim, 6 * dim), nn.Linear(dim, 6 * dim)
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.img_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.txt_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.img_attn, self.txt_attn = SelfAttention(dim, heads), SelfAttention(dim, heads)
        self.img_mlp, self.txt_mlp = mlp(dim), mlp(dim)

    def forward(self, img, txt, vec, pe):
        img_mod = self.img_mod(F.silu(vec))[:, None].chunk(6, -1)
        txt_mod = self.txt_mod(F.silu(vec))[:, None].chunk(6, -1)
        img_q, img_k, img_v = split_heads(self.img_attn.qkv(self.img_norm1(img) * (1 + img_mod[1]) + img_mod[0]),
                                          self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = split_heads(self.txt_attn.qkv(self.txt_norm1(txt) * (1 + txt_mod[1]) + txt_mod[0]),
                                          self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        attn = attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2),
                         pe)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + img_mod[2] * self.img_attn.proj(img_attn)
        img = img + img_mod[5] * self.img_mlp(self.img_norm2(img) * (1 + img_mod[4]) + img_mod[3])
        txt = txt + txt_mod[2] * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod[5] * self.txt_mlp(self.txt_norm2(txt) * (1 + txt_mod[4]) + txt_mod[3])
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.hidden_size = heads, dim
        self.modulation = nn.Linear(dim, 3 * dim)
        self.pre_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear1 = nn.Linear(dim, 3 * dim + 4 * dim)
        self.linear2 = nn.Linear(dim + 4 * dim, dim)
        self.norm = QKNorm(dim // heads)

    def forward(self, x, vec, pe):
        shift, scale, gate = self.modulation(F.silu(vec))[:, None].chunk(3, -1)
        qkv, hidden = torch.split(self.linear1(self.pre_norm(x) * (1 + scale) + shift), [3 * self.hidden_size,
                                                                                          4 * self.hidden_size], -1)
        q, k, v = split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe)
        return x + gate * self.linear2(torch.cat((attn, F.gelu(hidden, approximate="tanh")), 2))


class MiniatureMMDiT(nn.Module):
    """``net(x (B, C, H, W), timesteps (B,), context=(B, T, context_dim)) -> (B, C, H, W)``."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4, patch: int = 2, dim: int = 64, depth: int = 2,
                 depth_single: int = 4, heads: int = 4, context_dim: int = 64, axes: tuple[int, ...] = (4, 6, 6)):
        super().__init__()
        assert sum(axes) == dim // heads, "the rope axes must cover the head dimension"
        self.patch_size, self.out_channels, self.dim, self.axes = patch, out_channels, dim, tuple(axes)
        self.img_in = nn.Linear(in_channels * patch * patch, dim)
        self.txt_in = nn.Linear(context_dim, dim)
        self.time_in = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(dim, heads) for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(dim, heads) for _ in range(depth_single))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Linear(dim, 2 * dim)
        self.final_linear = nn.Linear(dim, patch * patch * out_channels)

    def forward(self, x, timesteps, context=None, **kwargs):
        tokens, (h, w) = patchify(x, self.patch_size)
        size, img = x.shape[-2:], self.img_in(tokens)
        vec = self.time_in(timestep_features(timesteps, self.dim).to(img.dtype))
        txt = self.txt_in(context)
        rows, cols = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
        txt_ids = torch.zeros(txt.shape[1], 3, device=x.device)
        img_ids = torch.stack([torch.zeros(h * w, device=x.device), rows.flatten(), cols.flatten()], -1)
        pe = rope_angles(torch.cat([txt_ids, img_ids]), self.axes)
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        joint = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            joint = block(joint, vec=vec, pe=pe)
        shift, scale = self.final_mod(F.silu(vec))[:, None].chunk(2, -1)
        out = self.final_linear(self.final_norm(joint[:, txt.shape[1]:]) * (1 + scale) + shift)
        return unpatchify(out, (h, w), self.patch_size, size)


class QwenAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_k = nn.RMSNorm(dim // heads, eps=1e-6), nn.RMSNorm(dim // heads, eps=1e-6)
        self.norm_added_q, self.norm_added_k = nn.RMSNorm(dim // heads, eps=1e-6), nn.RMSNorm(dim // heads, eps=1e-6)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out, self.to_add_out = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states, image_rotary_emb):
        heads, seq_txt = self.heads, encoder_hidden_states.shape[1]
        img_q, img_k, img_v = (f(hidden_states).unflatten(-1, (heads, -1)) for f in (self.to_q, self.to_k, self.to_v))
        txt_q, txt_k, txt_v = (f(encoder_hidden_states).unflatten(-1, (heads, -1))
                               for f in (self.add_q_proj, self.add_k_proj, self.add_v_proj))
        q = apply_rope(torch.cat([self.norm_added_q(txt_q), self.norm_q(img_q)], 1), image_rotary_emb)
        k = apply_rope(torch.cat([self.norm_added_k(txt_k), self.norm_k(img_k)], 1), image_rotary_emb)
        v = torch.cat([txt_v, img_v], 1)
        out = attention_function(q.flatten(2), k.flatten(2), v.flatten(2), heads, None)
        return self.to_out(out[:, seq_txt:]), self.to_add_out(out[:, :seq_txt])


class QwenImageBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.img_mod, self.txt_mod = nn.Linear(dim, 6 * dim), nn.Linear(dim, 6 * dim)
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.img_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.txt_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = QwenAttention(dim, heads)
        self.img_mlp, self.txt_mlp = mlp(dim), mlp(dim)

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb):
        img_mod = self.img_mod(F.silu(temb))[:, None].chunk(6, -1)
        txt_mod = self.txt_mod(F.silu(temb))[:, None].chunk(6, -1)
        img, txt = hidden_states, encoder_hidden_states
        img_attn, txt_attn = self.attn(hidden_states=self.img_norm1(img) * (1 + img_mod[1]) + img_mod[0],
                                       encoder_hidden_states=self.txt_norm1(txt) * (1 + txt_mod[1]) + txt_mod[0],
                                       image_rotary_emb=image_rotary_emb)
        img = img + img_mod[2] * img_attn
        img = img + img_mod[5] * self.img_mlp(self.img_norm2(img) * (1 + img_mod[4]) + img_mod[3])
        txt = txt + txt_mod[2] * txt_attn
        txt = txt + txt_mod[5] * self.txt_mlp(self.txt_norm2(txt) * (1 + txt_mod[4]) + txt_mod[3])
        return txt, img


class MiniatureQwenImage(nn.Module):
    """``net(x (B, C, 1, H, W), timesteps (B,), context=(B, T, context_dim), ref_latents=None)`` ->
    ``(B, C, 1, H, W)``; a 4-D ``x`` (what the Forge test harness samples) is one frame, and so is the output."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4, patch: int = 2, dim: int = 64, depth: int = 4,
                 heads: int = 4, context_dim: int = 64, axes: tuple[int, ...] = (4, 6, 6)):
        super().__init__()
        assert sum(axes) == dim // heads, "the rope axes must cover the head dimension"
        self.patch_size, self.out_channels, self.dim, self.axes = patch, out_channels, dim, tuple(axes)
        self.img_in = nn.Linear(in_channels * patch * patch, dim)
        self.txt_norm = nn.RMSNorm(context_dim, eps=1e-6)
        self.txt_in = nn.Linear(context_dim, dim)
        self.time_in = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.transformer_blocks = nn.ModuleList(QwenImageBlock(dim, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, patch * patch * out_channels)

    def _tokens(self, x, index: int = 0):
        tokens, (h, w) = patchify(x[:, :, 0], self.patch_size)
        rows, cols = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
        ids = torch.stack([torch.full((h * w,), index, device=x.device), rows.flatten() - h // 2,
                           cols.flatten() - w // 2], -1)
        return tokens, ids, (h, w)

    def forward(self, x, timesteps, context=None, ref_latents=None, **kwargs):
        if x.dim() == 4:  # not through __call__: hooks on the network see one call
            return self._forward(x[:, :, None], timesteps, context, ref_latents)[:, :, 0]
        return self._forward(x, timesteps, context, ref_latents)

    def _forward(self, x, timesteps, context, ref_latents):
        img, ids, (h, w) = self._tokens(x)
        n = img.shape[1]
        for i, ref in enumerate(ref_latents or ()):
            more, more_ids, _ = self._tokens(ref, i + 1)
            img, ids = torch.cat([img, more], 1), torch.cat([ids, more_ids])
        start = max(h, w) // 2
        txt_ids = torch.arange(start, start + context.shape[1], device=x.device)[:, None].repeat(1, 3)
        pe = rope_angles(torch.cat([txt_ids, ids]), self.axes)
        img, txt = self.img_in(img), self.txt_in(self.txt_norm(context))
        temb = self.time_in(timestep_features(timesteps, self.dim).to(img.dtype))
        for block in self.transformer_blocks:
            txt, img = block(hidden_states=img, encoder_hidden_states=txt, temb=temb, image_rotary_emb=pe)
        return unpatchify(self.proj_out(self.norm_out(img[:, :n])), (h, w), self.patch_size, x.shape[-2:])[:, :, None]
