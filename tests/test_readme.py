"""The README's commands stay true: every `mlaas4hep …` line parses with the real command
line, every `make` target exists, every script and Ray job it names exists and answers
``--help``. (What they do is exercised by ``make demo`` and the integration tests.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mlaas4hep.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    lines, pending = [], ""
    for block in BLOCKS:
        for raw in block.splitlines():
            line = pending + raw.split("  #")[0].strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


COMMANDS = _commands()


def _words(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        words = words[1:]
    return words


def test_readme_opens_with_the_two_commands() -> None:
    assert COMMANDS[:2] == ["make demo", "make test"]


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("mlaas4hep ")])
def test_cli_lines_parse(line: str) -> None:
    words = [w for w in _words(line) if "…" not in w]
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([*words[1:], "--help"])  # parses everything before --help
    assert exit_info.value.code == 0


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("make ")])
def test_make_targets_exist(line: str) -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    for target in _words(line)[1:]:
        assert target in targets, f"README runs `make {target}`, which the Makefile lacks"


SCRIPTS = sorted(
    {
        word
        for line in COMMANDS
        for word in _words(line)
        if re.match(r"^(scripts|ray_jobs)/[\w/]+\.py$", word)
    }
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_answer_help(script: str) -> None:
    assert (ROOT / script).exists(), f"README names {script}, which does not exist"
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
