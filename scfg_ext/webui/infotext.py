"""S-CFG settings in the infotext (PNG info): written only when enabled, read back on paste / "Send to"."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ..settings import FIELD_BY_NAME, FIELDS, Settings, SettingsError

ENABLED_KEY = FIELD_BY_NAME["enabled"].infotext  # "S-CFG"
KEYS = tuple(f.infotext for f in FIELDS)


def write(settings: Settings) -> dict[str, str]:
    """``extra_generation_params`` entries: every setting, as text without commas, colons or quotes."""
    return {f.infotext: f.to_text(getattr(settings, f.name)) for f in FIELDS}


def fill_pasted(params: MutableMapping[str, Any]) -> list[str]:
    """Prepare parsed infotext ``params`` before the WebUI applies them to the controls (the
    ``on_infotext_pasted`` callback): an infotext without S-CFG turns S-CFG off; one with it gets the
    defaults for keys it lacks (older versions); a value that doesn't parse is dropped so the control keeps
    its value. Returns the problems found."""
    if ENABLED_KEY not in params:
        params[ENABLED_KEY] = "False"
        return []
    problems = []
    for f in FIELDS:
        if f.infotext not in params:
            params[f.infotext] = f.to_text(f.default)
            continue
        try:
            params[f.infotext] = f.to_text(f.from_text(params[f.infotext]))
        except SettingsError as e:
            problems.append(str(e))
            del params[f.infotext]
    return problems


def read(params: MutableMapping[str, Any]) -> Settings:
    """Settings from parsed infotext params (missing keys: defaults; no ``S-CFG`` key: disabled)."""
    values = {f.name: f.from_text(params[f.infotext]) for f in FIELDS if f.infotext in params}
    return Settings(**values)
