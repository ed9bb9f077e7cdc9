"""X/Y/Z plot axes for every S-CFG setting, derived from ``settings.FIELDS``.

Each axis writes the cell's value on the cell's own copy of ``p`` (``p.scfg_xyz_<name>``); the script reads
them back with ``overrides(p)``. Values are validated when the grid starts (``confirm``).
"""

from __future__ import annotations

from typing import Any

from ..settings import FIELDS, Field

PREFIX = "[S-CFG] "
ATTR = "scfg_xyz_"


def value(field: Field, x: Any) -> Any:
    """An axis value in the field's type; raises ``SettingsError`` naming the field.

    Float ranges come from ``np.arange`` (``"0.4-1 (+0.2)"`` ends at 1.0000000000000002), so floats are rounded
    to 10 decimals first: otherwise a range the user wrote within bounds is rejected for float noise."""
    if isinstance(x, str):
        return field.from_text(x)
    if field.kind is float and isinstance(x, float):
        x = round(x, 10)
    return field.check(x)


def _apply(field: Field):
    def apply(p, x, xs):
        setattr(p, ATTR + field.name, value(field, x))

    return apply


def _confirm(field: Field):
    def confirm(p, xs):
        for x in xs:
            value(field, x)

    return confirm


def axis_options(xyz) -> list:
    options = []
    for f in FIELDS:
        label = PREFIX + ("Enabled" if f.name == "enabled" else f.label)
        if f.kind is bool:
            opt = xyz.AxisOption(label, str, _apply(f), choices=xyz.boolean_choice(reverse=True), confirm=_confirm(f))
        elif f.free_text:
            opt = xyz.AxisOption(label, str, _apply(f), confirm=_confirm(f))
        elif f.kind is str:
            opt = xyz.AxisOption(label, str, _apply(f), choices=lambda f=f: list(f.choices), confirm=_confirm(f))
        else:
            opt = xyz.AxisOption(label, float, _apply(f), confirm=_confirm(f))
        options.append(opt)
    return options


def register(xyz) -> bool:
    """Add the axes to ``xyz.axis_options`` once (also across "Reload UI"). True if added now."""
    if xyz is None or any(getattr(o, "label", "").startswith(PREFIX) for o in xyz.axis_options):
        return False
    xyz.axis_options.extend(axis_options(xyz))
    return True


def overrides(p) -> dict[str, Any]:
    """The X/Y/Z values set on this cell's ``p``."""
    return {f.name: getattr(p, ATTR + f.name) for f in FIELDS if hasattr(p, ATTR + f.name)}
