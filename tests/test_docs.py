"""Every reference to a documentation page resolves.

A path under docs/ (or README.md, BENCHMARKS.md) cited in the code, configs, benchmarks, launchers and tests, or in
README.md, BENCHMARKS.md and docs/**/*.md, names a file that exists; a `#anchor` after a Markdown page names one of
its headings under GitHub's slug rules (lowercase, spaces -> '-', punctuation other than '-' and '_' dropped, a
repeated heading numbered -1, -2, ...), and a section cited by its title after the page and a comma (as in
`BENCHMARKS.md, "Context parallelism"`) is the start of one of its headings. Relative Markdown links between the
pages ([text](cli.md#llada-train), [text](#summary)) are checked the same way, from the page's own folder.
"""
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("llada_jax", "configs", "benchmarks", "launch", "tests")
CODE_SUFFIXES = {".py", ".sh", ".sbatch"}

# A repository path to a page or a file of evidence, and an optional anchor; not the tail of a longer path.
REFERENCE = re.compile(r"(?<![\w/.-])((?:docs/[\w./-]*?|README|BENCHMARKS)\.(?:md|png|txt))(#[\w-]+)?")
# A section cited by its title: (BENCHMARKS.md, "Context parallelism"); the title may wrap onto a comment's next line.
NAMED = re.compile(r"(?<![\w/.-])((?:docs/[\w./-]*?|README|BENCHMARKS)\.md), \"([^\"]+)\"")
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a Markdown link's target
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def headings_of(text):
    """A Markdown page's headings (their text), outside fenced code."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            out.append(m.group(1))
    return out


def anchors_of(text):
    """The anchors of a Markdown page: its headings' slugs and explicit <a name/id>."""
    out, seen = set(), {}
    for heading in headings_of(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return out


@cache
def anchors(path):
    return anchors_of(path.read_text())


@cache
def plain_headings(path):
    return [re.sub(r"[`*]", "", h).lower() for h in headings_of(path.read_text())]


def check(target, anchor):
    """What is wrong with a reference to `target` (a path) and `anchor` (without '#', or None): a reason, or None."""
    if not target.exists():
        return "no such file"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"no heading with the anchor #{anchor} in {target.relative_to(ROOT)}"
    return None


def problems(text, path):
    """The broken references of one file's text (`path`: where it is, absolute); a Markdown page's relative links are
    checked from its own folder, a link to `#anchor` against its own headings."""
    out, where, markdown = [], path.relative_to(ROOT), path.suffix == ".md"
    for m in NAMED.finditer(text):
        title = re.sub(r"\s*\n\s*#?\s*", " ", m.group(2)).lower()
        target = ROOT / m.group(1)
        if not target.exists() or not any(h.startswith(title) for h in plain_headings(target)):
            lineno = text.count("\n", 0, m.start()) + 1
            out.append(f"{where}:{lineno}: {m.group(1)}, \"{m.group(2)}\": no heading that starts so")
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in REFERENCE.finditer(line):
            reason = check(ROOT / m.group(1), m.group(2) and m.group(2)[1:])
            if reason:
                out.append(f"{where}:{lineno}: {m.group(0)}: {reason}")
        for m in LINK.finditer(line) if markdown else ():
            target, _, anchor = m.group(1).partition("#")
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            if target:
                reason = check((path.parent / target).resolve(), anchor or None)
            else:
                reason = None if anchor in anchors_of(text) else f"no heading with the anchor #{anchor} here"
            if reason:
                out.append(f"{where}:{lineno}: ({m.group(1)}): {reason}")
    return out


def sources():
    """Every file whose references are checked: the top-level pages, docs/ and the code's folders."""
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for d in CODE_DIRS:
        files += sorted(p for p in (ROOT / d).rglob("*") if p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts)
    return [p for p in files if p != Path(__file__).resolve()]  # this file's examples below are broken on purpose


def test_every_documentation_reference_resolves():
    found, broken = 0, []
    for path in sources():
        text = path.read_text()
        found += len(REFERENCE.findall(text))
        broken += problems(text, path)
    assert found > 50, found  # the scan sees the references (171 when this test was written)
    assert not broken, "\n".join(broken)


def test_the_slugs_are_githubs():
    assert slug("Weights & Biases") == "weights--biases"
    assert slug("On several processes (hosts)") == "on-several-processes-hosts"
    assert slug("`llada train`") == "llada-train"
    assert slug("d1: per-token log-probabilities (`prompt_noise`, `mean_field_logprobs`)") == \
        "d1-per-token-log-probabilities-prompt_noise-mean_field_logprobs"
    assert anchors_of("# A\n## Runs\n```bash\n# not a heading\n```\n## Runs\n") == {"a", "runs", "runs-1"}


def test_a_broken_reference_is_found():
    """The check can fail: a missing page, a missing anchor, a broken relative link (in code and in a page)."""
    code = ("# docs/architecture.md#token-shift\n# docs/no_such_page.md\n# docs/adaptation.md#the-token-shift\n"
            "# docs/adaptation.md\n")
    assert [p.split(": ", 1)[0] for p in problems(code, ROOT / "x.py")] == ["x.py:1", "x.py:2"]
    page = ("## Here\n[a](sampling.md#no-such-section) [b](sampling.md#remasking) [c](#nowhere) [d](#here) "
            "[e](missing.md) [f](../README.md) [g](https://example.com/#x)\n")
    assert [p.split(": ", 2)[1] for p in problems(page, ROOT / "docs" / "x.md")] == [
        "(sampling.md#no-such-section)", "(#nowhere)", "(missing.md)"]
    named = 'x = 1  # (docs/sampling.md, "Remasking"; BENCHMARKS.md, "No such\n# section")\n'
    assert [p.split(": ", 1)[0] for p in problems(named, ROOT / "x.py")] == ["x.py:1"]
