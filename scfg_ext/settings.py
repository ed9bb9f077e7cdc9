"""The one definition of S-CFG's settings.

``FIELDS`` is the single source from which the UI controls, their order (= the API's positional order),
infotext keys, X/Y/Z axes and API validation are all derived. ``Settings`` is the validated value object
the engine consumes. No WebUI imports here.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .masks import REFINE_MODES
from .weights import QUOTED, WeightsError, format_weights, parse_weights

FOREGROUND_SOURCES = ("cond", "uncond")
MAPS_STEPS = ("middle", "first", "last", "average")  # which step's maps "Show S-CFG maps" draws


class SettingsError(ValueError):
    """A bad S-CFG setting; the message names the field and what it accepts."""


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = QUOTED, QUOTED, 2, 4, 4


def shown(value: Any) -> str:
    """``value`` for a message: its ``repr``, at most about ``QUOTED`` characters (a 400-digit integer, a
    100,000-character string or a deep list from an API request are not repeated whole), ASCII-safe where
    ``repr`` escapes (lone surrogates, control characters)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named by its type
        return f"a {type(value).__name__}"
    return text if len(text) <= QUOTED + 10 else text[:QUOTED] + "..."


@dataclass(frozen=True)
class Field:
    name: str  # attribute, API dict key
    label: str  # UI label, API script-info label
    kind: type  # bool, float or str (a choice when ``choices``, else free text read by ``parse``)
    default: Any
    infotext: str  # infotext (PNG info) key
    hint: str  # tooltip
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    parse: Any = None  # free text: text -> canonical text, raises ValueError with what is wrong

    @property
    def free_text(self) -> bool:
        return self.kind is str and not self.choices

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.free_text:
            return "text"
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return f"a number from {self.minimum:g} to {self.maximum:g}"

    def check(self, value: Any) -> Any:
        """Return ``value`` in this field's type, or raise ``SettingsError`` naming the field."""
        bad = SettingsError(f"S-CFG setting '{self.name}' must be {self.describe()}, got {shown(value)}")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.free_text:
            if not isinstance(value, str):
                raise bad
            try:
                return self.parse(value) if self.parse else value
            except ValueError as e:
                raise SettingsError(f"S-CFG setting '{self.name}': {e}") from None
        if self.kind is str:
            if not isinstance(value, str) or value not in self.choices:
                raise bad
            return value
        # numbers: int or float, never bool (a JSON true is not a rate), finite and in range; the range is checked
        # before float(), which overflows on a huge integer (Python compares int and float exactly)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if isinstance(value, float) and not math.isfinite(value) or not self.minimum <= value <= self.maximum:
            raise bad
        return float(value)

    def from_text(self, text: str) -> Any:
        """Parse an infotext / X/Y/Z string value."""
        text = str(text).strip()
        if self.kind is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise SettingsError(f"S-CFG setting '{self.name}' must be {self.describe()}, got {shown(text)}")
        if self.kind is str:
            return self.check(text)
        try:
            number = float(text)
        except ValueError:
            raise SettingsError(f"S-CFG setting '{self.name}' must be {self.describe()}, got {shown(text)}") from None
        return self.check(number)

    def to_text(self, value: Any) -> str:
        """Infotext form. Free text may hold commas and colons: the WebUI quotes such values in the infotext
        (``infotext_utils.quote``) and unquotes them on paste; every other value has none."""
        if self.kind is float:  # the shortest text that reads back to the same float ("3", "0.8", "1.015625")
            return repr(float(value)).removesuffix(".0")
        return str(value)


def _canonical_weights(text: str) -> str:
    try:
        return format_weights(parse_weights(text))
    except WeightsError as e:
        raise ValueError(str(e).removeprefix("S-CFG word weights: ")) from None


FIELDS: tuple[Field, ...] = (
    Field("enabled", "S-CFG", bool, False, "S-CFG",
          "Semantic-aware CFG: give every semantic region of the image its own guidance scale."),
    Field("min_rate", "Min rate", float, 0.8, "S-CFG min rate",
          "Lowest per-region multiplier of the CFG scale (official: 0.8).", 0.0, 5.0, 0.05),
    Field("max_rate", "Max rate", float, 3.0, "S-CFG max rate",
          "Highest per-region multiplier of the CFG scale (official: 3.0).", 0.0, 10.0, 0.05),
    Field("max_scale", "Max effective scale", float, 15.0, "S-CFG max scale",
          "Cap on CFG scale x rate anywhere in the image (official: 15).", 1.0, 50.0, 0.5),
    Field("refine", "Self-attention refinement", str, "official", "S-CFG refine",
          "How self-attention completes the token map: official code (S+3S²)/4, "
          "paper (mean of S¹..S⁴) or none.", choices=REFINE_MODES),
    Field("foreground", "Foreground from", str, "cond", "S-CFG foreground",
          "Which prompt's attention defines the benchmark foreground: the positive prompt (cond) or, "
          "as the official code does, the negative prompt (uncond).", choices=FOREGROUND_SOURCES),
    Field("start", "Start at", float, 0.0, "S-CFG start",
          "Fraction of the sampling schedule where S-CFG starts (earlier steps use plain CFG).", 0.0, 1.0, 0.01),
    Field("end", "End at", float, 1.0, "S-CFG end",
          "Fraction of the sampling schedule where S-CFG ends (later steps use plain CFG).", 0.0, 1.0, 0.01),
    Field("hires", "Apply on hires. fix pass", bool, True, "S-CFG hires",
          "Also use S-CFG on the hires. fix second pass."),
    Field("word_weights", "Word weights", str, "", "S-CFG word weights",
          "Multiply the guidance of words of the prompt, e.g. 'horse: 1.3, sky: 0.7, red shirt: 1.2' "
          "(0 = plain CFG there).", parse=_canonical_weights),
    Field("show_maps", "Show S-CFG maps", bool, False, "S-CFG maps",
          "Add a picture per image to the gallery: the token regions over the image and the rate map."),
    Field("maps_step", "Maps at", str, "middle", "S-CFG maps at",
          "Which step the maps show: the middle, first or last step S-CFG guided, or the average over them.",
          choices=MAPS_STEPS),
)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


class _Settings:
    """Validated S-CFG settings, one attribute per ``FIELDS`` entry with its default; construction raises
    ``SettingsError`` on any bad value."""

    def __post_init__(self) -> None:
        for f in FIELDS:
            object.__setattr__(self, f.name, f.check(getattr(self, f.name)))
        if self.min_rate > self.max_rate:
            raise SettingsError(
                f"S-CFG setting 'min_rate' ({self.min_rate:g}) must not exceed 'max_rate' ({self.max_rate:g})"
            )
        if self.start >= self.end:
            raise SettingsError(
                f"S-CFG setting 'start' ({self.start:g}) must be less than 'end' ({self.end:g})"
            )

    def active_at(self, progress: float) -> bool:
        """Whether S-CFG runs at ``progress`` = step / total steps, in [0, 1)."""
        return self.enabled and self.start <= progress < self.end

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in FIELDS}

    def as_list(self) -> list[Any]:
        return [getattr(self, f.name) for f in FIELDS]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        unknown = [k for k in values if k not in FIELD_BY_NAME]
        if unknown:
            raise SettingsError(
                f"unknown S-CFG setting {shown(unknown[0])}; known settings: {', '.join(FIELD_BY_NAME)}"
            )
        return cls(**dict(values))

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> Settings:
        """From script args: the positional list in ``FIELDS`` order (a short list keeps the defaults for
        the rest), or a dict of named settings as the first element. The WebUI API fills the slots after a
        dict with the UI defaults, so those are ignored: the dict alone says what differs from the defaults."""
        args = list(args)
        if args and isinstance(args[0], Mapping):
            return cls.from_mapping(args[0])
        if len(args) > len(FIELDS):
            raise SettingsError(f"S-CFG takes at most {len(FIELDS)} positional args, got {len(args)}")
        return cls(**{f.name: v for f, v in zip(FIELDS, args, strict=False)})


Settings = dataclasses.make_dataclass(
    "Settings", [(f.name, f.kind, dataclasses.field(default=f.default)) for f in FIELDS],
    bases=(_Settings,), frozen=True,
)
Settings.__module__, Settings.__doc__ = __name__, _Settings.__doc__
