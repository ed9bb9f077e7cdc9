"""Stand-in for modules/script_callbacks.py @ A1111 v1.10.1 (82a973c).

Kept: the params classes (exact fields), ScriptCallback, add_callback (caller filename,
unique "<ext>/<file>/<category>[/<name>]" names), ordered_callbacks with its cache,
the dispatchers (each callback wrapped in try/except -> errors.report), the on_* registrars
with `name=` (1.9+), remove_current_script_callbacks / remove_callbacks_for_function /
clear_callbacks.
Trimmed: metadata.ini ordering (extensions.find_extension always answers "base";
only the user `prioritized_callbacks_<category>` ordering is kept), the startup timer,
the UI-tab / image-saved / token-counter param classes.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from modules import errors, shared


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): report_exception(c, job)
def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): ExtraNoiseParams(noise, x, xi)
class ExtraNoiseParams:
    def __init__(self, noise, x, xi):
        self.noise = noise
        self.x = x
        self.xi = xi


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): CFGDenoiserParams (8 fields, denoiser since 1.8)
class CFGDenoiserParams:
    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x = x
        """Latent image representation in the process of being denoised"""

        self.image_cond = image_cond
        """Conditioning image"""

        self.sigma = sigma
        """Current sigma noise step value"""

        self.sampling_step = sampling_step
        """Current Sampling step number"""

        self.total_sampling_steps = total_sampling_steps
        """Total number of sampling steps planned"""

        self.text_cond = text_cond
        """ Encoder hidden states of text conditioning from prompt"""

        self.text_uncond = text_uncond
        """ Encoder hidden states of text conditioning from negative prompt"""

        self.denoiser = denoiser
        """Current CFGDenoiser object with processing parameters"""


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): CFGDenoisedParams(x, sampling_step, total_sampling_steps,
#   inner_model)
class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): AfterCFGCallbackParams(x, sampling_step,
#   total_sampling_steps)
class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): ScriptCallback dataclass
@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: any
    name: str = "unnamed"


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): add_callback (extension lookup trimmed to 'base')
def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else "unknown file"

    extension_name = "base"  # upstream: extensions.find_extension(filename).canonical_name, or 'base'

    callback_name = f"{extension_name}/{os.path.basename(filename)}/{category}"
    if name is not None:
        callback_name += f"/{name}"

    unique_callback_name = callback_name
    for index in range(1000):
        existing = any(x.name == unique_callback_name for x in callbacks)
        if not existing:
            break

        unique_callback_name = f"{callback_name}-{index + 1}"

    callbacks.append(ScriptCallback(filename, fun, unique_callback_name))


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): sort_callbacks (metadata.ini topological order trimmed)
def sort_callbacks(category, unordered_callbacks, *, enable_user_sort=True):
    callbacks = unordered_callbacks.copy()

    if enable_user_sort:
        for name in reversed(getattr(shared.opts, "prioritized_callbacks_" + category, [])):
            index = next((i for i, callback in enumerate(callbacks) if callback.name == name), None)
            if index is not None:
                callbacks.insert(0, callbacks.pop(index))

    return callbacks


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): ordered_callbacks (cached per category while the length is
#   unchanged)
def ordered_callbacks(category, unordered_callbacks=None, *, enable_user_sort=True):
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get("callbacks_" + category, [])

    if not enable_user_sort:
        return sort_callbacks(category, unordered_callbacks, enable_user_sort=False)

    callbacks = ordered_callbacks_map.get(category)
    if callbacks is not None and len(callbacks) == len(unordered_callbacks):
        return callbacks

    callbacks = sort_callbacks(category, unordered_callbacks)

    ordered_callbacks_map[category] = callbacks
    return callbacks


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): callback_map
callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_before_image_saved=[],
    callbacks_image_saved=[],
    callbacks_extra_noise=[],
    callbacks_cfg_denoiser=[],
    callbacks_cfg_denoised=[],
    callbacks_cfg_after_cfg=[],
    callbacks_before_component=[],
    callbacks_after_component=[],
    callbacks_image_grid=[],
    callbacks_infotext_pasted=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_on_reload=[],
    callbacks_list_optimizers=[],
    callbacks_list_unets=[],
    callbacks_before_token_counter=[],
)

ordered_callbacks_map = {}


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): clear_callbacks (called first by scripts.load_scripts)
def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()

    ordered_callbacks_map.clear()


def _dispatch(category, job, *args):
    # the body every upstream dispatcher repeats: call in order, report and continue on Exception
    for c in ordered_callbacks(category):
        try:
            c.callback(*args)
        except Exception:
            report_exception(c, job)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): app_started_callback(demo, app) (startup timer trimmed)
def app_started_callback(demo: Any | None, app: Any):
    _dispatch("app_started", "app_started_callback", demo, app)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): app_reload_callback()
def app_reload_callback():
    _dispatch("on_reload", "callbacks_on_reload")


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): model_loaded_callback(sd_model)
def model_loaded_callback(sd_model):
    _dispatch("model_loaded", "model_loaded_callback", sd_model)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): ui_settings_callback()
def ui_settings_callback():
    _dispatch("ui_settings", "ui_settings_callback")


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): extra_noise_callback(params)
def extra_noise_callback(params: ExtraNoiseParams):
    _dispatch("extra_noise", "callbacks_extra_noise", params)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): cfg_denoiser_callback(params)
def cfg_denoiser_callback(params: CFGDenoiserParams):
    _dispatch("cfg_denoiser", "cfg_denoiser_callback", params)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): cfg_denoised_callback(params)
def cfg_denoised_callback(params: CFGDenoisedParams):
    _dispatch("cfg_denoised", "cfg_denoised_callback", params)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): cfg_after_cfg_callback(params)
def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _dispatch("cfg_after_cfg", "cfg_after_cfg_callback", params)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): before_component_callback(component, **kwargs)
def before_component_callback(component, **kwargs):
    for c in ordered_callbacks("before_component"):
        try:
            c.callback(component, **kwargs)
        except Exception:
            report_exception(c, "before_component_callback")


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): after_component_callback(component, **kwargs)
def after_component_callback(component, **kwargs):
    for c in ordered_callbacks("after_component"):
        try:
            c.callback(component, **kwargs)
        except Exception:
            report_exception(c, "after_component_callback")


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): infotext_pasted_callback(infotext, params)
def infotext_pasted_callback(infotext: str, params: dict[str, Any]):
    _dispatch("infotext_pasted", "infotext_pasted", infotext, params)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): script_unloaded_callback() -- runs in REVERSED order
def script_unloaded_callback():
    for c in reversed(ordered_callbacks("script_unloaded")):
        try:
            c.callback()
        except Exception:
            report_exception(c, "script_unloaded")


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): before_ui_callback() -- runs in REVERSED order
def before_ui_callback():
    for c in reversed(ordered_callbacks("before_ui")):
        try:
            c.callback()
        except Exception:
            report_exception(c, "before_ui")


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): list_optimizers_callback() -> list
def list_optimizers_callback():
    res = []

    for c in ordered_callbacks("list_optimizers"):
        try:
            c.callback(res)
        except Exception:
            report_exception(c, "list_optimizers")

    return res


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): remove_current_script_callbacks()
# (removes every callback whose ScriptCallback.script == filename of the first stack frame outside this file)
def remove_current_script_callbacks():
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else "unknown file"
    if filename == "unknown file":
        return
    for callback_list in callback_map.values():
        for callback_to_remove in [cb for cb in callback_list if cb.script == filename]:
            callback_list.remove(callback_to_remove)
    for ordered_callbacks_list in ordered_callbacks_map.values():
        for callback_to_remove in [cb for cb in ordered_callbacks_list if cb.script == filename]:
            ordered_callbacks_list.remove(callback_to_remove)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): remove_callbacks_for_function(callback_func) (compares
#   with ==)
def remove_callbacks_for_function(callback_func):
    for callback_list in callback_map.values():
        for callback_to_remove in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(callback_to_remove)
    for ordered_callback_list in ordered_callbacks_map.values():
        for callback_to_remove in [cb for cb in ordered_callback_list if cb.callback == callback_func]:
            ordered_callback_list.remove(callback_to_remove)


# mirrors modules/script_callbacks.py @ v1.10.1 (82a973c): the on_* registrars, all `(callback, *, name=None)`
def on_app_started(callback, *, name=None):
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_before_reload(callback, *, name=None):
    add_callback(callback_map["callbacks_on_reload"], callback, name=name, category="on_reload")


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_extra_noise(callback, *, name=None):
    add_callback(callback_map["callbacks_extra_noise"], callback, name=name, category="extra_noise")


def on_cfg_denoiser(callback, *, name=None):
    add_callback(callback_map["callbacks_cfg_denoiser"], callback, name=name, category="cfg_denoiser")


def on_cfg_denoised(callback, *, name=None):
    add_callback(callback_map["callbacks_cfg_denoised"], callback, name=name, category="cfg_denoised")


def on_cfg_after_cfg(callback, *, name=None):
    add_callback(callback_map["callbacks_cfg_after_cfg"], callback, name=name, category="cfg_after_cfg")


def on_before_component(callback, *, name=None):
    add_callback(callback_map["callbacks_before_component"], callback, name=name, category="before_component")


def on_after_component(callback, *, name=None):
    add_callback(callback_map["callbacks_after_component"], callback, name=name, category="after_component")


def on_infotext_pasted(callback, *, name=None):
    add_callback(callback_map["callbacks_infotext_pasted"], callback, name=name, category="infotext_pasted")


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_ui(callback, *, name=None):
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")


def on_list_optimizers(callback, *, name=None):
    add_callback(callback_map["callbacks_list_optimizers"], callback, name=name, category="list_optimizers")
