"""Reject bad S-CFG API arguments with HTTP 422 before the request reaches the pipeline.

The WebUI copies ``alwayson_scripts[title]["args"]`` into the script args without any check and only logs
exceptions raised later in script hooks, so the check wraps ``Api.init_script_args`` (the method both
txt2img and img2img endpoints call first, A1111 1.6-1.10 and Forge alike), installed when the app starts
and removed when scripts unload. The input rules are in docs/api.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..settings import FIELDS, Settings, SettingsError, shown

TITLE = "S-CFG"
log = logging.getLogger("sd-webui-scfg")


def find_args(alwayson_scripts: Any) -> list[list] | None:
    """The ``args`` of every spelling of S-CFG's title in a request's ``alwayson_scripts`` (matched
    case-insensitively, as the WebUI's ``script_name_to_index`` does), in request order; None when it names
    no S-CFG. Raises ``SettingsError`` on an entry that is not ``{"args": [...]}``."""
    if not isinstance(alwayson_scripts, Mapping):
        return None
    found = []
    for name, entry in alwayson_scripts.items():
        if isinstance(name, str) and name.lower() == TITLE.lower():
            if not isinstance(entry, Mapping):
                raise SettingsError(f'S-CFG: alwayson_scripts[{shown(name)}] must be an object like {{"args": [...]}}')
            args = entry.get("args", [])
            if not isinstance(args, list):
                raise SettingsError('S-CFG: "args" must be a list: positional values, or [{"name": value}]')
            found.append(args)
    return found or None


def applied_args(spellings: list[list]) -> list:
    """The script args the WebUI gives S-CFG from these spellings: ``init_script_args`` (A1111 1.10, Forge)
    copies each spelling's ``args`` in turn over the same slots (at most as many as S-CFG has), so a later
    spelling overrides an earlier one where both give a value."""
    merged: list = []
    for args in spellings:
        for i, value in enumerate(args[: len(FIELDS)]):
            merged[i:i + 1] = [value]
    return merged


def validate_request(request) -> Settings | None:
    """Settings of a txt2img/img2img API request, or None when it doesn't mention S-CFG. Every spelling of the
    title must be valid on its own, and so must what the WebUI will apply from all of them together.
    Raises ``SettingsError`` with a message that names the field and its allowed values."""
    spellings = find_args(getattr(request, "alwayson_scripts", None))
    if spellings is None:
        return None
    settings = [Settings.from_args(args) for args in spellings]
    if len(spellings) == 1:
        return settings[0]
    try:
        return Settings.from_args(applied_args(spellings))
    except SettingsError as e:
        raise SettingsError(f"{e} (in the args the WebUI applies from the {len(spellings)} spellings of "
                            f"{TITLE!r} together: a later one overrides an earlier one slot by slot)") from None


def install(api_class, http_error: Callable[[str], Exception]) -> Callable[[], None]:
    """Wrap ``api_class.init_script_args``; returns the undo. A wrapper left by an earlier load of the
    extension (a reload without unload) is replaced, never stacked."""
    current = api_class.init_script_args
    while getattr(current, "_scfg_validator", False):
        current = current.__wrapped__

    def init_script_args(self, request, *args, **kwargs):
        try:
            validate_request(request)
        except SettingsError as e:
            raise http_error(str(e)) from None
        except Exception as e:  # noqa: BLE001 - S-CFG's input never answers HTTP 500
            log.exception("S-CFG: checking the API args failed")
            raise http_error(f"S-CFG could not read its args ({type(e).__name__}: {shown(str(e))})") from None
        return current(self, request, *args, **kwargs)

    init_script_args._scfg_validator = True
    init_script_args.__wrapped__ = current
    api_class.init_script_args = init_script_args

    def undo():
        if api_class.init_script_args is init_script_args:
            api_class.init_script_args = current

    return undo
