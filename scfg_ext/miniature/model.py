"""The miniature text-to-image diffusion model: tokenizer, text encoder, denoiser network, latent map, loading.

* ``Tokenizer``: one token per word of ``world.VOCAB``, laid out like A1111's CLIP context: 77 positions
  (``capture.CHUNK_TOKENS``), ``<|startoftext|>`` at 0, the words, ``<|endoftext|>``, then padding with
  ``<|endoftext|>`` (A1111 pads SD1's CLIP with it). ``tokens()`` gives CLIP-style strings (``red</w>``) that
  ``weights.token_weights`` matches. The empty prompt is ``[SOT, EOT x 76]``: the unconditional context.
* ``TextEncoder``: token + position embedding, ``layers`` pre-norm *causal* transformer layers (none in the
  default config), final LayerNorm: ``(B, 77, dim)``. Causal, so the start-of-text state is the same for every
  prompt, as CLIP's is.
* The denoiser network is chosen by ``config["arch"]`` from ``ARCHITECTURES`` (``"unet"``: the real ldm
  ``UNetModel``; another architecture registers a builder ``net config dict -> module(x, timesteps, context)``
  and trains with the same script). The whole config is stored in the safetensors metadata.
* Latent map (``to_latent`` / ``to_rgb``): the "latent" is the image itself at full resolution, 4 channels:
  ``[2r - 1, 2g - 1, 2b - 1, 0]`` (pixel-space diffusion as in DDPM, values in [-1, 1], per-channel std about
  0.75, the 4th channel constant zero because the engine wants SD's 4 channels). ``to_rgb`` inverts it
  exactly (up to one float32 rounding; 8-bit images round-trip bit for bit); S-CFG's per-cell norm of
  ``cond - uncond`` over channels is unaffected by the zero channel.
* Schedule: SD's (linear betas 0.00085..0.012 over 1000 steps, eps prediction), what ``testbed.k_denoiser``
  (k-diffusion ``CompVisDenoiser``) assumes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import world

CONTEXT = 77  # = capture.CHUNK_TOKENS (A1111's CLIP chunk)
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
END_OF_WORD = "</w>"
WEIGHTS = Path(__file__).with_name("unet.safetensors")
# sha256 of the committed WEIGHTS; bench/train_miniature.py --register writes it here
WEIGHTS_SHA256: str | None = "507720d0bfa889e76fac00b68ff7abb7f4b2f3ed22734cecba56bb3929f77c23"
LATENT_MAP = "rgb2x-1+zero"  # the latent map's name, stored with the weights

DEFAULT_CONFIG: dict = {
    "arch": "unet",
    "image_size": world.SIZE,
    "latent_map": LATENT_MAP,
    "vocab": [SOT, EOT, *world.VOCAB],
    # no transformer layers: each position carries its own word (and place), like CLIP's word tokens, and
    # the end/padding tokens carry no caption summary, so the U-Net has to read each word where it draws it.
    # With 2 causal layers the U-Net learned to take the caption from the end-of-text tokens and the word
    # tokens' maps stayed at chance (region IoU 0.07-0.13 after 1,500 steps, bench/quality.py)
    "text": {"dim": 64, "layers": 0, "heads": 4},
    "schedule": {"kind": "linear", "steps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "parameterization": "eps"},
    # SD1.5's structure (v1-inference.yaml) shrunk: 4 levels (latent/1, /2, /4, /8), cross-attention at latent/4
    # and in the latent/8 middle block (the levels S-CFG reads), one res block per level, 4 heads
    "net": dict(image_size=world.SIZE, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4],
                num_res_blocks=1, channel_mult=[1, 2, 4, 4], num_heads=4, use_spatial_transformer=True,
                transformer_depth=1, context_dim=64, use_checkpoint=False, legacy=False),
}


# ------------------------------------------------------------------------------------------------------
# tokenizer


class Tokenizer:
    """Word-level tokenizer over a fixed vocabulary (``vocab[0]`` = SOT, ``vocab[1]`` = EOT). ``start=False``:
    no start token, the words begin at position 0 (T5 and the LLM encoders of the diffusion transformers).
    ``trim=True``: ``encode`` cuts the context after the longest row's end token (T5 in Forge Neo is not padded;
    a batch's shorter rows are, by ``prompt_parser.stack_conds``, with copies of their last vector, which the
    ``TextEncoder`` with ``copy_padding`` makes of the EOT padding)."""

    def __init__(self, vocab: Sequence[str] = DEFAULT_CONFIG["vocab"], context: int = CONTEXT, start: bool = True,
                 trim: bool = False):
        if list(vocab[:2]) != [SOT, EOT]:
            raise ValueError("vocab must start with the start- and end-of-text tokens")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context = context
        self.sot, self.eot = 0, 1
        self.start, self.trim = start, trim
        self.first_word = int(start)  # context position of the first word

    def __len__(self) -> int:
        return len(self.vocab)

    def words(self, prompt: str) -> list[str]:
        words = re.findall(r"[a-z]+", prompt.lower())
        unknown = [w for w in words if w not in self.index or w in (SOT, EOT)]
        if unknown:
            raise ValueError(f"words outside the miniature vocabulary: {unknown} (known: {self.vocab[2:]})")
        if len(words) > self.context - 2:
            raise ValueError(f"prompt has {len(words)} words, at most {self.context - 2} fit")
        return words

    def ids(self, prompt: str) -> list[int]:
        """``context`` token ids: SOT (unless ``start=False``), the words, EOT, EOT padding."""
        body = [self.sot] * self.start + [self.index[w] for w in self.words(prompt)]
        return body + [self.eot] * (self.context - len(body))

    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """``(B, context)`` int64 (with ``trim``: ``(B, longest row)``)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = torch.tensor([self.ids(p) for p in prompts], dtype=torch.long)
        if self.trim:  # every row has an end token: ``words`` leaves room for it
            ids = ids[:, : int((ids == self.eot).int().argmax(1).max()) + 1]
        return ids

    def tokens(self, prompt: str) -> list[str]:
        """CLIP-style token strings of the context: ``<|startoftext|>``, ``red</w>`` ..., ``<|endoftext|>``
        (also the padding), as ``weights.token_weights`` expects them."""
        return [self.vocab[i] if i < 2 else self.vocab[i] + END_OF_WORD for i in self.ids(prompt)]


# ------------------------------------------------------------------------------------------------------
# text encoder


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.out(F.gelu(self.fc(self.ln_2(x))))


class TextEncoder(nn.Module):
    """``ids (B, T) -> (B, T, dim)``: embeddings, causal pre-norm transformer layers, final LayerNorm.

    ``zero_padding``: the positions after the first end-of-text token are zero vectors, as Anima's context is
    (its text adapter's output, zero-padded to 512): with bias-free key projections and RMS-normalised keys,
    their keys are exactly zero. ``copy_padding``: they are copies of the first end-of-text token's vector, as
    Forge pads a batch's shorter contexts (``stack_conds``: the last vector repeated) and tiles an empty one
    (the encoder is causal, so that vector is the one the row encoded alone ends with)."""

    def __init__(self, vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4, context: int = CONTEXT,
                 zero_padding: bool = False, copy_padding: bool = False, eot: int = 1):
        super().__init__()
        self.zero_padding, self.copy_padding, self.eot = zero_padding, copy_padding, eot
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.randn(context, dim) * 0.01)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        if self.zero_padding or self.copy_padding:
            end = ids == self.eot
            first = torch.where(end.any(1), end.int().argmax(1), ids.shape[1] - 1)[:, None]  # the first end token
            position = torch.arange(ids.shape[1], device=ids.device)[None]
            if self.zero_padding:
                x = x * (position <= first)[..., None]
            if self.copy_padding:
                x = x.gather(1, torch.minimum(position, first)[..., None].expand_as(x))
        return x


# ------------------------------------------------------------------------------------------------------
# denoiser networks


def _build_unet(net: dict) -> nn.Module:
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**net)


def _build_dit(net: dict) -> nn.Module:
    from .dit import MiniatureDiT

    return MiniatureDiT(**net)


def _build_nextdit(net: dict) -> nn.Module:
    from .nextdit import MiniatureNextDiT

    return MiniatureNextDiT(**net)


def _build_mmdit(net: dict) -> nn.Module:
    from .mmdit import MiniatureMMDiT

    return MiniatureMMDiT(**net)


# arch name -> builder(net config) -> module called as net(x, timesteps, context=context)
ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {"unet": _build_unet, "anima": _build_dit,
                                                         "nextdit": _build_nextdit, "mmdit": _build_mmdit}

# Anima's network (``dit.MiniatureDiT``) on the same world, text and schedule; its text as Anima's is: no start
# token, the words, the end token, zero vectors. 6 blocks of width 64 (4 heads of 16), patch 2: 16x16 tokens
DIT_CONFIG: dict = dict(
    DEFAULT_CONFIG, arch="anima",
    text=dict(DEFAULT_CONFIG["text"], start_token=False, zero_padding=True),
    net=dict(in_channels=4, out_channels=4, patch=2, dim=64, depth=6, heads=4, context_dim=64),
)
DIT_WEIGHTS = WEIGHTS.with_name("dit.safetensors")
DIT_WEIGHTS_SHA256: str | None = "cc5cdc4abadbb558b095bf3423837d0894300e81bc27600c1db84d4609f8016b"

# Lumina 2's network (``nextdit.MiniatureNextDiT``: joint attention over [caption | image]) on the same world;
# its text starts with a start token as Lumina 2's Gemma text does with <bos> (the miniature's is padded to 77)
NEXTDIT_CONFIG: dict = dict(
    DEFAULT_CONFIG, arch="nextdit",
    net=dict(in_channels=4, out_channels=4, patch=2, dim=64, depth=6, heads=4, context_dim=64, refiner_depth=1),
)
NEXTDIT_WEIGHTS = WEIGHTS.with_name("nextdit.safetensors")
NEXTDIT_WEIGHTS_SHA256: str | None = "10efeb758aa337a8a2d0496cde118f1bb3d3d486763a6fe17b740d84087dd4be"

# Chroma's network (``mmdit.MiniatureMMDiT``: Flux's double and single blocks, text first) on the same world; its
# text as Chroma's T5 text reaches it in Forge Neo: no start token, the words, </s>, no padding of its own (a
# batch's shorter rows end in copies of their </s>, the empty prompt is </s> alone)
MMDIT_CONFIG: dict = dict(
    DEFAULT_CONFIG, arch="mmdit",
    text=dict(DEFAULT_CONFIG["text"], start_token=False, copy_padding=True, trim=True),
    net=dict(in_channels=4, out_channels=4, patch=2, dim=64, depth=2, depth_single=4, heads=4, context_dim=64,
             axes=[4, 6, 6]),
)
MMDIT_WEIGHTS = WEIGHTS.with_name("mmdit.safetensors")
MMDIT_WEIGHTS_SHA256: str | None = "986aff671c1dd6d9855f7e104cc0eff279915e5c7841fdae7b12f41709595771"

# arch -> (config, committed weights, the name of their pinned sha256 here)
TRAINED = {"unet": (DEFAULT_CONFIG, WEIGHTS, "WEIGHTS_SHA256"),
           "anima": (DIT_CONFIG, DIT_WEIGHTS, "DIT_WEIGHTS_SHA256"),
           "nextdit": (NEXTDIT_CONFIG, NEXTDIT_WEIGHTS, "NEXTDIT_WEIGHTS_SHA256"),
           "mmdit": (MMDIT_CONFIG, MMDIT_WEIGHTS, "MMDIT_WEIGHTS_SHA256")}


def tokenizer_for(config: dict) -> Tokenizer:
    return Tokenizer(config["vocab"], start=config["text"].get("start_token", True),
                     trim=config["text"].get("trim", False))


def build(config: dict = DEFAULT_CONFIG, seed: int | None = None) -> tuple[TextEncoder, nn.Module]:
    """Fresh ``(text_encoder, net)`` for ``config`` (trainable, fp32). ``seed`` seeds the initialisation."""
    if config["arch"] not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config['arch']!r} (known: {sorted(ARCHITECTURES)})")
    if config.get("latent_map", LATENT_MAP) != LATENT_MAP:
        raise ValueError(f"unknown latent map {config['latent_map']!r}")
    if seed is not None:
        torch.manual_seed(seed)
    t = config["text"]
    text_encoder = TextEncoder(len(config["vocab"]), t["dim"], t["layers"], t["heads"],
                               zero_padding=t.get("zero_padding", False), copy_padding=t.get("copy_padding", False))
    net = ARCHITECTURES[config["arch"]](config["net"])
    return text_encoder, net


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------------
# latent map


def to_latent(rgb: torch.Tensor) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in [0, 1] -> latent ``(B, 4, H, W)``: ``[2r - 1, 2g - 1, 2b - 1, 0]``."""
    x = rgb * 2 - 1
    return torch.cat([x, torch.zeros_like(x[:, :1])], 1)


def to_rgb(latent: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Latent ``(B, 4, H, W)`` -> RGB ``(B, 3, H, W)``: the inverse of ``to_latent`` (the 4th channel is
    dropped), clamped to [0, 1] unless ``clamp=False``."""
    rgb = (latent[:, :3] + 1) / 2
    return rgb.clamp(0, 1) if clamp else rgb


def to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, H, W, 3)`` uint8 (for PIL)."""
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ------------------------------------------------------------------------------------------------------
# weights


@dataclass
class Meta:
    """What ``load`` found besides the modules."""

    tokenizer: Tokenizer
    config: dict
    training: dict = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(path: str | Path, text_encoder: nn.Module, net: nn.Module, config: dict, training: dict | None = None,
         dtype: torch.dtype = torch.float16) -> str:
    """Write both modules' weights (``text.*``, ``net.*``, stored as ``dtype``) and the config to a safetensors
    file (atomically: a temporary file renamed); returns its sha256."""
    from safetensors.torch import save_file

    tensors = {f"text.{k}": v.detach().to(dtype).contiguous() for k, v in text_encoder.state_dict().items()}
    tensors.update({f"net.{k}": v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()})
    metadata = {"format": "scfg-miniature-1", "config": json.dumps(config, sort_keys=True),
                "training": json.dumps(training or {}, sort_keys=True)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return sha256_of(path)


def load(path: str | Path | None = None, sha256: str | None = None, device="cpu"
         ) -> tuple[TextEncoder, nn.Module, Meta]:
    """``(text_encoder, net, meta)`` from a safetensors file, fp32, eval, ``requires_grad_(False)``.

    Without ``path``: the committed ``WEIGHTS``, whose sha256 must equal ``WEIGHTS_SHA256``. With ``path``:
    checked against ``sha256`` when given."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        path, sha256 = WEIGHTS, WEIGHTS_SHA256
        if not WEIGHTS.exists():
            raise FileNotFoundError(f"no miniature weights at {WEIGHTS}; train them with bench/train_miniature.py")
        if sha256 is None:
            raise RuntimeError(f"scfg_ext/miniature/model.py has no WEIGHTS_SHA256 for {WEIGHTS} (sha256 "
                               f"{sha256_of(WEIGHTS)}); set it (bench/train_miniature.py --register does)")
    path = Path(path)
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256:
        raise RuntimeError(f"{path} has sha256 {digest}, expected {sha256}: not the weights this code was "
                           "written for (retrained or damaged file); retrain or update WEIGHTS_SHA256")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != "scfg-miniature-1":
        raise ValueError(f"{path} is not a miniature-model file (format {metadata.get('format')!r})")
    config = json.loads(metadata["config"])
    training = json.loads(metadata.get("training", "{}"))
    tensors = load_file(str(path))
    text_encoder, net = build(config)
    text_encoder.load_state_dict({k[5:]: v.float() for k, v in tensors.items() if k.startswith("text.")})
    net.load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("net.")})
    modules = [m.to(device).float().eval().requires_grad_(False) for m in (text_encoder, net)]
    return modules[0], modules[1], Meta(tokenizer_for(config), config, training, path, digest)


# ------------------------------------------------------------------------------------------------------
# prompts


def contexts(text_encoder: TextEncoder, tokenizer: Tokenizer, prompts: str | Sequence[str], negative: str = ""
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond, uncond)``, each ``(B, 77, dim)`` (a trimming tokenizer's: as long as the longest of them): the
    prompts' contexts and the negative prompt's (default the empty prompt, the unconditional context the model
    was trained with) repeated per prompt."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        both = text_encoder(tokenizer.encode([*prompts, negative]).to(device))
    return both[:-1], both[-1:].expand(len(prompts), -1, -1).contiguous()
