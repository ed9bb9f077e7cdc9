"""The facade: every import of the WebUI's own modules goes through here.

Names resolve against whichever WebUI loaded the extension (A1111 1.6+ or Forge); what a version lacks is
``None`` and the callers degrade instead of failing at import.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import gradio as gr  # noqa: F401 - re-exported: the WebUI's own gradio (3.41.2 on A1111)
import modules.script_callbacks as script_callbacks  # noqa: F401
import modules.scripts as scripts  # noqa: F401 - never `from modules.scripts import Script` (it would register)
import modules.shared as shared

try:
    from modules.ui_components import InputAccordion  # A1111 1.6+, Forge
except ImportError:  # pragma: no cover - older WebUIs
    InputAccordion = None

log = logging.getLogger("sd-webui-scfg")
IS_FORGE = importlib.util.find_spec("modules_forge") is not None  # Forge, Forge Classic, reForge


def option(key: str, default):
    """A value from the WebUI Settings page (``shared.opts``), or ``default`` before it is registered."""
    try:
        return getattr(shared.opts, key)
    except AttributeError:
        return default


def option_info(default, label, **kwargs):
    return shared.OptionInfo(default, label, **kwargs)


def xyz_grid():
    """The loaded X/Y/Z plot script module (file name ``xyz_grid.py``), or None."""
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid"):
            return data.module
    return None


def multicond_prompt_list(prompts):
    """``prompt_parser.get_multicond_prompt_list``: the ``AND`` sub-prompts of each prompt (A1111 and Forge)."""
    from modules import prompt_parser

    return prompt_parser.get_multicond_prompt_list(prompts)


def save_image(*args, **kwargs):
    """``modules.images.save_image`` (same signature in A1111 1.10 and Forge)."""
    from modules import images

    return images.save_image(*args, **kwargs)


def api_class():
    """``modules.api.api.Api`` if the API module can be imported, else None."""
    try:
        return importlib.import_module("modules.api.api").Api
    except Exception:  # noqa: BLE001 - no API in this WebUI build: nothing to validate
        return None


def http_error(detail: str):
    from fastapi import HTTPException

    return HTTPException(status_code=422, detail=detail)
