"""The WebUI side of "Show S-CFG maps": the pictures of the kept maps, labelled with the prompts' tokens
(``prompts``), added to the gallery after the results.

Gallery: A1111 1.10 has no place for extra pictures, so they are appended to ``processed.images`` after the
results (after the grid is made: not in it; X/Y/Z takes each cell's first image) with the infotext of their image
appended to ``processed.infotexts``, so the UI's per-image indexing ("Save", the infotext under the picture)
stays valid. Forge has ``processed.extra_images`` (``p.extra_result_images``), shown after the results and
returned by Forge 2's API after them (not by reForge's, ``modules/api/api.py`` @ 3b56b268 returns
``processed.images``): used in the UI when present (replaced by a longer list, never extended in place); for an
API request (``p.is_api``) the pictures go after the results in ``processed.images``, which every WebUI's API
returns.
Saved with the suffix ``-scfg-maps`` when the WebUI saves samples (``p.save_samples()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..capture import Cond
from ..guidance import KeptMaps
from ..render import BG, SPECIAL_LABEL, rate_map, region_map, token_labels
from ..weights import CHUNK
from .prompts import PassPrompts

SUFFIX = "-scfg-maps"


@dataclass
class PassMaps:
    p: Any
    prompts: PassPrompts | None
    maps: dict[Cond, KeptMaps]


def labels_for(tokens: Sequence[str] | None, count: int, chunk: int = CHUNK) -> list[str]:
    """One label per context position of a map with ``count`` tokens (``render.token_labels``; a context Forge
    repeated to a common length repeats the labels, A1111's padding is padding); ``token N`` without tokens."""
    if not tokens:
        return [f"token {t}" for t in range(count)]
    labels = token_labels(tokens, chunk)
    while len(labels) < count:
        labels += labels[:count - len(labels)] if count % len(tokens) == 0 else [SPECIAL_LABEL] * (count - len(labels))
    return labels[:count]


def picture(base: Image.Image | None, kept: KeptMaps, labels: Sequence[str], title: str) -> Image.Image:
    """The region map over ``base`` (the result image; grey when there is none) beside the rate map."""
    h, w = kept.owner.shape
    base = base if base is not None else Image.new("RGB", (w * 8, h * 8), (128, 128, 128))
    regions = region_map(base, kept.regions(), labels, title=f"S-CFG: {title}")
    rates = rate_map(kept.rate.float(), size=base.size)
    out = Image.new("RGB", (regions.width + rates.width, max(regions.height, rates.height)), BG)
    out.paste(regions, (0, 0))
    out.paste(rates, (regions.width, 0))
    return out


def add_to_gallery(p, processed, kept: Sequence[PassMaps], settings) -> None:
    """Draw every kept map over its result image and add the pictures after the results."""
    first = int(getattr(processed, "index_of_first_image", 0) or 0)
    results = list(processed.images[first:])
    count = max(int(p.batch_size) * int(getattr(p, "n_iter", 1) or 1), 1)
    stride = len(results) // count if len(results) >= count and len(results) % count == 0 else 1
    items = []
    for order, entry in enumerate(kept):
        prompts = entry.prompts
        iteration = prompts.iteration if prompts else 0
        for key, maps in entry.maps.items():
            g = iteration * int(p.batch_size) + key.image
            items.append((g, order, key.index, entry, key, maps))
    items.sort(key=lambda item: item[:3])
    pictures, owners = [], []
    for g, _, j, entry, key, maps in items:
        prompts = entry.prompts
        base = results[g * stride] if g * stride < len(results) else None
        tokens = prompts.tokens_of(key) if prompts else None
        several = prompts is not None and key.image < len(prompts.texts) and len(prompts.texts[key.image]) > 1
        title = f"image {g + 1}" + (", hires" if prompts and prompts.hires else "") + \
            (f", AND {j + 1}" if several else "") + f", {settings.maps_step} step"
        labels = labels_for(tokens, maps.tokens, prompts.chunk_of(tokens) if tokens else CHUNK)
        pictures.append(picture(base, maps, labels, title))
        owners.append(g)
    if not pictures:
        return
    extra = getattr(processed, "extra_images", None)
    if isinstance(extra, list) and not getattr(p, "is_api", False):  # Forge's UI shows them after the results
        # a new list: processed.extra_images is p.extra_result_images, which X/Y/Z cells (copies of p) share
        processed.extra_images = extra + pictures
    else:  # A1111, and every API: after the results, each with its image's infotext (the UI indexes by picture)
        processed.images.extend(pictures)
        infotexts = getattr(processed, "infotexts", None)
        if isinstance(infotexts, list):
            for g in owners:
                index = first + g * stride
                infotexts.append(infotexts[index] if index < len(infotexts) else getattr(processed, "info", ""))
    save = getattr(p, "save_samples", None)
    if callable(save) and save():
        from . import host

        seeds, texts = getattr(p, "all_seeds", None) or [], getattr(p, "all_prompts", None) or []
        for g, pic in zip(owners, pictures, strict=True):
            host.save_image(pic, p.outpath_samples, "", seeds[g] if g < len(seeds) else None,
                            texts[g] if g < len(texts) else None, host.option("samples_format", "png"), p=p,
                            suffix=SUFFIX)
