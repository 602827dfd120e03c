"""The README's commands stay true: every `mlaas4hep …` line parses with the real command
line, every `make` target exists, every script and Ray job it names exists and answers
``--help``. (What they do is exercised by ``make demo`` and the integration tests.)"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mlaas4hep.cli import build_parser

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


def _cli_words(line: str) -> list[str]:
    """The words of a README ``mlaas4hep …`` line as a shell would pass them, its placeholders
    filled in: ``[--option value]`` (an optional part) is kept without the brackets, ``<name>``
    becomes ``name`` and an elided ``…`` a made-up value, so every option still gets parsed."""
    line = re.sub(r"\[(-[^\]]*)\]", r"\1", line)
    line = re.sub(r"<([\w.-]+)>", r"\1", line)
    return [w.replace("…", "0a1b2c") for w in _words(line)]


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    names = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _option_strings(sub)
    return names


def _parse(words: list[str]) -> argparse.Namespace:
    """``mlaas4hep`` parses ``words`` (the command's name first) exactly as written, or the test
    fails with argparse's message: an unknown, renamed or misspelt option, a missing argument,
    a bad choice. Options are not abbreviated: ``--work`` for ``--workers`` fails too."""
    parser = build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(words[1:])
    except SystemExit as exit_info:
        pytest.fail(f"{shlex.join(words)}: exit {exit_info.code}: {errors.getvalue().strip()}")
    known = _option_strings(parser)
    for word in words[1:]:
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in known:
            pytest.fail(f"{shlex.join(words)}: no option {option}, only an abbreviation of one")
    return args


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("mlaas4hep ")])
def test_cli_lines_parse(line: str) -> None:
    words = _cli_words(line)
    assert _parse(words).command == words[1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("mlaas4hep specs data/tth/ --no-such-flag", "unrecognized arguments: --no-such-flag"),
        ("mlaas4hep specs data/tth/ --work 2", "no option --work, only an abbreviation"),
        ("mlaas4hep stream data/tth/ --padding p99", "the following arguments are required"),
        ("mlaas4hep stream data/tth/ --spec s.json --split dev", "invalid choice: 'dev'"),
        ("mlaas4hep jobs list [--datasets tth]", "unrecognized arguments: --datasets"),
        ("mlaas4hep stats data/tth/", "invalid choice: 'stats'"),
    ],
)
def test_cli_check_rejects_what_the_cli_rejects(line: str, message: str) -> None:
    """The check above is not vacuous: a made-up or misspelt flag, a missing required option
    or a bad choice in a README line fails it, with argparse's own words."""
    with pytest.raises(pytest.fail.Exception, match=re.escape(message)):
        _parse(_cli_words(line))


def test_cli_placeholders_are_filled_in() -> None:
    words = _cli_words("mlaas4hep jobs logs mlaas4hep-retrain-tth-… [--address http://h:8265]")
    job = "mlaas4hep-retrain-tth-0a1b2c"
    assert words == ["mlaas4hep", "jobs", "logs", job, "--address", "http://h:8265"]
    assert _parse(words).job == job


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
