"""Denoiser-level combination: plain CFG, or S-CFG with the maps captured during this step.

Backend-neutral: a WebUI adapter turns its batch layout into ``uncond`` (one row per image) and the cond
outputs keyed by ``Cond(image, sub-prompt)``, and substitutes what ``ScfgRun.guided_conds`` returns for
them before the WebUI's own combination runs (``combine`` is the same thing as one function, for callers
that own the combination). Works in any output space (eps, x0, v): the rate is invariant to a positive factor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .capture import AttentionCapture, Cond, Role
from .masks import guidance_rate
from .settings import Settings

log = logging.getLogger("sd-webui-scfg")

CondList = Sequence[Sequence[tuple[torch.Tensor, float]]]


def plain_cfg(uncond: torch.Tensor, conds: CondList, cfg_scale: float) -> torch.Tensor:
    """Plain (composable) CFG with A1111's ``combine_denoised`` arithmetic, operation for operation, so the
    result is bit-identical to the WebUI's."""
    denoised = torch.clone(uncond)
    for i, image_conds in enumerate(conds):
        for cond, weight in image_conds:
            denoised[i] += (cond - uncond[i]) * (weight * cfg_scale)
    return denoised


@dataclass
class StepMaps:
    """What S-CFG used at one step, for display (regions, foreground and rate per cond row)."""

    regions: dict[Cond, torch.Tensor]
    foreground: dict[Cond, torch.Tensor]
    rate: dict[Cond, torch.Tensor]


class ScfgRun:
    """S-CFG for one sampling run on one U-Net.

    ``with run.attached(unet):`` hooks the U-Net for the duration of the block (always removed, also on an
    exception); per denoiser call: ``begin_step(roles, progress)`` before the U-Net calls, then
    ``guided_conds``/``combine`` once the outputs are there (more than once when a backend gets the cond rows
    of one step in several U-Net calls). ``warn`` receives each distinct problem once (default: the log).
    """

    def __init__(self, settings: Settings, warn: Callable[[str], None] | None = None, keep_maps: bool = False):
        self.settings = settings
        self.capture = AttentionCapture(settings.refine, settings.foreground)
        self._warn = warn or log.warning
        self._warned: set[str] = set()
        self.keep_maps = keep_maps
        self.last_maps: StepMaps | None = None
        self.active = False
        self.steps_seen = 0  # begin_step calls
        self.steps_applied = 0  # steps whose combination used S-CFG's maps
        self.seconds = 0.0  # host time spent computing rates
        self._applied_this_step = False

    @contextmanager
    def attached(self, unet: torch.nn.Module) -> Iterator[ScfgRun]:
        with self.capture.attach(unet):
            yield self

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self._warn(message)

    def begin_step(self, roles: Sequence[Role | None], progress: float) -> bool:
        """Declare the rows of the coming U-Net calls; capture runs only inside the active range."""
        self.active = self.settings.active_at(progress) and self.capture.attached
        self.capture.plan_step(roles if self.active else [])
        self.steps_seen += 1
        self._applied_this_step = False
        return self.active

    def skip_step(self) -> None:
        """The caller decided to use plain CFG for the step in progress (e.g. its uncond rows were skipped)."""
        self.active = False

    def rates(self, uncond: torch.Tensor, conds: Mapping[Cond, torch.Tensor], cfg_scale: float
              ) -> dict[Cond, torch.Tensor]:
        """Rate map ``(1, H, W)`` float32 for every cond output in ``conds`` (``Cond(image, sub-prompt)`` ->
        ``(C, H, W)``; ``uncond`` has one row per image) that S-CFG can guide this step; empty = plain CFG."""
        if not self.active:
            return {}
        if self.capture.error:
            self.warn_once(f"S-CFG skipped a step: {self.capture.error}")
        started = time.perf_counter()
        maps = self.capture.masks(uncond.shape[-2:])
        s = self.settings
        out: dict[Cond, torch.Tensor] = {}
        kept = StepMaps({}, {}, {}) if self.keep_maps else None
        for key, cond in conds.items():
            found = maps.get(key)
            if found is None:
                continue
            regions, foreground = found
            delta = (cond - uncond[key.image])[None]
            rate = guidance_rate(delta, regions, foreground, cfg_scale, min_rate=s.min_rate,
                                 max_rate=s.max_rate, max_scale=s.max_scale)[0]
            out[key] = rate
            if kept is not None:
                kept.regions[key], kept.foreground[key], kept.rate[key] = regions[0], foreground[0], rate
        if out and not all(torch.isfinite(rate).all() for rate in out.values()):
            self.warn_once("S-CFG computed a non-finite rate map; that step used plain CFG")
            out = {}
        self.seconds += time.perf_counter() - started
        if out:
            if not self._applied_this_step:
                self.steps_applied += 1
                self._applied_this_step = True
            if kept is not None:
                self.last_maps = kept
        return out

    def combine(self, uncond: torch.Tensor, conds: CondList, cfg_scale: float) -> torch.Tensor:
        """S-CFG combination of this step: ``uncond + sum_j w_j * cfg_scale * rate_j * (cond_j - uncond)``,
        with ``conds[i]`` image i's ``(cond output, weight)`` per sub-prompt; exactly ``plain_cfg`` when
        inactive or without usable maps."""
        guided = self.guided_conds(uncond, keyed(conds), cfg_scale)
        if not guided:
            return plain_cfg(uncond, conds, cfg_scale)
        return plain_cfg(uncond, [[(guided.get(Cond(i, j), cond), weight) for j, (cond, weight) in enumerate(image)]
                                  for i, image in enumerate(conds)], cfg_scale)

    def guided_conds(self, uncond: torch.Tensor, conds: Mapping[Cond, torch.Tensor], cfg_scale: float
                     ) -> dict[Cond, torch.Tensor]:
        """Cond outputs to substitute so that any linear CFG combiner yields S-CFG:
        ``uncond + rate * (cond - uncond)``. This lets a host's own (or another extension's) combination
        run unchanged on top. Empty when this step stays plain."""
        rates = self.rates(uncond, conds, cfg_scale)
        return {
            key: uncond[key.image] + rate.to(uncond.dtype) * (conds[key] - uncond[key.image])
            for key, rate in rates.items()
        }


def keyed(conds: CondList) -> dict[Cond, torch.Tensor]:
    """``{Cond(i, j): output}`` from per-image lists of ``(output, weight)``."""
    return {Cond(i, j): cond for i, image in enumerate(conds) for j, (cond, _) in enumerate(image)}
