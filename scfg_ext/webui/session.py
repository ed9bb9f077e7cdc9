"""One S-CFG generation in any WebUI: settings, model check, notices and the per-pass install/undo.

What differs between WebUIs is a small backend adapter (``a1111.Backend``, ``forge.Backend``):

* ``unsupported_reason(sd_model)``: why S-CFG can't serve this model, or None;
* ``unet(p)``: the U-Net module whose attention is captured;
* ``install(p, current)``: the combination for one sampling pass, every undo pushed on ``current.stack``;
* ``plan(current, params)``: the roles of this step's U-Net rows (``on_cfg_denoiser``), ``[]`` when the
  backend declares them per U-Net call, None when the batch can't be mapped (plain CFG for the step);
* ``pass_notice(p, settings)``: what the user should know about this pass, or None;
* ``repeat_context``: whether the backend repeats a shorter cond to a common length (Forge) instead of
  padding it (A1111): how per-token word weights are fitted to the context.

Flow (the same in A1111 1.10 and Forge; ``modules/processing.py``):

* ``process`` (once per generation): resolve and validate the settings, check the model, write infotext.
* ``before_sampling`` (``process_before_every_sampling``: first pass, hires pass, img2img; the sampler about
  to run exists): attach the capture, install the backend's combination, and wrap this sampler's
  ``launch_sampling`` so that everything is undone when sampling ends: success, error or interrupt
  (``postprocess`` is not reached when sampling raises). Idempotent: Forge calls it twice for hires.
* ``on_cfg_denoiser`` (every denoiser call, before the U-Net calls): the step's roles and progress.
* ``postprocess`` (once, with the ``Processed``): the S-CFG maps kept by each pass go to the gallery
  (``maps.add_to_gallery``).

With S-CFG disabled none of this is installed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..guidance import MapKeeper, ScfgRun
from ..settings import Settings, SettingsError
from ..weights import parse_weights
from . import infotext, maps, xyz
from .prompts import PassPrompts, pass_prompts, word_weights

log = logging.getLogger("sd-webui-scfg")


class Backend(Protocol):
    def unsupported_reason(self, sd_model) -> str | None: ...
    def unet(self, p) -> torch.nn.Module: ...
    def install(self, p, current: Pass) -> None: ...
    def plan(self, current: Pass, params) -> list | None: ...
    def pass_notice(self, p, settings: Settings) -> str | None: ...
    repeat_context: bool


@dataclass
class Pass:
    """One sampling pass with S-CFG installed."""

    p: Any
    run: ScfgRun
    sampler: Any
    denoiser: Any
    unet: torch.nn.Module
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    prompts: PassPrompts | None = None  # the batch's sub-prompts and their tokens (maps, word weights)


def resolve_settings(args, p) -> Settings:
    """The script args, with this X/Y/Z cell's values on top. Raises ``SettingsError``."""
    settings = Settings.from_args(args)
    over = xyz.overrides(p)
    if over:
        enabled = over.pop("enabled", settings.enabled or bool(over))  # any S-CFG axis implies S-CFG on
        settings = settings.replace(enabled=enabled, **over)
    return settings


class Session:
    """S-CFG in one WebUI process, driven by the script's hooks."""

    def __init__(self, backend: Backend, legacy: bool = False):
        self.backend = backend
        self.current: Pass | None = None
        # A1111 1.6-1.9 have no process_before_every_sampling: the pass is then installed from the first
        # on_cfg_denoiser call of each sampler (before that step's U-Net calls and combination)
        self.legacy = legacy
        self.pending = None  # the p of the generation in progress, when S-CFG is on
        self.kept: list[maps.PassMaps] = []  # the maps of this generation's passes, for postprocess

    # -- script hooks -------------------------------------------------------------------------------------
    def process(self, p, args) -> Settings | None:
        self.stop()  # a pass left over from a run that crashed outside sampling
        self.pending = None
        self.kept = []
        p.scfg_settings = None
        # X/Y/Z plot cells are shallow copies of one p and share its extra_generation_params dict: never write
        # into it, and drop what an earlier cell wrote there, so a cell's infotext has S-CFG only if it used it
        params = p.extra_generation_params or {}
        if any(key in params for key in infotext.ALL_KEYS):
            p.extra_generation_params = {k: v for k, v in params.items() if k not in infotext.ALL_KEYS}
        try:
            settings = resolve_settings(args, p)
        except SettingsError as e:
            notice(p, f"{e}; S-CFG is off for this generation")
            return None
        if not settings.enabled:
            return None
        reason = self.backend.unsupported_reason(p.sd_model)
        if reason:
            notice(p, f"S-CFG is off for this model: {reason}; using plain CFG")
            return None
        if float(getattr(p, "cfg_scale", 0.0)) == 1.0:
            notice(p, "S-CFG is off: at CFG scale 1 no negative prompt is computed, so there is no guidance to make "
                      "semantic-aware (guidance-distilled models such as Z-Image-Turbo run at CFG 1)")
            return None
        p.scfg_settings = settings
        p.extra_generation_params = {**(p.extra_generation_params or {}), **infotext.write(settings)}  # a copy
        self.pending = p
        return settings

    def before_sampling(self, p) -> bool:
        settings = getattr(p, "scfg_settings", None)
        self.stop()
        if settings is None:
            return False
        if getattr(p, "is_hr_pass", False) and not settings.hires:
            return False
        message = self.backend.pass_notice(p, settings)
        if message:
            notice(p, message)
        sampler = getattr(p, "sampler", None)
        denoiser = getattr(sampler, "model_wrap_cfg", None)
        if denoiser is None:
            notice(p, "S-CFG found no CFG denoiser on this sampler; using plain CFG")
            return False
        try:
            self.current = self._start(p, settings, sampler, denoiser)
        except Exception as e:  # noqa: BLE001 - never break the generation: step aside
            self.stop()
            notice(p, f"S-CFG could not start ({type(e).__name__}: {e}); using plain CFG")
            return False
        return True

    def finish(self) -> None:
        """End of the generation (``postprocess``, script unload)."""
        self.pending = None
        self.stop()
        self.kept = []

    def postprocess(self, p, processed) -> None:
        """End of the generation with its result: the kept maps go to the gallery (never raises)."""
        kept, settings = self.kept, getattr(p, "scfg_settings", None)
        self.finish()
        if not kept or settings is None or not settings.show_maps:
            return
        try:
            maps.add_to_gallery(p, processed, kept, settings)
        except Exception as e:  # noqa: BLE001 - never fail the generation for a picture
            log.exception("S-CFG maps")
            notice(p, f"S-CFG could not draw its maps ({type(e).__name__}: {e})")

    def stop(self) -> None:
        """Undo everything of the current pass (idempotent)."""
        current, self.current = self.current, None
        if current is None:
            return
        current.stack.close()
        run = current.run
        if run.keeper is not None:
            result = run.keeper.result()
            if result:
                self.kept.append(maps.PassMaps(current.p, current.prompts, result))
        run.finish()
        log.info("S-CFG pass done: %d attention layers hooked, S-CFG used on %d of %d denoiser calls, "
                 "%.1f ms of host time issuing the rates", len(run.capture.layers), run.steps_applied,
                 run.steps_seen, run.seconds * 1e3)
        if run.found_no_foreground():
            notice(current.p, "S-CFG found no foreground on any step (the background tokens owned every cell), "
                              "so its rate was 1 everywhere: this image is plain CFG")

    def _start(self, p, settings, sampler, denoiser) -> Pass:
        unet = self.backend.unet(p)
        warn = functools.partial(notice, p)
        entries = parse_weights(settings.word_weights)
        prompts = None
        if entries or settings.show_maps:
            prompts = pass_prompts(p, warn)
        token_weights = word_weights(prompts, entries, warn) if entries else None
        keeper = None
        if settings.show_maps:
            keeper = MapKeeper(settings.maps_step, (settings.start + min(settings.end, 1.0)) / 2)
        run = ScfgRun(settings, warn=warn, token_weights=token_weights,
                      repeat_weights=self.backend.repeat_context, keeper=keeper)
        current = Pass(p, run, sampler, denoiser, unet, prompts=prompts)
        current.stack.enter_context(current.run.attached(unet))
        self.backend.install(p, current)

        launch = sampler.launch_sampling
        had_launch_attr = "launch_sampling" in vars(sampler)

        def launch_sampling(steps, func):
            try:
                return launch(steps, func)
            finally:
                if self.current is current:
                    self.stop()

        sampler.launch_sampling = launch_sampling
        current.stack.callback(restore_attr, sampler, "launch_sampling", launch if had_launch_attr else None)
        return current

    # -- per step -----------------------------------------------------------------------------------------
    def on_cfg_denoiser(self, params) -> None:
        if self.legacy and self.pending is not None:
            p = self.pending
            denoiser = getattr(params, "denoiser", None) or getattr(getattr(p, "sampler", None), "model_wrap_cfg", None)
            if denoiser is not None and (self.current is None or self.current.denoiser is not denoiser):
                self.before_sampling(p)
        current = self.current
        if current is None:
            return
        denoiser = getattr(params, "denoiser", None) or current.denoiser  # params.denoiser: 1.8+
        if denoiser is not current.denoiser:
            return
        try:
            roles = self.backend.plan(current, params)
        except Exception as e:  # noqa: BLE001
            current.run.warn_once(f"S-CFG could not map this batch ({type(e).__name__}: {e}); using plain CFG")
            roles = None
        total = max(int(getattr(denoiser, "total_steps", 0) or 0), 1)
        current.run.begin_step(roles or [], getattr(denoiser, "step", 0) / total)
        if roles is None:
            current.run.skip_step()


def restore_attr(obj, name, value) -> None:
    """Put back an instance attribute (``value``), or drop the instance override when ``value`` is None."""
    if value is None:
        obj.__dict__.pop(name, None)
    else:
        setattr(obj, name, value)


def notice(p, message: str) -> None:
    """Tell the user why S-CFG stepped aside: the console, the comments under the image (``p.comment``) and
    the infotext (``S-CFG notice``), which is also what an API user gets back in ``info``. Once per
    generation (Forge runs ``process_before_every_sampling`` twice for a hires pass)."""
    params = getattr(p, "extra_generation_params", None)
    earlier = params.get(infotext.NOTICE_KEY) if isinstance(params, dict) else None
    if earlier is not None and message in earlier:
        return
    log.warning(message)
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(message)
    if isinstance(params, dict):
        text = message if earlier is None else f"{earlier}; {message}"
        p.extra_generation_params = {**params, infotext.NOTICE_KEY: text}  # a copy: X/Y/Z cells share it
