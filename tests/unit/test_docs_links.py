"""The manual stays navigable and complete: the README is short, every relative link in README.md, docs/ and
bench/README.md leads to a file (and heading) that exists, and every flag of every ``rerankd`` command is
documented somewhere under docs/.

Links are checked the way GitHub renders them: fenced code is not Markdown, and an anchor is a heading's
slug (lower-cased, punctuation dropped, spaces to hyphens, ``-1``/``-2`` for repeats) or an explicit
``<a id=…>``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from rerankd.cli import cli

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 300

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
FENCE = re.compile(r"^\s*(```|~~~)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, …


def manual_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]


def prose_lines(text: str) -> Iterator[str]:
    """The lines of a Markdown file outside fenced code blocks (a `# comment` in a bash block is no heading)."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def strip_inline_code(line: str) -> str:
    """Drop `code spans`, whose brackets and parentheses are not links."""
    return re.sub(r"`[^`]*`", "", line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps only its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(EXPLICIT_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> Iterator[str]:
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(strip_inline_code(line)):
            if not EXTERNAL.match(target):
                yield target


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def link_target(page: Path, target: str) -> tuple[Path, str]:
    """The file a link of ``page`` leads to, and its anchor ("" for none)."""
    file_part, _, anchor = target.partition("#")
    return ((page.parent / file_part).resolve() if file_part else page), anchor


def broken_links(page: Path) -> list[str]:
    """Each relative link of ``page`` whose file, or heading within it, does not exist."""
    broken = []
    for target in relative_links(page):
        linked, anchor = link_target(page, target)
        if not linked.exists():
            broken.append(f"{target}: no file {shown(linked)}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {shown(linked)}")
    return broken


def command_flags() -> dict[str, set[str]]:
    """Every long option of every ``rerankd`` command (subcommands included), by command path."""
    flags: dict[str, set[str]] = {}

    def walk(group: click.Group, ctx: click.Context, path: str) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, f"{path} {name}"
            full = f"{path} {name}"
            if isinstance(command, click.Group):
                walk(command, click.Context(command, parent=ctx, info_name=name), full)
                continue
            flags[full] = {
                opt
                for param in command.params
                if isinstance(param, click.Option)
                for opt in (*param.opts, *param.secondary_opts)
                if opt.startswith("--") and opt != "--help"
            }

    walk(cli, click.Context(cli, info_name="rerankd"), "rerankd")
    return flags


def undocumented(flags: set[str], text: str) -> set[str]:
    return {flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)}


def docs_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in sorted(DOCS.glob("*.md")))


def test_readme_is_a_short_manual() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move reference material to docs/"


@pytest.mark.parametrize("page", manual_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    assert broken_links(page) == [], f"broken links in {page.relative_to(ROOT)}"


def test_every_page_is_reachable_from_the_readme() -> None:
    """Following links from README.md reaches every page of docs/ and bench/README.md."""
    reached = {README.resolve()}
    todo = [README]
    while todo:
        page = todo.pop()
        for target in relative_links(page):
            linked, _ = link_target(page, target)
            if linked.suffix == ".md" and linked.exists() and linked not in reached:
                reached.add(linked)
                todo.append(linked)
    missing = [shown(p) for p in manual_pages() if p.resolve() not in reached]
    assert missing == [], f"no chain of links from README.md reaches {missing}"


def test_the_link_checker_catches_a_broken_file_and_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Two words\n\n[ok](#two-words) [file](page.md#title) [gone](missing.md) [bad](#nowhere)\n"
        "```bash\n# not a heading\n[not a link](missing-too.md)\n```\n`[code](nope.md)` [web](https://example.com)\n"
    )
    assert broken_links(page) == ["missing.md: no file missing.md", "#nowhere: no heading #nowhere in page.md"]
    assert "not-a-heading" not in anchors(page)


def test_slugs_follow_github() -> None:
    assert slug("The fused CPU forward (`--compile`)") == "the-fused-cpu-forward---compile"
    assert slug("`rerankd alert-relay`: DingTalk and WeCom group robots") == (
        "rerankd-alert-relay-dingtalk-and-wecom-group-robots"
    )
    assert slug("The vllm backend on vLLM's CPU build") == "the-vllm-backend-on-vllms-cpu-build"


@pytest.mark.parametrize("command", ["rerankd serve", "rerankd gateway"])
def test_serve_and_gateway_exist_with_flags(command: str) -> None:
    flags = command_flags()
    assert command in flags and len(flags[command]) > 10, sorted(flags)


def test_every_flag_is_documented_in_docs() -> None:
    text = docs_text()
    missing = {command: sorted(undocumented(flags, text)) for command, flags in command_flags().items()}
    missing = {command: flags for command, flags in missing.items() if flags}
    assert missing == {}, f"flags not mentioned anywhere in docs/*.md: {missing}"
