"""Every TrainConfig field is described once, in its own metadata, and docs/config.md and
`train/teacher/compare --help` are generated from that (ciard_fast/config.py)."""
import dataclasses
import os
import subprocess
import sys

import pytest

from ciard_fast.config import (FIELD_GROUPS, GROUP_TITLES, TrainConfig, config_help, config_markdown, field_docs)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "config.md")


@pytest.mark.parametrize("field", dataclasses.fields(TrainConfig), ids=lambda f: f.name)
def test_every_field_has_a_group_and_a_one_line_description(field):
    assert field.metadata.get("group") in FIELD_GROUPS, (field.name, field.metadata.get("group"))
    text = field.metadata.get("help")
    assert isinstance(text, str) and len(text.split()) >= 3 and "\n" not in text, field.name


def test_a_field_without_a_description_is_shown_as_such_so_that_the_test_above_names_it():
    @dataclasses.dataclass
    class Extended(TrainConfig):
        surprise: int = 3  # a field added without metadata

    import ciard_fast.config as config

    original = config.TrainConfig
    config.TrainConfig = Extended
    try:
        rows = {row[1]: row for row in field_docs()}
    finally:
        config.TrainConfig = original
    assert rows["surprise"][0] == "other" and rows["surprise"][4] == "(no description)"


def test_docs_config_md_is_the_generated_text():
    with open(DOC, encoding="utf-8") as f:
        committed = f.read()
    assert committed == config_markdown(), ("docs/config.md is out of date: run "
                                            "`python -m ciard_fast.config --markdown > docs/config.md`")


def test_the_generator_command_prints_the_same_text():
    result = subprocess.run([sys.executable, "-m", "ciard_fast.config", "--markdown"], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout == config_markdown()


def test_every_field_is_in_the_docs_and_the_help_under_its_group():
    markdown, help_text = config_markdown(), config_help()
    for group, name, kind, default, meaning in field_docs():
        row = next(line for line in markdown.splitlines() if line.startswith(f"| `{name}` |"))
        section = markdown[:markdown.index(row)].rsplit("## ", 1)[1].splitlines()[0]
        assert section == GROUP_TITLES[group], name
        assert f"`{default}`" in row
        assert f"    --{name} {kind} (default {default})" in help_text, name


@pytest.mark.parametrize("name,default", [("eps", "8/255"), ("alpha", "2/255"), ("test_attacks",
                                          "clean,fgsm,pgd_sat,pgd_trades,cw"), ("val_size", "none"),
                                          ("flip", "true"), ("method_args", "{}"), ("weight_decay", "0.0002"),
                                          ("robust_teacher_normalize", "auto")])
def test_defaults_are_shown_as_the_command_line_writes_them(name, default):
    assert {row[1]: row[3] for row in field_docs()}[name] == default
