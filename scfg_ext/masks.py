"""The S-CFG math: semantic region masks from attention maps and the per-region guidance rate.

Pure torch, no WebUI imports. Every step follows the official code (SmilesDZgk/S-CFG at 4e5c9a7,
``sd/sd.py`` and ``sd/utils.py``); deviations are deliberate and named where they happen.

Shapes: ``B`` rows (images), ``T`` token positions, ``N = h*w`` attention positions of one layer,
``(gh, gw)`` the segmentation grid (latent / 4), ``(H, W)`` the latent.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

REFINE_MODES = ("official", "paper", "none")
EPS = 1e-8  # the official code's epsilon (spatial normalisation, region means, ratios)


def _gaussian_kernel_1d() -> list[float]:
    # Attend-and-Excite's GaussianSmoothing(kernel_size=3, sigma=0.5), as the official code uses it:
    # exp(-((x - mu) / (2 sigma))^2), so the effective variance is 2 sigma^2. Weights [0.2119, 0.5761, 0.2119].
    sigma, mean = 0.5, 1.0
    w = [math.exp(-(((x - mean) / (2 * sigma)) ** 2)) for x in range(3)]
    return [v / sum(w) for v in w]


GAUSSIAN_1D = _gaussian_kernel_1d()


@functools.lru_cache(maxsize=8)
def _kernel(device: torch.device) -> torch.Tensor:
    k = torch.tensor(GAUSSIAN_1D, dtype=torch.float32, device=device)
    return torch.outer(k, k)


def gaussian_kernel(device=None) -> torch.Tensor:
    """The 3x3 smoothing kernel (outer product of ``GAUSSIAN_1D``), float32 (cached per device: no host
    to device copy per call)."""
    return _kernel(torch.device(device or "cpu"))


def gaussian_smooth(maps: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian (sigma 0.5) on every channel of ``(B, C, h, w)``, reflect padding, computed in float32."""
    b, c, h, w = maps.shape
    x = maps.float().reshape(b * c, 1, h, w)
    # reflect needs at least 2 cells per side; a 1-cell side is constant along it, so replicate is the same thing
    mode = "reflect" if min(h, w) >= 2 else "replicate"
    x = F.pad(x, (1, 1, 1, 1), mode=mode)
    x = F.conv2d(x, gaussian_kernel(x.device)[None, None])
    return x.reshape(b, c, h, w)


def refine_cross(self_attn: torch.Tensor, cross: torch.Tensor, mode: str = "official") -> torch.Tensor:
    """Propagate token evidence along self-attention ("SSGC"); both inputs row-stochastic.

    ``official``: ((S + 3 S^2) / 4) C, what the official loop computes; ``paper``: mean of S^1..S^4 applied
    to C; ``none``: C. S^k is never formed: only matrix-times-(N x T) products, so the cost is O(N^2 T).
    """
    if mode == "none":
        return cross
    sc = torch.bmm(self_attn, cross)
    if mode == "official":
        return torch.baddbmm(sc, self_attn, sc, beta=0.25, alpha=0.75)  # (SC + 3 S(SC)) / 4
    if mode == "paper":
        total, cur = sc, sc
        for _ in range(3):
            cur = torch.bmm(self_attn, cur)
            total = total + cur
        return total / 4
    raise ValueError(f"refine must be one of {REFINE_MODES}, got {mode!r}")


def grid_size(latent_size: Sequence[int], factor: int = 4) -> tuple[int, int]:
    """Feature-map size of the U-Net level that is ``factor`` times coarser than the latent (the grid is the
    latent/4 level; the capture also uses it to check each attention map's size).

    Each stride-2 convolution rounds up, and ceil(ceil(H/2)/2) = ceil(H/4), so this is also the exact
    size of the attention maps at that level for sizes not divisible by 32.
    """
    return math.ceil(latent_size[0] / factor), math.ceil(latent_size[1] / factor)


def pair_weights(num_tokens: int, background_tokens: Iterable[int], device=None) -> torch.Tensor:
    """``(2, T)`` float32 0/1 rows [background tokens, all other tokens]; the background tokens are the
    SOT of every 77-token chunk. Summing token maps through it is a matmul, where boolean indexing would make
    the GPU wait for the host at every layer. Cached per token count and device."""
    return _pair_weights(num_tokens, tuple(sorted(set(background_tokens))), torch.device(device or "cpu"))


@functools.lru_cache(maxsize=64)
def _pair_weights(num_tokens: int, background_tokens: tuple[int, ...], device: torch.device) -> torch.Tensor:
    bg = torch.zeros(num_tokens, dtype=torch.bool)
    idx = [t for t in background_tokens if 0 <= t < num_tokens]
    if idx:
        bg[idx] = True
    return torch.stack([bg, ~bg], dim=0).float().to(device)  # (2, T): rows [background, rest]


def chunk_starts(num_tokens: int, chunk: int = 77) -> tuple[int, ...]:
    """SOT positions of a context made of ``chunk``-token chunks (A1111 concatenates 77-token chunks)."""
    return tuple(range(0, num_tokens, chunk))


def layer_maps(
    self_attn: torch.Tensor, cross: torch.Tensor, hw: Sequence[int], grid: Sequence[int], refine: str
) -> torch.Tensor:
    """One layer's refined maps resized to the grid, not yet smoothed: ``(B, T, gh, gw)``, float32.

    ``cross`` may be any linear reduction of the token axis (e.g. background-vs-rest sums): every step
    here is linear in it, which lets rows that only feed the foreground skip the T-wide work.
    """
    h, w = hw
    b, n, t = cross.shape
    if n != h * w or self_attn.shape[-1] != n:
        raise ValueError(f"attention maps of {n} positions do not fit a {h}x{w} layer")
    c = refine_cross(_as_float(self_attn), _as_float(cross), refine)
    m = c.transpose(1, 2).reshape(b, t, h, w)
    if (h, w) != tuple(grid):
        # the official code upsamples the 8x8 layer with scale_factor=2; size= is the same for exact
        # multiples and also handles odd sizes and non-square latents
        m = F.interpolate(m, size=tuple(grid), mode="bilinear", align_corners=False)
    return m


@functools.lru_cache(maxsize=32)
def resize_matrix(hw: tuple[int, int], grid: tuple[int, int], device=None) -> torch.Tensor:
    """``(h*w, gh*gw)`` float32 matrix of ``layer_maps``' bilinear resize (``align_corners=False``): for maps
    ``m`` with positions last, ``m @ resize_matrix`` equals the interpolation (it is linear). Cached."""
    n = hw[0] * hw[1]
    eye = torch.eye(n, dtype=torch.float32, device=device).view(n, 1, *hw)
    return F.interpolate(eye, size=tuple(grid), mode="bilinear", align_corners=False).reshape(n, -1)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _smoothed_column_sums(n: int, mode: str) -> list[float]:
    # column sums of the n x n matrix of the 1-D 3-tap smoothing with ``mode`` padding
    sums = [0.0] * n
    for i in range(n):
        for tap, weight in zip((i - 1, i, i + 1), GAUSSIAN_1D, strict=True):
            if tap < 0:
                tap = 1 if mode == "reflect" else 0
            elif tap >= n:
                tap = n - 2 if mode == "reflect" else n - 1
            sums[tap] += weight
    return sums


@functools.lru_cache(maxsize=32)
def _smoothed_mean_weights(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    # w with mean(gaussian_smooth(m)) == sum(m * w) for any map m: the adjoint of the smoothing applied to the
    # uniform averaging weights (reflect padding makes the border weights differ from 1/(gh*gw)). The smoothing
    # is separable, so w is the outer product of the 1-D column sums; no autograd, which Forge's
    # inference mode would refuse
    h, w = grid
    mode = "reflect" if min(h, w) >= 2 else "replicate"
    rows = torch.tensor(_smoothed_column_sums(h, mode), dtype=torch.float64)
    cols = torch.tensor(_smoothed_column_sums(w, mode), dtype=torch.float64)
    return (torch.outer(rows, cols) / (h * w)).flatten().float().to(device)  # (gh * gw,)


@functools.lru_cache(maxsize=16)
def _eps(device: torch.device) -> torch.Tensor:
    return torch.tensor(EPS, dtype=torch.float32, device=device)


def foreground_pair(maps: torch.Tensor, pair_w: torch.Tensor) -> torch.Tensor:
    """``(B, 2, gh, gw)``: [background tokens summed, all other tokens summed] (``pair_w`` from
    ``pair_weights``)."""
    b, t, h, w = maps.shape
    return torch.matmul(pair_w, maps.reshape(b, t, h * w)).view(b, 2, h, w)


def reduce_to_pair(cross: torch.Tensor, pair_w: torch.Tensor) -> torch.Tensor:
    """Reduce ``(B, N, T)`` cross maps to ``(B, N, 2)`` [background, rest] before the (linear) layer work."""
    return torch.matmul(cross, pair_w.t())


class MaskAccumulator:
    """Running per-layer sum of renormalised token maps and foreground pairs for a batch of rows, held as one
    ``(B, T + 2, gh, gw)`` tensor: the T token channels, then [background, rest].

    Per layer the official code smooths each map (3x3 Gaussian), divides it by its spatial mean and sums
    over layers. Smoothing is linear and the mean of a smoothed map is a fixed weighted sum of the map, so
    the same result is obtained by dividing each *unsmoothed* map by the mean its smoothed version would
    have, summing, and smoothing the sum once (``smoothed()``): fewer operations per layer, and memory that
    does not grow with layers or steps.
    """

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None  # (B, T + 2, gh, gw)
        self.layers = 0

    @staticmethod
    def _weights(maps: torch.Tensor) -> torch.Tensor:
        return _smoothed_mean_weights(tuple(maps.shape[-2:]), maps.device)

    def add_tokens(self, maps: torch.Tensor, pair_w: torch.Tensor) -> None:
        """Add one layer's token maps ``(B, T, gh, gw)`` (from ``layer_maps``): regions and foreground."""
        w = self._weights(maps)
        b, t, h, wd = maps.shape
        tok = maps / torch.matmul(maps.reshape(b, t, h * wd), w).add_(EPS).view(b, t, 1, 1)
        # the official code divides the foreground pair by its spatial mean with no epsilon (softmax sums are
        # > 0); the floor only keeps an all-zero map finite
        pair = foreground_pair(maps, pair_w)
        mean = torch.matmul(pair.reshape(b, 2, h * wd), w).clamp_min_(torch.finfo(torch.float32).tiny)
        self._add(torch.cat([tok, pair / mean.view(b, 2, 1, 1)], 1), 1)

    def add_layers(self, maps: torch.Tensor, pair_w: torch.Tensor | None = None) -> None:
        """Add ``L`` layers at once: ``maps`` ``(L, B, T, gh, gw)`` (``layer_maps`` of each layer, stacked) and
        ``pair_w`` as for ``add_tokens``: the same sums as ``L`` calls of ``add_tokens``, in a fixed number of
        operations. With ``pair_w=None`` the last two of the channels already are the [background, rest]
        reduction (``foreground_pair``, done before the layer work by linearity) and the first ``T - 2`` the
        token maps. Every channel is divided by its smoothed spatial mean plus the epsilon (for the two
        foreground channels the official code has no epsilon: a relative difference of ~1e-8)."""
        n_layers, b, k, h, wd = maps.shape
        flat = maps.reshape(n_layers * b, k, h * wd)
        if pair_w is not None:
            flat = torch.cat([flat, torch.matmul(pair_w, flat)], 1)
            k += 2
        w = self._weights(maps)
        mean = torch.addmv(_eps(flat.device), flat.view(-1, h * wd), w).view(n_layers * b, k, 1)
        self._add((flat / mean).view(n_layers, b * k * h * wd).sum(0).view(b, k, h, wd), n_layers)

    def _add(self, total: torch.Tensor, layers: int) -> None:
        self._sum = total if self._sum is None else self._sum.add_(total)
        self.layers += layers

    def smoothed(self) -> torch.Tensor | None:
        """The smoothed sum over layers, ``(B, T + 2, gh, gw)``: the average up to the factor ``layers``, which
        neither the regions (an argmax over tokens) nor the foreground (a comparison) depend on."""
        return None if self._sum is None else gaussian_smooth(self._sum)

    def tokens(self) -> torch.Tensor | None:
        """Average over layers of the smoothed, renormalised token maps, ``(B, T, gh, gw)``."""
        return None if self._sum is None else self.smoothed()[:, :-2] / max(self.layers, 1)

    def pair(self) -> torch.Tensor | None:
        """Average over layers of the smoothed, renormalised [background, rest] maps, ``(B, 2, gh, gw)``."""
        return None if self._sum is None else self.smoothed()[:, -2:] / max(self.layers, 1)


@functools.lru_cache(maxsize=32)
def _token_index(tokens: int, device: torch.device) -> torch.Tensor:
    return torch.arange(tokens, device=device).view(1, tokens, 1, 1)


@functools.lru_cache(maxsize=32)
def _row_index(rows: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def pick_rows(x: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """``x[rows]``: a view when the rows are a contiguous run, else one ``index_select`` with an index cached on
    the device (list indexing would copy the index from the host at every call)."""
    if list(rows) == list(range(rows[0], rows[0] + len(rows))):
        return x[rows[0] : rows[0] + len(rows)]
    return x.index_select(0, _row_index(tuple(rows), x.device))


def stacked_masks(tokens: torch.Tensor, pair: torch.Tensor, latent_size: Sequence[int]) -> torch.Tensor:
    """``(B, T + 1, H, W)`` float32 in {0, 1}: the token regions (a one-hot partition: each grid cell goes to its
    highest token; argmax, so a tie can never give a cell two owners), then the foreground (1 where the
    non-background tokens strictly beat the background ones), nearest-upsampled from the grid to the latent.
    ``tokens`` ``(B, T, gh, gw)``, ``pair`` ``(B, 2, gh, gw)`` [background, rest], both up to a positive factor.
    Four operations whatever the token count: the one-hot is a comparison with the token indices."""
    b, t, h, w = tokens.shape
    grid = torch.empty(b, t + 1, h, w, dtype=torch.float32, device=tokens.device)
    torch.eq(tokens.argmax(dim=1, keepdim=True), _token_index(t, tokens.device), out=grid[:, :t])
    torch.gt(pair[:, 1:2], pair[:, 0:1], out=grid[:, t:])
    return F.interpolate(grid, size=tuple(latent_size), mode="nearest")


def semantic_masks(
    layers: Sequence[tuple[torch.Tensor, torch.Tensor, Sequence[int]]],
    latent_size: Sequence[int],
    *,
    background_tokens: Iterable[int] = (0,),
    refine: str = "official",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token regions and foreground of one U-Net call, for one set of rows.

    ``layers``: ``(self_attn (B, h*w, h*w), cross_attn (B, h*w, T), (h, w))``, heads averaged, rows softmax
    distributions. Returns ``regions (B, T, H, W)`` one-hot and ``foreground (B, 1, H, W)`` in {0, 1}.
    """
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    if not layers:
        raise ValueError("semantic_masks needs at least one attention layer")
    grid = grid_size(latent_size)
    acc = MaskAccumulator()
    with torch.autocast(layers[0][1].device.type, enabled=False):
        for self_attn, cross, hw in layers:
            pair_w = pair_weights(cross.shape[-1], background_tokens, cross.device)
            acc.add_tokens(layer_maps(self_attn, cross, hw, grid, refine), pair_w)
        smoothed = acc.smoothed()
        stacked = stacked_masks(smoothed[:, :-2], smoothed[:, -2:], latent_size)
        return stacked[:, :-1], stacked[:, -1:]


@functools.lru_cache(maxsize=16)
def _ones(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(1, n, device=device)


@functools.lru_cache(maxsize=16)
def _no_eps_then_eps(device: torch.device) -> torch.Tensor:
    return torch.tensor([[[0.0, EPS]]], device=device)


def region_sums(delta: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B, K, 2)`` float32: for each of the ``K`` 0/1 masks ``(B, K, H, W)`` float32, the sum of the per-pixel
    channel-L2 norm of ``delta`` ``(B, C, H, W)`` over the mask, and the mask's area plus the epsilon (both in
    one product). Norms are computed in float32; a 5-D ``(B, C, frames, H, W)`` latent's frames count as
    channels."""
    b, k, h, w = masks.shape
    x = delta.flatten(1, -3)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):  # the norm's dtype= only widens
        x = x.float()
    norm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).view(b, h * w)
    values = torch.stack([norm, _ones(h * w, norm.device).expand(b, -1)], -1)  # (B, H W, 2)
    return torch.baddbmm(_no_eps_then_eps(norm.device), masks.view(b, k, h * w), values)


def ratios_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` from ``region_sums`` of [the T regions, the foreground]: foreground mean norm / region mean
    norm. An empty region's ratio is the foreground mean over the epsilon: harmless, as its mask is 0."""
    means = sums[..., 0] / sums[..., 1]
    return means[:, -1:] / (means[:, :-1] + EPS)


def region_ratios(
    delta: torch.Tensor, regions: torch.Tensor, foreground: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-region ratio ``(B, T)`` = foreground mean norm / region mean norm (0 for empty regions), and the
    foreground area ``(B, 1)``. Norms are per-pixel channel-L2 norms of ``delta``, reduced in float32."""
    sums = region_sums(delta, torch.cat([regions, foreground], 1).float())
    areas = sums[..., 1] - EPS
    return ratios_from_sums(sums) * (areas[:, :-1] > 0), areas[:, -1:]


def rate_deviation(
    sums: torch.Tensor,
    masks: torch.Tensor,
    cfg_scale: float,
    *,
    min_rate: float = 0.8,
    max_rate: float = 3.0,
    max_scale: float | None = 15.0,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``guidance_rate - 1`` ``(B, 1, H, W)`` float32 from the stacked ``masks`` ``(B, T + 1, H, W)`` [regions,
    foreground] and their ``region_sums``: what a combination needs (``cond + deviation * (cond - uncond)``), in
    about ten operations whatever the token count."""
    if min_rate > max_rate:
        raise ValueError(f"min_rate ({min_rate}) must not exceed max_rate ({max_rate})")
    b, k, h, w = masks.shape
    regions = masks[:, :-1].flatten(2)  # (B, T, H W)
    ratio = ratios_from_sums(sums)
    if token_weights is not None:
        weights = token_weights.to(device=ratio.device, dtype=torch.float32).expand_as(ratio)
        ratio = ratio * weights
    # clamp(min, max) then clamp(max=cap) is clamp(min, min(max, cap)) (a min above the cap gives the cap)
    cap = min(max_rate, max_scale / cfg_scale) if max_scale and cfg_scale > 0 else max_rate
    deviation = torch.bmm(ratio[:, None], regions).view(b, 1, h, w).clamp_(min_rate, cap).sub_(1)
    if token_weights is not None:
        plain = torch.bmm((weights == 0).float()[:, None], regions).view(b, 1, h, w) > 0
        deviation = deviation.masked_fill_(plain, 0)
    # the deviation from 1 is smoothed, not the rate: the same map (the kernel sums to 1), but a cell whose 3x3
    # neighbourhood is exactly 1 (weight 0: plain CFG) stays exactly 1, whatever order a CPU sums the taps in;
    # an empty foreground (its area is the epsilon) gives rate 1 (plain CFG) rather than the official code's 0.8
    # an overflowing norm (finite values whose norm is not) makes every cell's rate NaN: plain CFG there, as the
    # clamp has already taken the infinities to the bounds
    deviation = deviation.nan_to_num_(0.0)
    return gaussian_smooth(deviation).mul_(sums[:, -1:, 1:].gt(EPS).view(b, 1, 1, 1))


def guidance_rate(
    delta: torch.Tensor,
    regions: torch.Tensor,
    foreground: torch.Tensor,
    cfg_scale: float,
    *,
    min_rate: float = 0.8,
    max_rate: float = 3.0,
    max_scale: float | None = 15.0,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel guidance rate ``(B, 1, H, W)`` float32: the S-CFG scale is ``cfg_scale * rate``.

    Each region's mean per-pixel channel-L2 norm of ``delta`` (cond - uncond; eps, x0 or v space alike, the
    rate is invariant to a positive factor) is brought to the foreground's mean norm; then clamp to
    ``[min_rate, max_rate]``, then to ``<= max_scale / cfg_scale``, then the 3x3 Gaussian (of ``rate - 1``,
    so that exact 1s stay exact; the official code smooths the rate: equal up to rounding). An image whose
    foreground is empty gets rate 1 (plain CFG) rather than the official code's 0.8.

    ``token_weights`` (``(B, T)`` or ``(T,)``, from ``weights.token_weights``) multiplies each token region's
    ratio after the equalisation and before the clamps. A region of weight 0 gets rate exactly 1 (plain CFG),
    neither clamped to ``min_rate`` nor capped by ``max_scale``; after the smoothing still exactly 1 wherever
    the 3x3 neighbourhood is all that region.
    """
    masks = torch.cat([regions, foreground], 1).float()
    return rate_deviation(region_sums(delta, masks), masks, cfg_scale, min_rate=min_rate, max_rate=max_rate,
                          max_scale=max_scale, token_weights=token_weights).add_(1)
