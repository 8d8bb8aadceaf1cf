"""The README stays a user's page that tells the truth: at most 20 KB, the two set-up commands
first (the test command being the one CI runs), every `codecloop` subcommand and flag it or a page
under docs/ names accepted by the real parser, and every relative link leading to a file."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from codecloop.launch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_BYTES = 20_000
# Programs that take a codecloop command line after them, and hand it on unchanged.
ENTRY_POINTS = ("codecloop", "codecloop.sbatch", "torchrun.sh")
# Flags of other programs that the pages name in prose, outside a command line: flag -> program.
OTHER_PROGRAMS_FLAGS = {
    "--machine_rank": "accelerate launch", "--main_process_ip": "accelerate launch",
    "--num_processes": "accelerate launch", "--signal": "sbatch", "--requeue": "sbatch", "--time": "sbatch",
    "--exclusive": "sbatch", "--cpu": "bench/gpu_check.sh", "--device": "python -m codecloop.dali_pipes.fidelity",
}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
FLAG = re.compile(r"--[a-z][a-z0-9_-]*")


def parser_options() -> tuple[set[str], dict[str, set[str]]]:
    """The top-level options, and each subcommand's, of the parser `codecloop` runs."""
    parser = build_parser()
    subcommands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    options = {name: {flag for action in sub._actions for flag in action.option_strings}
               for name, sub in subcommands.choices.items()}
    return {flag for action in parser._actions for flag in action.option_strings}, options


def code_of(text: str) -> tuple[list[str], list[str]]:
    """The command lines of the fenced blocks (continuations joined, comments dropped) and the inline
    code spans outside them (whitespace made single)."""
    commands = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]
            commands += [part for part in re.split(r"&&|\|\||;", line) if part.strip()]
    spans = [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text))]
    return commands, spans


def tokens_of(command: str) -> list[str]:
    """Shell words, or plain words where the text is not valid shell (an error message quoted)."""
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def unknown_names(text: str) -> list[str]:
    """Each `codecloop` subcommand or flag the text names that the parser does not have, and each flag
    quoted on its own that no subcommand takes."""
    top, options = parser_options()
    every_flag = set().union(*options.values()) | set(OTHER_PROGRAMS_FLAGS)
    commands, spans = code_of(text)
    unknown = []
    for command in commands + spans:
        words, shown = tokens_of(command), " ".join(command.split())
        entries = [at for at, word in enumerate(words) if word.rsplit("/", 1)[-1] in ENTRY_POINTS
                   and (at == 0 or words[at - 1] == "-m" or word != "codecloop")]
        if not entries:
            if words and words[0].startswith("--") and command in spans:
                unknown += [f"{flag} (in `{shown}`)" for flag in FLAG.findall(command) if flag not in every_flag]
            continue
        rest = words[entries[0] + 1:]
        if not rest:
            continue
        name = rest[0].rstrip(":,.")
        if name.startswith("-"):
            known, flags = top, rest
        elif name in options:
            known, flags = options[name], rest[1:]
        else:
            unknown.append(f"subcommand {name!r} (in `{shown}`)")
            continue
        unknown += [f"{FLAG.match(word).group()} for {name} (in `{shown}`)" for word in flags
                    if FLAG.match(word) and FLAG.match(word).group() not in known]
    return unknown


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_codecloop_subcommand_and_flag_named_exists(page):
    unknown = unknown_names(page.read_text())
    assert not unknown, f"{page.relative_to(ROOT)} names what `codecloop` does not have: " + "; ".join(unknown)


def test_the_checker_catches_a_made_up_flag_and_subcommand():
    text = ("```bash\ncodecloop train --data D \\\n    --qualty 5-95   # typo\ncodecloop trian --data D\n```\n"
            "Pass `--no_such_key 3`, or `codecloop sweep --levels 5,10 --bogus`.\n")
    assert unknown_names(text) == [
        "--qualty for train (in `codecloop train --data D --qualty 5-95`)",
        "subcommand 'trian' (in `codecloop trian --data D`)",
        "--no_such_key (in `--no_such_key 3`)",
        "--bogus for sweep (in `codecloop sweep --levels 5,10 --bogus`)",
    ]
    assert unknown_names("```bash\ncodecloop train --data D --epochs 1\n```\n`--levels`, `codecloop` alone\n") == []


def test_readme_is_at_most_20_kb():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes (limit {MAX_README_BYTES}): move material to docs/"


def test_readme_opens_with_the_install_and_demo_command_and_the_ci_test_command():
    ci_command = next(line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                      if "pytest" in line and not line.lstrip().startswith("#"))
    first_block = FENCE.search(README.read_text())
    assert first_block and README.read_text()[:first_block.start()].count("\n") <= 3, "README must open with set-up"
    commands = [re.split(r"\s+#", line, maxsplit=1)[0].strip() for line in first_block.group(1).splitlines()]
    assert ci_command in commands, f".ci/run runs `{ci_command}`; the README's first lines must show it"
    assert any(re.fullmatch(r"pip install -e \S+ && codecloop demo", command) for command in commands), commands


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_lead_to_files(page):
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    missing = [target for target in targets if "://" not in target and not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
