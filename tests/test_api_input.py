"""S-CFG's input never makes the API answer HTTP 500 (docs/api.md): bad values of every kind through the WebUI's
real-mirroring ``api_middleware`` (tests/stand_in/modules/api/api.py) answer 422 naming the field, with a short
message that encodes as UTF-8; and a property test of the validator and the word-weights parser: what docs/api.md
calls valid is accepted and round-trips through the infotext, anything else is a ``SettingsError`` naming the
field."""

from __future__ import annotations

import json
import math
import types
import unicodedata

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from webui_harness import build_runner, load_webui, script_args, script_args_app, sd_model

from scfg_ext.settings import FIELD_BY_NAME, FIELDS, Settings, SettingsError
from scfg_ext.webui import api as scfg_api
from scfg_ext.webui import infotext
from scfg_ext.weights import MAX_CHARACTERS, MAX_ENTRIES, WeightsError, format_weights, parse_weights

NUMBERS = [f.name for f in FIELDS if f.kind is float]
BOOLEANS = [f.name for f in FIELDS if f.kind is bool]
CHOICES = [f.name for f in FIELDS if f.choices]
HUGE = 10**400 - 1  # a JSON integer of 400 digits
LONG = "x" * 100_000
MAX_DETAIL = 400  # characters of a 422's detail: the field, what it accepts, at most ~60 of the bad value


@pytest.fixture(scope="module")
def webui():
    ns = load_webui()
    ns.txt2img = build_runner(ns)
    ns.img2img = build_runner(ns, is_img2img=True)
    return ns


@pytest.fixture(scope="module")
def client(webui):
    """A FastAPI app with the WebUI's ``api_middleware`` (``Api(app)``), a route running the script-args part of
    ``/sdapi/v1/txt2img`` (``init_script_args``, with our validator installed by ``on_app_started``)."""
    import modules.api.api as api_module
    from fastapi.testclient import TestClient

    original = api_module.Api.init_script_args
    app, _ = script_args_app(webui, api_module, encode=lambda args: [repr(a) for a in args])
    webui.script_callbacks.app_started_callback(None, app)
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            yield c
    finally:
        webui.script_callbacks.script_unloaded_callback()
        assert api_module.Api.init_script_args is original


def named(name, value):
    return {"S-CFG": {"args": [{name: value}]}}


def positional(name, value):
    index = [f.name for f in FIELDS].index(name)
    return {"S-CFG": {"args": [f.default for f in FIELDS[:index]] + [value]}}


# (case, alwayson_scripts, the field the 422 names)
BAD = [
    *[(f"{form.__name__} {name}={label}", form(name, value), name)
      for name in NUMBERS
      for label, value in [("400 digits", HUGE), ("-400 digits", -HUGE), ("true", True), ("'1'", "1"),
                           ("null", None), ("[]", []), ("{}", {})]
      for form in (named, positional) if form is named or label == "400 digits"],
    *[(f"{name}={label}", named(name, value), name)
      for name in BOOLEANS for label, value in [("1", 1), ("'true'", "true"), ("400 digits", HUGE), ("null", None)]],
    *[(f"{name}={label}", named(name, value), name)
      for name in CHOICES for label, value in [("100,000 characters", LONG), ("lone surrogate", "\ud800"), ("1", 1)]],
    *[(f"word_weights={label}", named("word_weights", value), "word_weights") for label, value in [
        ("lone surrogate, no colon", "\ud800 1"), ("lone surrogate word", "\ud800: 1"), ("NUL", "a\x00b: 1"),
        ("DEL", "a\x7f: 1"), ("C1 control", "a\x85: 1"), ("ESC", "\x1b[31mred: 1"),
        ("full-width digit", "a: \uff11"), ("Arabic-Indic digit", "a: \u0663"), ("a::1", "a::1"),
        ("a:b: 1", "a:b: 1"), ("100,000 characters", LONG),
        ("10,000 entries", ", ".join(f"w{i}: 1" for i in range(10_000))),
        (f"{MAX_ENTRIES + 1} entries", ", ".join(f"w{i}: 1" for i in range(MAX_ENTRIES + 1))),
        ("a number", 1.5), ("null", None), ("a list", ["a: 1"]),
    ]],
    ("unknown key, lone surrogate", {"S-CFG": {"args": [{"\ud800": 1}]}}, None),
    ("unknown key, 100,000 characters", {"S-CFG": {"args": [{LONG: 1}]}}, None),
    ("a later spelling, bad", {"S-CFG": {"args": [{"enabled": True}]}, "s-cfg": {"args": [{"max_rate": 99}]}},
     "max_rate"),
    ("an earlier spelling, bad", {"s-CFG": {"args": [{"max_rate": 99}]}, "S-CFG": {"args": [{"enabled": True}]}},
     "max_rate"),
    ("spellings valid alone, not together", {"S-CFG": {"args": [True, 0.5, 2.0]}, "s-cfg": {"args": [True, 3.0]}},
     "min_rate"),
    ("args null", {"S-CFG": {"args": None}}, None),
    ("args a number", {"S-CFG": {"args": 5}}, None),
    ("entry a list", {"S-CFG": [True]}, None),
]


@pytest.mark.parametrize("alwayson, field", [pytest.param(a, f, id=case) for case, a, f in BAD])
def test_bad_input_is_a_short_422_naming_the_field(webui, client, alwayson, field):
    errors = __import__("modules.errors", fromlist=["x"])
    errors.reports.clear()
    body = json.dumps({"alwayson_scripts": alwayson})  # ensure_ascii: a lone surrogate travels as \ud800
    response = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text[:300]
    detail = json.loads(response.content.decode("utf-8"))["detail"]
    assert detail.startswith("S-CFG") or "S-CFG" in detail
    if field is not None:
        assert f"'{field}'" in detail
    assert len(detail) <= MAX_DETAIL, detail
    assert detail.encode("utf-8")
    assert not errors.reports  # the middleware's 500 path reports; a 422 does not


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_numbers_are_422(client, name, token):
    """Python's JSON reader (FastAPI's) takes ``NaN`` and ``Infinity``, which strict JSON has not."""
    body = '{"alwayson_scripts": {"S-CFG": {"args": [{"NAME": TOKEN}]}}}'.replace("NAME", name).replace("TOKEN", token)
    response = client.post("/sdapi/v1/txt2img", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and f"'{name}'" in response.json()["detail"]


GOOD = [  # accepted, as docs/api.md says
    ("an integer for a number", named("max_rate", 2), Settings(max_rate=2.0)),
    ("an integer at the top of the range", named("max_scale", 50), Settings(max_scale=50.0)),
    ("tabs and new lines in word weights", named("word_weights", "horse:\t1.5\nsky: 0"),
     Settings(word_weights="horse: 1.5, sky: 0")),
    ("full-width letters and an emoji in a word", named("word_weights", "ｈｏｒｓｅ 🐎: 2"),
     Settings(word_weights="ｈｏｒｓｅ 🐎: 2")),
    ("emphasis keeps its colon", named("word_weights", "(red shirt:1.2): 0"), Settings(word_weights="red shirt: 0")),
    (f"{MAX_ENTRIES} entries", named("word_weights", ", ".join(f"w{i}: 1" for i in range(MAX_ENTRIES))), None),
    ("two spellings, the later wins", {"S-CFG": {"args": [True, 0.5, 2.0]}, "s-cfg": {"args": [True, 1.0]}},
     Settings(enabled=True, min_rate=1.0, max_rate=2.0)),
]


@pytest.mark.parametrize("alwayson, expected", [pytest.param(a, s, id=case) for case, a, s in GOOD])
def test_documented_valid_input_is_accepted(webui, client, alwayson, expected):
    response = client.post("/sdapi/v1/txt2img", json={"alwayson_scripts": alwayson})
    assert response.status_code == 200, response.text
    request = types.SimpleNamespace(alwayson_scripts=alwayson)
    settings = scfg_api.validate_request(request)
    if expected is not None:
        assert settings == expected


def test_script_args_with_a_huge_integer_give_a_notice(webui, small_unet):
    """Not through the API (a script calling ``process_images``): the same value turns S-CFG off with a notice
    naming the field, instead of an exception in ``process()`` that left S-CFG silently off."""
    runner = webui.txt2img
    webui.shared.sd_model = sd_model(small_unet)
    p = webui.processing.StableDiffusionProcessingTxt2Img(prompt="a cat", sampler_name="Euler", steps=20)
    p.scripts = runner
    p.script_args = script_args(runner, enabled=True, max_rate=HUGE)
    runner.process(p)
    notice = p.extra_generation_params[infotext.NOTICE_KEY]
    assert "'max_rate'" in notice and "S-CFG is off for this generation" in notice and len(notice) < MAX_DETAIL
    assert p.scfg_settings is None


# -- property ---------------------------------------------------------------------------------------------------

SPECIAL = "\ud800\udfff\x00\x07\x1b\x7f\x85\t\n\r :,()[]\"\\１٣é🐎"
json_leaf = (st.none() | st.booleans() | st.integers() | st.integers(-(10**500), 10**500) | st.floats()
             | st.text(st.characters(exclude_categories=()) | st.sampled_from(SPECIAL), max_size=8))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=4)
weight_text = st.one_of(
    st.text(st.characters(exclude_categories=()) | st.sampled_from(SPECIAL), max_size=40),
    st.lists(st.tuples(st.text(st.sampled_from("ab xy()[]:1é１\x00\ud800"), max_size=6),
                       st.one_of(st.floats(-1, 12).map(repr), st.sampled_from(["1", "0", "1e-2", "１", "nan", ""]))),
             max_size=4).map(lambda entries: ", ".join(f"{p}: {w}" for p, w in entries)),
    st.lists(st.tuples(st.text(st.sampled_from("abcxyz ()éｈ🐎-"), min_size=1, max_size=8), st.floats(0, 10)),
             max_size=5).map(lambda entries: "\n".join(f"{p}:{w!r}" for p, w in entries)),
)


def valid_value(name: str):
    f = FIELD_BY_NAME[name]
    if f.kind is bool:
        return st.booleans()
    if f.choices:
        return st.sampled_from(f.choices)
    if f.free_text:
        return weight_text
    return st.floats(f.minimum, f.maximum) | st.integers(math.ceil(f.minimum), math.floor(f.maximum))


def field_value(name: str):
    return st.one_of(valid_value(name), json_value)


def documented_error(name: str, value) -> bool:
    """Whether docs/api.md calls ``value`` bad for ``name`` (word weights: per the parser, whose own rules are
    checked in ``test_word_weights_parser_property``)."""
    f = FIELD_BY_NAME[name]
    if f.kind is bool:
        return not isinstance(value, bool)
    if f.choices:
        return not (isinstance(value, str) and value in f.choices)
    if f.free_text:
        if not isinstance(value, str):
            return True
        try:
            parse_weights(value)
        except WeightsError:
            return True
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    return not f.minimum <= value <= f.maximum


requests = st.one_of(
    st.fixed_dictionaries({}, optional={f.name: field_value(f.name) for f in FIELDS}).map(lambda d: [d]),
    st.integers(0, len(FIELDS)).flatmap(lambda n: st.tuples(*[field_value(f.name) for f in FIELDS[:n]]).map(list)),
)


def infotext_round_trip(settings: Settings) -> Settings:
    """``settings`` written to an infotext line as ``processing.create_infotext`` joins it (``quote`` each
    value) and read back as a paste does (``parse_generation_parameters``, then our reader)."""
    import modules.infotext_utils as infotext_utils

    params = {"Steps": 20, "Sampler": "Euler", **infotext.write(settings)}
    line = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in params.items())
    text = f"a cat\n{line}"
    text.encode("utf-8")  # PNG info and the API's JSON carry it
    return infotext.read(infotext_utils.parse_generation_parameters(text))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=requests)
def test_api_validator_property(webui, args):
    values = args[0] if args and isinstance(args[0], dict) else {f.name: v for f, v in zip(FIELDS, args, strict=False)}
    bad = [name for name in [f.name for f in FIELDS] if name in values and documented_error(name, values[name])]
    request = types.SimpleNamespace(alwayson_scripts={"S-CFG": {"args": args}})
    unknown = [key for key in values if key not in FIELD_BY_NAME]
    if unknown:
        with pytest.raises(SettingsError, match="unknown S-CFG setting") as e:
            scfg_api.validate_request(request)
        assert str(e.value).encode("utf-8") and len(str(e.value)) <= MAX_DETAIL
        return
    if not bad:
        full = {**Settings().as_dict(), **values}
        if full["min_rate"] > full["max_rate"]:
            bad = ["min_rate"]
        elif full["start"] >= full["end"]:
            bad = ["start"]
    event("refused" if bad else "accepted")
    if bad:
        with pytest.raises(SettingsError) as e:
            scfg_api.validate_request(request)
        message = str(e.value)
        assert f"'{bad[0]}'" in message, (bad, message)
        assert message.encode("utf-8") and len(message) <= MAX_DETAIL
        return
    settings = scfg_api.validate_request(request)
    for name, value in values.items():
        expected = format_weights(parse_weights(value)) if name == "word_weights" else value
        assert getattr(settings, name) == expected
    assert infotext_round_trip(settings.replace(enabled=True)) == settings.replace(enabled=True)


@settings(max_examples=300, deadline=None)
@given(text=weight_text)
def test_word_weights_parser_property(text):
    """Text docs/api.md calls bad is refused naming the field in a UTF-8 message; accepted text comes back the
    same from its canonical form, which holds only what the infotext can carry."""
    field = FIELD_BY_NAME["word_weights"]
    must_fail = len(text) > MAX_CHARACTERS or any(
        unicodedata.category(c) == "Cs" or (unicodedata.category(c) == "Cc" and c not in "\t\n\r") for c in text)
    try:
        canonical = field.check(text)
    except SettingsError as e:
        event("refused")
        message = str(e)
        assert "'word_weights'" in message and message.encode("utf-8") and len(message) <= MAX_DETAIL
        return
    event("accepted")
    assert not must_fail
    entries = parse_weights(text)
    assert len(entries) <= MAX_ENTRIES and parse_weights(canonical) == entries and field.check(canonical) == canonical
    assert all(":" not in e.phrase and e.phrase.isprintable() and 0 <= e.weight <= 10 for e in entries)
    canonical.encode("utf-8")


def test_docs_api_md_states_what_the_code_accepts():
    """docs/api.md's settings table and word-weight limits are the code's."""
    from webui_harness import ROOT

    from scfg_ext.weights import MAX_WEIGHT

    doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for i, f in enumerate(FIELDS):
        row = next(line for line in doc.splitlines() if line.startswith(f"| {i} | `{f.name}` |"))
        if f.kind is bool:
            expected = f"| boolean | `{str(f.default).lower()}` | `true`, `false` |"
        elif f.choices:
            expected = f'| choice | `"{f.default}"` | ' + ", ".join(f'`"{c}"`' for c in f.choices) + " |"
        elif f.free_text:
            expected = f'| text | `"{f.default}"` |'
        else:
            expected = f"| number | `{f.default!r}` | {f.minimum:g} – {f.maximum:g} | {f.step:g} |"
        assert expected in row, row
    assert f"at most **{MAX_CHARACTERS} characters** and **{MAX_ENTRIES} entries**" in doc
    assert f"finite, from 0 to {MAX_WEIGHT:g}" in doc
