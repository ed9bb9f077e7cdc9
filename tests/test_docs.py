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


# ---------------------------------------------------------------- the README stays a user's page, docs/ holds the rest

DOCS = ROOT / "docs"
WRITTEN_ELSEWHERE = {"docs/api.md", "docs/verdict.md"}  # written on other branches; linked before they land


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in prose(text) if line.startswith("#")}


def test_readme_is_short_and_its_table_cells_are_short():
    assert len(README.splitlines()) <= 260
    cells = [cell for line in prose(README) if line.startswith("|") for cell in line.strip("|").split("|")]
    assert cells and max(len(cell.split()) for cell in cells) <= 25


def test_every_local_link_resolves():
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", "\n".join(prose(page.read_text()))):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            name = file.relative_to(ROOT).as_posix()
            if name in WRITTEN_ELSEWHERE and not file.exists():
                continue
            assert file.exists(), f"{page.name}: {target}"
            if anchor and file.suffix == ".md":
                assert anchor in anchors(file.read_text()), f"{page.name}: {target}"
            checked += 1
    assert checked >= 20


def test_every_doc_opens_with_a_title_and_a_three_line_summary():
    docs = sorted(DOCS.glob("*.md"))
    assert {"verification.md", "performance.md", "ground-truth.md", "diffusion-transformers.md"} <= {
        d.name for d in docs}
    for doc in docs:
        if f"docs/{doc.name}" in WRITTEN_ELSEWHERE:
            continue
        lines = doc.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "", doc.name
        assert all(line.startswith("> ") for line in lines[2:5]) and lines[5] == "", doc.name
