"""README documents what the code does: every setting with its default and range, in API order, and the
commands CI runs."""

import re

from webui_harness import ROOT

from scfg_ext.settings import FIELDS

README = (ROOT / "README.md").read_text()


def test_settings_table_and_api_table_match_fields():
    for i, f in enumerate(FIELDS):
        row = next(line for line in README.splitlines() if f"(`{f.name}`)" in line)
        assert row.startswith(f"| {f.label} ") or (f.name == "enabled" and row.startswith("| S-CFG ")), row
        api_row = next(line for line in README.splitlines() if re.match(rf"\| {i} \| `{f.name}` \|", line))
        if f.kind is float:
            assert f"| {f.minimum:g} – {f.maximum:g} |" in row, row
            assert f"`{f.default}`" in api_row, api_row
        elif f.free_text:
            assert f"| {f.label} (`{f.name}`) | empty | text |" in row, row
            assert f'`"{f.default}"`' in api_row
        elif f.kind is str:
            assert f"`{f.default}`" in row and all(f"`{c}`" in row for c in f.choices), row
            assert f'`"{f.default}"`' in api_row


def test_xyz_axes_listed_in_order():
    from scfg_ext.webui.xyz import PREFIX

    labels = [PREFIX + ("Enabled" if f.name == "enabled" else f.label) for f in FIELDS]
    positions = [README.index(f"`{label}`") for label in labels]
    assert positions == sorted(positions)


def test_ci_runs_the_readme_test_command():
    command = re.search(r"- Tests: `([^`]+)`", README).group(1)
    assert command in (ROOT / ".ci" / "run").read_text()
    assert "python -m scfg_ext.demo" in README
