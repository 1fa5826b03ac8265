"""Flags from config dataclasses, through draccus (LeRobot's parser).

Every command's flags are its config dataclass's fields (nested dataclasses are dotted groups:
`--eval.n_episodes`); their help is the comment beside each field. Before draccus sees argv, three
rewrites make LeRobot's habits and older spellings work:

- a deprecated spelling (the command's rename table) becomes the new one, with one line on stderr;
- a list flag takes space-separated values (`--mode fp32 bf16`) or one value (`--cams=2`);
- with a `policy.overrides` field, `--policy.<SmolVLA config field>=value` lands in it;
- a pass-through group (a `dict[str, Any]` field with `metadata=PASSTHROUGH_FLAGS`) takes every
  `--<group>.<name>=value` as a raw string, for another library's config classes to parse (the robot
  client's `--robot.*`, parsed by LeRobot's own `RobotConfig` through draccus).

Unknown flags are refused here, naming the closest known one, so draccus only sees flags it knows.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import tempfile
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import draccus
from draccus.argparsing import ArgumentParser

from smolvla.errors import SmolVLAError


class UsageError(SmolVLAError, ValueError):
    """A command line that cannot be parsed: unknown flag, missing value, bad value."""


def _unwrap(tp: Any) -> Any:
    """`X | None` -> X (flags are never typed None)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def flag_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every flag of dataclass `cls` (dotted for nested dataclasses) and its type."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _unwrap(hints[f.name])
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.update(flag_types(tp, f"{name}."))
        else:
            out[name] = tp
    return out


PASSTHROUGH = "smolvla_passthrough"


# The metadata of a `dict[str, Any]` field taking every `--<field>.<name>=value` as a raw string
PASSTHROUGH_FLAGS = types.MappingProxyType({PASSTHROUGH: True})


def _passthrough_groups(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get(PASSTHROUGH)}


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)


def _policy_fields() -> list[str]:
    from smolvla.config import SmolVLAConfig

    return [f.name for f in dataclasses.fields(SmolVLAConfig)]


def rename(argv: list[str], renames: Mapping[str, str], command: str) -> list[str]:
    """Old spellings -> new, one deprecation line each. A table value holding `=` replaces a bare flag
    (`--json` -> `--json=true`); otherwise the value the user gave is kept."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        new = renames.get(name)
        if new is not None and arg.startswith("--"):
            shown = new if "=" in new else f"{new}=..."
            print(f"smolvla {command}: {name} is deprecated, use {shown}", file=sys.stderr)
            if "=" in new:
                arg = new if not eq else f"{new.partition('=')[0]}={value}"
            else:
                arg = f"{new}{eq}{value}"
        out.append(arg)
    return out


def normalize(argv: list[str], cls: type, command: str) -> list[str]:
    """argv in the form draccus reads: `--name=value`, lists as `[a,b]`, policy overrides as one dict.
    Refuses unknown flags and stray words."""
    types_ = flag_types(cls)
    overrides_flag = "policy.overrides" if "policy.overrides" in types_ else None
    policy_fields = _policy_fields() if overrides_flag else []
    known = [*types_, "config_path"]
    groups = _passthrough_groups(cls)
    passed: dict[str, dict[str, str]] = {g: {} for g in groups}
    out: list[str] = []
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: flags look like --name=value (see --help)")
        name, eq, value = arg[2:].partition("=")
        values = [value] if eq else []
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        group, dot, sub = name.partition(".")
        if group in groups and dot and sub:
            if len(values) != 1:
                raise UsageError(f"--{name}: expected one value: --{name}=VALUE")
            passed[group][sub] = values[0]
        elif name in groups:
            raise UsageError(f"--{name}: give its fields one by one, as --{name}.<field>=VALUE")
        elif name in types_ or name == "config_path":
            tp = types_.get(name, str)
            if _is_list(tp):
                one = values[0] if len(values) == 1 else None
                if one is not None and one.lstrip().startswith("["):
                    value = one
                else:
                    value = "[" + ",".join(v for part in values for v in part.split(",") if v) + "]"
            elif tp is bool and not values:
                value = "true"  # a bare boolean flag means true, as in argparse's store_true
            elif len(values) != 1:
                got = "no value" if not values else f"{len(values)} values {values}"
                raise UsageError(f"--{name}: got {got}, expected one: --{name}=VALUE")
            else:
                value = values[0]
            out.append(f"--{name}={value}")
        elif overrides_flag and name.startswith("policy.") and name[7:] in policy_fields:
            if len(values) != 1:
                raise UsageError(f"--{name}: expected one value: --{name}=VALUE")
            overrides[name[7:]] = values[0]
        else:
            candidates = known + ([f"policy.{f}" for f in policy_fields] if overrides_flag else [])
            close = difflib.get_close_matches(name, candidates, 1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise UsageError(f"unknown flag --{name}{hint}; see `smolvla {command} --help`")
    if overrides:
        out.append(f"--{overrides_flag}={json.dumps(overrides)}")
    out.extend(f"--{g}={json.dumps(v)}" for g, v in passed.items() if v)
    return out


def _raising_parser(cls: type, prog: str, description: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(config_class=cls, prog=prog, description=description)

    def error(message: str) -> typing.NoReturn:
        raise UsageError(message)

    parser.parser.error = error  # type: ignore[method-assign]  # argparse would print usage and exit
    return parser


def _smolvla_cause(e: BaseException) -> SmolVLAError | None:
    """The SmolVLAError a config's __post_init__ raised, under draccus's wrappers."""
    seen = e
    while seen is not None:
        if isinstance(seen, SmolVLAError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _upgraded(cls: type, argv: list[str], prog: str, tmp: Path) -> list[str]:
    """argv with a `--config_path` file of an older shape replaced by its upgraded copy in `tmp`
    (the class's `upgrade_dict`), saying once what moved; the file itself is left as it is."""
    upgrade = getattr(cls, "upgrade_dict", None)
    out = list(argv)
    for i, arg in enumerate(out):
        name, _, value = arg.partition("=")
        if upgrade is None or name != "--config_path" or not Path(value).is_file():
            continue
        try:
            d = json.loads(Path(value).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return out  # draccus reports an unreadable file itself
        if not isinstance(d, dict):
            return out
        new, moved = upgrade(d)
        if moved:
            print(
                f"{prog}: {value} has an older shape, read as today's ({', '.join(moved)})", file=sys.stderr
            )
            copy = tmp / Path(value).name
            copy.write_text(json.dumps(new))
            out[i] = f"--config_path={copy}"
    return out


def parse_config(cls: type, argv: list[str], prog: str) -> Any:
    """An instance of `cls` from normalized argv (see `normalize`), draccus reading `--config_path`."""
    try:
        with tempfile.TemporaryDirectory(prefix="smolvla-config-") as tmp:
            return _raising_parser(cls, prog).parse_args(_upgraded(cls, argv, prog, Path(tmp)))
    except draccus.utils.DraccusException as e:
        cause = _smolvla_cause(e)
        raise (cause if cause is not None else UsageError(str(e).replace("\n", " "))) from None
    except (TypeError, ValueError) as e:  # a __post_init__ check outside draccus's wrapping
        cause = _smolvla_cause(e)
        if cause is None:
            raise
        raise cause from None
    except FileNotFoundError as e:  # --config_path naming no file
        raise UsageError(f"--config_path: {e}") from None


def help_text(cls: type, prog: str, description: str | None, epilog: str = "") -> str:
    """draccus's help (every flag, its type, default and comment) plus the command's notes."""
    parser = _raising_parser(cls, prog, description).parser
    for group in parser._action_groups:  # draccus lists each group's `--<group>` file option twice
        seen: set[tuple[str, ...]] = set()
        unique = []
        for action in group._group_actions:
            if tuple(action.option_strings) not in seen or not action.option_strings:
                unique.append(action)
            seen.add(tuple(action.option_strings))
        group._group_actions[:] = unique
    for action in parser._actions:
        if action.help:  # a comment's "91 %" is text, not an argparse format
            action.help = action.help.replace("%", "%%").replace("%%(default)s", "%(default)s")
    text = parser.format_help()
    return text + (f"\n{epilog.rstrip()}\n" if epilog else "")


def policy_overrides_help() -> str:
    names = _policy_fields()
    return (
        "Any SmolVLA policy config field is also a flag, --policy.<field>=value (e.g. "
        "--policy.n_action_steps=10):\n  " + ", ".join(names)
    )
