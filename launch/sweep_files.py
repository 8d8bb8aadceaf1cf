"""Check a W&B sweep file (``launch/sweeps/*.yaml``) against the real `codecloop` parser, before
``wandb sweep`` uploads it and a grid of runs fails one by one.

A W&B agent runs the file's ``command`` with ``${args}`` expanded to ``--key=value`` per
parameter and each ``${envvar:NAME}`` replaced by that environment variable. So every parameter
must be a codecloop config key, and every value the file lists (or a range's ``min`` and ``max``)
must parse and validate for the command's subcommand, on top of the command's fixed flags::

    python -m codecloop.launch.sweep_files launch/sweeps/*.yaml
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
import sys
from pathlib import Path
from typing import Any


from codecloop.launch.cli import CONFIG_COMMANDS, build_parser, config_from_args
from codecloop.trainers.config import coerce, config_keys, read_yaml_mapping

PROGRAM = "codecloop"
ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
REQUIRED_KEYS = ("program", "method", "parameters", "command")


def parameter_values(name: str, spec: Any, path: Path) -> list[Any]:
    """The values of one sweep parameter to check: ``value``, every one of ``values``, or a range's
    ``min`` and ``max``."""
    if isinstance(spec, dict) and "value" in spec:
        return [spec["value"]]
    if isinstance(spec, dict) and isinstance(spec.get("values"), list) and spec["values"]:
        return list(spec["values"])
    if isinstance(spec, dict) and "min" in spec and "max" in spec:
        return [spec["min"], spec["max"]]
    raise ValueError(f"sweep file {path}: parameter {name!r} needs `value`, a non-empty `values` list, or `min` "
                     f"and `max`")


def command_arguments(command: Any, path: Path) -> list[str]:
    """The codecloop arguments of the file's ``command``, program and ``${env}`` dropped, each
    ``${envvar:NAME}`` as the placeholder ``<NAME>``, ``${args}`` left where it is."""
    if not isinstance(command, list) or "${args}" not in command:
        raise ValueError(f"sweep file {path}: `command` must be a list holding ${{args}} (codecloop takes "
                         f"--key=value), e.g. [${{env}}, ${{program}}, experiment, ${{args}}]")
    words = [str(word) for word in command]
    starts = [position for position, word in enumerate(words) if word in ("${program}", PROGRAM)]
    if not starts or any(word != "${env}" for word in words[:starts[0]]):
        raise ValueError(f"sweep file {path}: `command` must run {PROGRAM} (as ${{program}} or by name), "
                         f"optionally after ${{env}}; got {words}")
    arguments = [ENVVAR.sub(lambda match: f"<{match.group(1)}>", word) for word in words[starts[0] + 1:]]
    other_macros = [word for word in arguments if "${" in word and word != "${args}"]
    if other_macros:
        raise ValueError(f"sweep file {path}: `command` uses {other_macros[0]}; codecloop takes parameters as "
                         f"${{args}} (--key=value) and paths as ${{envvar:NAME}}")
    if not arguments or arguments[0] not in CONFIG_COMMANDS:
        raise ValueError(f"sweep file {path}: `command` must name a subcommand ({', '.join(CONFIG_COMMANDS)}) "
                         f"right after {PROGRAM}")
    return arguments


def parse_and_validate(argv: list[str]):
    """`argv` through `build_parser` and `config_from_args`: the validated Config, or ValueError with
    argparse's or the Config's message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit as error:
        lines = stderr.getvalue().strip().splitlines()
        raise ValueError(lines[-1] if lines else f"arguments rejected: {argv}") from error
    return config_from_args(args)


def check_sweep_file(path: str | Path) -> list[list[str]]:
    """Check one sweep file; returns the codecloop argument lists checked (the fixed command, then one
    per parameter value). Raises ValueError naming the file and the parameter at fault."""
    path = Path(path)
    sweep = read_yaml_mapping(path, "sweep", "a mapping of sweep keys")
    missing = [key for key in REQUIRED_KEYS if key not in sweep]
    if missing:
        raise ValueError(f"sweep file {path}: missing key(s) {', '.join(missing)}")
    if sweep["program"] != PROGRAM:
        raise ValueError(f"sweep file {path}: `program` must be {PROGRAM}, not {sweep['program']!r}")
    if not isinstance(sweep["parameters"], dict) or not sweep["parameters"]:
        raise ValueError(f"sweep file {path}: `parameters` must map config keys to their values")
    arguments = command_arguments(sweep["command"], path)
    at = arguments.index("${args}")
    fixed = arguments[:at] + arguments[at + 1:]
    try:
        parse_and_validate(fixed)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"sweep file {path}: `command` {' '.join(fixed)}: {error} (an agent runs it from its "
                         f"working directory: start `wandb agent` from the repository root)") from error
    known = config_keys()
    checked = [fixed]
    for name, spec in sweep["parameters"].items():
        key = str(name).replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"sweep file {path}: parameter {name!r} is not a codecloop config key"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; see `codecloop {arguments[0]} --help`")
        for value in parameter_values(name, spec, path):
            argv = arguments[:at] + [f"--{name}={value}"] + arguments[at + 1:]  # what ${args} expands to
            try:
                config = parse_and_validate(argv)
                if getattr(config, key) != coerce(key, value):
                    raise ValueError(f"--{name}={value} resolved to {getattr(config, key)!r}")
            except (ValueError, FileNotFoundError) as error:
                raise ValueError(f"sweep file {path}: parameter {name!r} value {value!r}: {error}") from error
            checked.append(argv)
    return checked


def main(argv: list[str] | None = None) -> int:
    """Check each sweep file named; status 2 at the first bad one."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m codecloop.launch.sweep_files SWEEP.yaml [SWEEP.yaml ...]", file=sys.stderr)
        return 2
    for path in paths:
        try:
            checked = check_sweep_file(path)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"{path}: ok ({len(checked) - 1} parameter values accepted by codecloop {checked[0][0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
