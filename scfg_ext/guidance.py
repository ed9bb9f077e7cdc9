"""Denoiser-level combination: plain CFG, or S-CFG with the maps captured during this step.

Backend-neutral: a WebUI adapter turns its batch layout into ``uncond`` (one row per image) and the cond
outputs keyed by ``Cond(image, sub-prompt)``, and substitutes what ``ScfgRun.guided_conds`` returns for
them before the WebUI's own combination runs (``combine`` is the same thing as one function, for callers
that own the combination). Works in any output space (eps, x0, v): the rate is invariant to a positive factor.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import masks as M
from .capture import AttentionCapture, Cond, Role
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
class KeptMaps:
    """The maps of one cond row at the step the user picked, small: the owner token of every latent cell
    ``(H, W)`` int64 and the rate ``(H, W)`` float16, on the CPU."""

    owner: torch.Tensor
    rate: torch.Tensor
    tokens: int  # T: the context length (regions = one_hot(owner, T))

    def regions(self) -> torch.Tensor:
        """One-hot token regions ``(T, H, W)`` float32."""
        return torch.nn.functional.one_hot(self.owner, self.tokens).permute(2, 0, 1).float()


class MapKeeper:
    """Keeps, per cond row, the maps of one step of a pass: ``"first"``/``"last"`` step S-CFG guided,
    ``"middle"`` (the first guided step at or after the middle of the active range, else the last one before
    it) or ``"average"`` (the most frequent owner per cell and the mean rate over the guided steps). One step's
    maps are held (on the device, until ``result``), or the running sums for the average."""

    def __init__(self, mode: str, middle: float):
        self.mode, self.middle = mode, middle
        self._held: dict[Cond, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._held_at: float | None = None  # the progress of the step held
        self._sums: dict[Cond, list] = {}
        self._locked = False

    def add(self, progress: float, regions: Mapping[Cond, torch.Tensor], rates: Mapping[Cond, torch.Tensor]) -> None:
        """The rows guided by one ``rates`` call: ``regions[key]`` ``(T, H, W)`` one-hot, ``rates[key]``
        ``(1, H, W)``. A step's rows may come in several calls (Forge splits the chunks under memory pressure):
        calls at the same ``progress`` add to the step held."""
        if self.mode == "average":
            for key, rate in rates.items():
                count = regions[key].float()
                entry = self._sums.get(key)
                if entry is None or entry[0].shape != count.shape:
                    self._sums[key] = [count, rate[0].float(), 1]
                else:
                    entry[0] += count
                    entry[1] += rate[0].float()
                    entry[2] += 1
            return
        same_step = progress == self._held_at
        if not same_step and (self._locked or (self.mode == "first" and self._held)):
            return
        if not same_step:
            self._held, self._held_at = {}, progress
        self._held.update({key: (regions[key].argmax(0), rate[0].half(), regions[key].shape[0])
                           for key, rate in rates.items()})
        if self.mode == "middle" and progress >= self.middle:
            self._locked = True  # later steps are past the middle: this one is kept

    def result(self) -> dict[Cond, KeptMaps]:
        if self.mode == "average":
            return {key: KeptMaps(counts.argmax(0).cpu(), (total / n).half().cpu(), counts.shape[0])
                    for key, (counts, total, n) in self._sums.items()}
        return {key: KeptMaps(owner.cpu(), rate.cpu(), t) for key, (owner, rate, t) in self._held.items()}


def fit_weights(weights: torch.Tensor, tokens: int, repeat: bool = False) -> torch.Tensor:
    """Per-position weights ``(n,)`` of a prompt made to the context length ``tokens`` seen at the U-Net:
    padded with 1 (A1111 pads a shorter cond with its padding vector) or, with ``repeat``, tiled (Forge
    repeats a shorter cond to the common multiple of the lengths); cut when longer."""
    n = weights.shape[0]
    if n >= tokens:
        return weights[:tokens]
    if repeat and n and tokens % n == 0:
        return weights.repeat(tokens // n)
    return torch.cat([weights, weights.new_ones(tokens - n)])


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

    def __init__(self, settings: Settings, warn: Callable[[str], None] | None = None, keep_maps: bool = False,
                 token_weights: Mapping[Cond, torch.Tensor] | None = None, repeat_weights: bool = False,
                 keeper: MapKeeper | None = None):
        """``token_weights``: per cond row, a multiplier per prompt token (``weights.token_weights``), fitted to
        each step's context length by ``fit_weights(repeat=repeat_weights)``. ``keeper``: keeps the maps of
        the step it picks (the WebUI's gallery); ``keep_maps``: every step's full maps in ``last_maps``."""
        self.settings = settings
        self.token_weights = dict(token_weights or {})
        self.repeat_weights = repeat_weights
        self._fitted: dict[tuple[Cond, int], torch.Tensor] = {}  # token weights fitted and on the device
        self.keeper = keeper
        self.progress = 0.0
        self.capture = AttentionCapture(settings.refine, settings.foreground)
        self._warn = warn or log.warning
        self._warned: set[str] = set()
        self.keep_maps = keep_maps
        self.last_maps: StepMaps | None = None
        self.active = False
        self.steps_seen = 0  # begin_step calls
        self.steps_applied = 0  # steps whose combination used S-CFG's maps
        self.seconds = 0.0  # host time spent issuing the rate computations (a GPU runs them later)
        self._totals: torch.Tensor | None = None  # (2,) float64 on the device: ``_count``
        self._rows = 0  # guided rows, summed over steps
        self._foreground_cells = 0.0  # read off ``_totals`` by ``finish``
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
        self.progress = progress
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
        return {key: deviation + 1 for key, (deviation, _) in self.deviations(uncond, conds, cfg_scale).items()}

    def deviations(self, uncond: torch.Tensor, conds: Mapping[Cond, torch.Tensor], cfg_scale: float
                    ) -> dict[Cond, tuple[torch.Tensor, torch.Tensor]]:
        """``rate - 1`` ``(1, H, W)`` and ``cond - uncond`` ``(C, H, W)`` for every cond output S-CFG guides this
        step, the rows of each U-Net call computed together. Nothing here waits for the device: what the notices
        need is summed on it (``_totals``) and read once, when the pass ends (``finish``)."""
        if not self.active:
            return {}
        started = time.perf_counter()
        stacked = self.capture.stacked_masks(uncond.shape[-2:])
        if self.capture.error:
            self.warn_once(f"S-CFG skipped a step: {self.capture.error}")
        s = self.settings
        out: dict[Cond, tuple[torch.Tensor, torch.Tensor]] = {}
        kept = StepMaps({}, {}, {}) if self.keep_maps else None
        used_regions = {}
        for keys, masks in stacked:
            rows = [j for j, key in enumerate(keys) if key in conds]
            if not rows:
                continue
            keys = [keys[j] for j in rows]
            masks = M.pick_rows(masks, rows)
            delta = _rows([conds[key] for key in keys]) - _rows([uncond[key.image] for key in keys])
            weights = self._token_weights(keys, masks.shape[1] - 1, masks.device)
            sums = M.region_sums(delta, masks)
            self._count(sums)
            deviation = M.rate_deviation(sums, masks, cfg_scale, min_rate=s.min_rate, max_rate=s.max_rate,
                                         max_scale=s.max_scale, token_weights=weights)
            for j, key in enumerate(keys):
                out[key] = deviation[j], delta[j]
                if kept is not None or self.keeper is not None:
                    used_regions[key] = masks[j, :-1]
                if kept is not None:
                    kept.regions[key], kept.foreground[key], kept.rate[key] = masks[j, :-1], masks[j, -1:], \
                        deviation[j] + 1
        self.seconds += time.perf_counter() - started
        if out:
            if not self._applied_this_step:
                self.steps_applied += 1
                self._applied_this_step = True
            if kept is not None:
                self.last_maps = kept
            if self.keeper is not None:
                self.keeper.add(self.progress, used_regions, {key: d + 1 for key, (d, _) in out.items()})
        return out

    def _token_weights(self, keys: Sequence[Cond], tokens: int, device) -> torch.Tensor | None:
        """The rows' word weights fitted to the context length, ``(rows, T)``, or None when no row has any."""
        if not any(key in self.token_weights for key in keys):
            return None
        rows = []
        for key in keys:
            fitted = self._fitted.get((key, tokens))
            if fitted is None:
                weights = self.token_weights.get(key)
                fitted = (torch.ones(tokens) if weights is None
                          else fit_weights(weights, tokens, self.repeat_weights)).to(device)
                self._fitted[(key, tokens)] = fitted
            rows.append(fitted)
        return _rows(rows)

    def _count(self, sums: torch.Tensor) -> None:
        # the foreground's [norm sum, cells + epsilon], summed over rows and steps: the notices' evidence, read once
        # at the end of the pass. The norm sum is not finite when a foreground norm was not (then the rate map was
        # not finite either: a non-finite ratio reaches every cell through the region product)
        foreground = sums[0, -1] if len(sums) == 1 else sums[:, -1].sum(0)
        self._totals = foreground.double() if self._totals is None else self._totals.add_(foreground)
        self._rows += len(sums)

    def finish(self) -> None:
        """End of the pass: read what the notices need off the device (the one wait for it), and warn."""
        if self._totals is None:
            return
        norms, cells = self._totals.tolist()
        self._foreground_cells = cells - self._rows * M.EPS
        if not math.isfinite(norms):
            self.warn_once("S-CFG computed a non-finite rate map (the norm of cond - uncond overflowed); those steps "
                           "used plain CFG")

    def found_no_foreground(self) -> bool:
        """S-CFG guided some steps, but on none of them was any cell foreground: its rate was 1 everywhere (after
        ``finish``)."""
        return self.steps_applied > 0 and self._foreground_cells < 0.5

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
        ``uncond + rate * (cond - uncond)``, computed as ``cond + (rate - 1) * (cond - uncond)`` so that where
        the rate is exactly 1 the cond output is passed bit for bit (plain CFG there, exactly). This lets a
        host's own (or another extension's) combination run unchanged on top. Empty when this step stays plain."""
        return {key: torch.addcmul(conds[key], deviation.to(uncond.dtype), delta)
                for key, (deviation, delta) in self.deviations(uncond, conds, cfg_scale).items()}


def _rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors stacked along a new first axis (a view for one)."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def keyed(conds: CondList) -> dict[Cond, torch.Tensor]:
    """``{Cond(i, j): output}`` from per-image lists of ``(output, weight)``."""
    return {Cond(i, j): cond for i, image in enumerate(conds) for j, (cond, _) in enumerate(image)}
