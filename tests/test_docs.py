"""The docs stand alone: every relative link resolves inside the repository, no page cites files that
are not in it, and the configuration reference is the one config.yaml generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.compose.config_doc import render

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # web links and anchors within the page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_cites_files_outside_the_repository(page):
    text = page.read_text()
    assert "../shared" not in text and "DESIGN.md" not in text


def test_the_configuration_reference_is_generated_from_config_yaml():
    expected = render((ROOT / "config.yaml").read_text())
    assert (ROOT / "docs" / "configuration.md").read_text() == expected, (
        "docs/configuration.md is out of date: python -m app.compose.config_doc > docs/configuration.md"
    )


def test_every_config_key_is_in_the_reference():
    from dataclasses import fields, is_dataclass
    from typing import get_type_hints

    from app.compose.config import AppConfig

    text = (ROOT / "docs" / "configuration.md").read_text()

    def keys(cls, prefix):
        hints = get_type_hints(cls)
        for f in fields(cls):
            name = f"{prefix}.{f.name}" if prefix else f.name
            yield name
            if is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], name)

    every = list(keys(AppConfig, ""))
    assert "train.data.privileged" in every and "policy.server.port" in every  # the walk reaches the leaves
    missing = [k for k in every if "." in k and f"`{k}`" not in text]
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"
