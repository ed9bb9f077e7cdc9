"""S-CFG for Stable Diffusion WebUI (A1111, Forge and its forks): the AlwaysOn script. Thin: everything lives
in ``scfg_ext``.

Loaded by the WebUI as module ``scfg.py`` with the extension directory on ``sys.path``.
"""

from __future__ import annotations

import logging

from scfg_ext.webui import api, controls, host, infotext, xyz
from scfg_ext.webui.session import Session

if host.IS_FORGE:
    from scfg_ext.webui.forge import Backend
else:
    from scfg_ext.webui.a1111 import Backend

SESSION = Session(Backend(), legacy=not hasattr(host.scripts.Script, "process_before_every_sampling"))  # A1111<1.10
_undo_api = []


class ScfgScript(host.scripts.Script):
    sorting_priority = 15  # Forge: AlwaysOn accordions sorted by it (its SAG is 12.5); ignored by A1111

    def title(self):
        return api.TITLE

    def show(self, is_img2img):
        return host.scripts.AlwaysVisible

    def ui(self, is_img2img):
        components = controls.build(host.gr, host.InputAccordion, self.elem_id)
        self.infotext_fields = list(zip(components, infotext.paste_keys(), strict=True))
        self.paste_field_names = list(infotext.KEYS)
        return components

    def process(self, p, *args):
        logging.getLogger("sd-webui-scfg").setLevel(logging.INFO if host.option("scfg_verbose", False)
                                                     else logging.WARNING)
        SESSION.process(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        SESSION.before_sampling(p)

    def postprocess(self, p, processed, *args):
        SESSION.postprocess(p, processed)


def _register(on, callback, name):
    try:
        on(callback, name=name)
    except TypeError:  # name= exists since 1.9
        on(callback)


def _on_before_ui():
    xyz.register(host.xyz_grid())


def _on_ui_settings():
    section = ("scfg", "S-CFG")
    host.shared.opts.add_option("scfg_verbose", host.option_info(
        False, "S-CFG: log each sampling pass in the console (layers hooked, steps guided, time)", section=section))


def _on_infotext_pasted(text, params):
    for problem in infotext.fill_pasted(params):
        host.log.warning("S-CFG infotext: %s; that setting was left unchanged", problem)


def _on_app_started(demo, app):
    api_class = host.api_class()
    if api_class is not None:
        _undo_api.append(api.install(api_class, host.http_error))


def _on_script_unloaded():
    SESSION.finish()
    while _undo_api:
        _undo_api.pop()()


_register(host.script_callbacks.on_cfg_denoiser, SESSION.on_cfg_denoiser, "scfg_plan_rows")
_register(host.script_callbacks.on_before_ui, _on_before_ui, "scfg_xyz_axes")
_register(host.script_callbacks.on_ui_settings, _on_ui_settings, "scfg_settings")
_register(host.script_callbacks.on_infotext_pasted, _on_infotext_pasted, "scfg_infotext")
_register(host.script_callbacks.on_app_started, _on_app_started, "scfg_api_validation")
_register(host.script_callbacks.on_script_unloaded, _on_script_unloaded, "scfg_cleanup")
xyz.register(host.xyz_grid())  # the built-in X/Y/Z script loads before extensions; also covers --nowebui
