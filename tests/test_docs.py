"""The documentation's links: every relative link in a tracked Markdown file names a file that exists, and every
#anchor a heading of the file it points to, as GitHub renders them. Docs get split and sections renamed; a link
that silently lands at the top of the wrong page is what this catches."""
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); images too, their targets are files as well
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, every character that is not a letter, digit, space, hyphen or
    underscore dropped, spaces turned into hyphens (so "A, b: c (2026-12-02)" -> "a-b-c-2026-12-02")."""
    kept = "".join(c for c in heading.strip().lower()
                   if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            out.add(f"{s}-{seen[s]}" if s in seen else s)
            seen[s] = seen.get(s, 0) + 1
    return out


def markdown_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / f for f in listed.stdout.split()]


def test_slug_follows_github():
    assert slug("The soft modes weighted, a heavier prior: one epoch each (2026-12-02)") == \
        "the-soft-modes-weighted-a-heavier-prior-one-epoch-each-2026-12-02"
    assert slug("What the geometry costs: SMILES against DFT geometries") == \
        "what-the-geometry-costs-smiles-against-dft-geometries"
    assert slug("`--relax` and ΔE") == "--relax-and-δe"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path):
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(REPO)}")
    assert not broken, "\n".join(broken)
