"""Reject bad S-CFG API arguments with HTTP 422 before the request reaches the pipeline.

The WebUI copies ``alwayson_scripts[title]["args"]`` into the script args without any check and only logs
exceptions raised later in script hooks, so the check wraps ``Api.init_script_args`` (the method both
txt2img and img2img endpoints call first, A1111 1.6-1.10 and Forge alike), installed when the app starts
and removed when scripts unload.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..settings import Settings, SettingsError

TITLE = "S-CFG"


def find_args(alwayson_scripts: Any) -> list | None:
    """The S-CFG ``args`` of a request's ``alwayson_scripts`` (title matched case-insensitively), or None."""
    if not isinstance(alwayson_scripts, Mapping):
        return None
    for name, entry in alwayson_scripts.items():
        if isinstance(name, str) and name.lower() == TITLE.lower():
            if not isinstance(entry, Mapping):
                raise SettingsError(f'S-CFG: alwayson_scripts["{name}"] must be an object like {{"args": [...]}}')
            args = entry.get("args", [])
            if not isinstance(args, list):
                raise SettingsError('S-CFG: "args" must be a list: positional values, or [{"name": value}]')
            return args
    return None


def validate_request(request) -> Settings | None:
    """Settings of a txt2img/img2img API request, or None when it doesn't mention S-CFG.
    Raises ``SettingsError`` with a message that names the field and its allowed values."""
    args = find_args(getattr(request, "alwayson_scripts", None))
    return None if args is None else Settings.from_args(args)


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
        return current(self, request, *args, **kwargs)

    init_script_args._scfg_validator = True
    init_script_args.__wrapped__ = current
    api_class.init_script_args = init_script_args

    def undo():
        if api_class.init_script_args is init_script_args:
            api_class.init_script_args = current

    return undo
