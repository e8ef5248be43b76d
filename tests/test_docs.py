"""The documentation: a README that fits on a screen, no dead relative link, a fresh params reference."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import networkx
import pytest
from markdown_it import MarkdownIt

from tests.paths import ROOT, load_script

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300


def load_params_reference():
    """tools/params_reference.py as a module (tools/ is not a package)."""
    return load_script("tools/params_reference.py")


def link_targets(markdown: str) -> list[str]:
    """Every link and image target of a Markdown text (code spans and blocks excluded)."""
    targets = []
    for block in MarkdownIt("commonmark").parse(markdown):
        for token in block.children or []:
            if token.type == "link_open":
                targets.append(token.attrGet("href"))
            elif token.type == "image":
                targets.append(token.attrGet("src"))
    return targets


def dead_relative_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file does not exist (anchors are not checked)."""
    dead = []
    for target in link_targets(page.read_text(encoding="utf-8")):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path:  # web links, same-page anchors
            continue
        if not (page.parent / unquote(parts.path)).exists():
            dead.append(target)
    return dead


def test_readme_fits_on_a_screen():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def test_link_parser_finds_links_and_images_but_not_code():
    text = "[a](docs/a.md#x) ![b](docs/b.png) `[c](c.md)`\n\n```\n[d](d.md)\n```\n"
    assert link_targets(text) == ["docs/a.md#x", "docs/b.png"]


def test_dead_link_is_reported(tmp_path):
    (tmp_path / "here.md").write_text("x\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](here.md#a) [web](https://example.org/x) [top](#a) [gone](gone.md)\n")
    assert dead_relative_links(page) == ["gone.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_point_at_existing_files(page):
    assert dead_relative_links(page) == []


def test_params_reference_is_up_to_date():
    expected = load_params_reference().render()
    current = (ROOT / "docs" / "params.md").read_text(encoding="utf-8")
    assert current == expected, "docs/params.md is stale: run python tools/params_reference.py"


def test_params_reference_documents_every_key_with_its_comment(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# intro\n\nalpha:   # the first section\n"
                      "  size: 3   # pixels [1, 9]\n"
                      "            # | or more\n"
                      "  name: \"\" # \"\" = none\n")
    text = load_params_reference().render(params)
    assert "intro" in text and "## alpha" in text and "the first section" in text
    assert "| `alpha.size` | `3` | pixels [1, 9] \\| or more |" in text
    assert '| `alpha.name` | `""` | "" = none |' in text


# --- promises of the README that no other test states ---------------------------------------

def commands_in_docs() -> set[str]:
    """The ``python -m pipeline COMMAND`` names used in README.md and docs/*.md."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    return set(re.findall(r"python -m pipeline ([a-z][a-z-]*)", text))


def test_every_command_the_docs_name_accepts_params_and_help(capsys):
    """README: every stage accepts `--params FILE`, `--help` and `--verbose`."""
    from pipeline.cli import main

    commands = commands_in_docs()
    assert {"sample", "convert", "train", "report", "predict", "check-params"} <= commands
    for command in sorted(commands):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0, f"python -m pipeline {command} --help failed"
        out = capsys.readouterr().out
        assert "--verbose" in out, f"{command} has no --verbose option"
        assert "--params" in out, f"{command} has no --params option"


def test_changing_train_num_steps_reruns_configure_train_export_report_only():
    """README: changing `train.num_steps` re-runs configure, train, export and report only."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        graph = repo.index.graph  # edges go from a stage to the stages it depends on
        direct = {stage for stage in repo.index.stages
                  if any({"train", "train.num_steps"} & set(dep.params) for dep in stage.params)}
        rerun = direct.union(*(networkx.ancestors(graph, stage) for stage in direct))
        assert {stage.addressing for stage in rerun} == {"configure", "train", "export", "report"}
