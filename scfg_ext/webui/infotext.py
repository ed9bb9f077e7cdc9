"""S-CFG settings in the infotext (PNG info): written only when enabled, read back on paste / "Send to"."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ..settings import FIELD_BY_NAME, FIELDS, Field, Settings, SettingsError

ENABLED_KEY = FIELD_BY_NAME["enabled"].infotext  # "S-CFG"
KEYS = tuple(f.infotext for f in FIELDS)
NOTICE_KEY = "S-CFG notice"  # why S-CFG stepped aside; written only then, never read back
ALL_KEYS = (*KEYS, NOTICE_KEY)


def write(settings: Settings) -> dict[str, str]:
    """``extra_generation_params`` entries: every setting (free text only when not empty; the WebUI quotes it)."""
    return {f.infotext: f.to_text(getattr(settings, f.name)) for f in FIELDS
            if not (f.free_text and getattr(settings, f.name) == "")}


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


class PasteKey(str):
    """A ``Script.infotext_fields`` key that is both the infotext key and a parser.

    As a ``str`` it is the key: "Send to img2img" copies the fields whose key is in ``paste_field_names`` by
    name. As a callable the WebUI calls it with the parsed params, on paste (after ``on_infotext_pasted``) and for
    the API's ``infotext`` request field (A1111 1.8+), which would otherwise convert the text with
    ``type(component.value)``: ``bool("False")`` is True, and ``float("abc")`` raises (HTTP 500). Returns the
    value in the field's type, or None (the control keeps its value) when the key is absent or the value bad.
    """

    field: Field

    def __new__(cls, field: Field):
        key = super().__new__(cls, field.infotext)
        key.field = field
        return key

    def __getnewargs__(self):  # copy / pickle rebuild it from the field, not from the text
        return (self.field,)

    def __call__(self, params: MutableMapping[str, Any]) -> Any:
        if self not in params:
            return None
        try:
            return self.field.from_text(params[self])
        except SettingsError:
            return None


def paste_keys() -> list[PasteKey]:
    """The ``infotext_fields`` keys, in ``FIELDS`` order."""
    return [PasteKey(f) for f in FIELDS]
