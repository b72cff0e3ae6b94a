"""`vlbench completion bash|zsh`: a shell completion script made from the command line's own parser.

Every command, its flags, and the values of flags whose metavar lists them (`{a,b,c}`) or that name an experiment
type; files otherwise. Install: `vlbench completion bash > ~/.local/share/bash-completion/completions/vlbench`, or
`eval "$(vlbench completion zsh)"` in ~/.zshrc. Made here rather than by a library: it is the parser walked once.
"""

from __future__ import annotations

import argparse
import re
import shlex

from vlbench.cli import build_parser, common
from vlbench.errors import UserError
from vlbench.experiments.spec import builtin_names

HELP = "print a shell completion script (bash or zsh)"
DESCRIPTION = ("Print a completion script for bash or zsh: commands, flags, listed values, files. "
               "bash: vlbench completion bash > ~/.local/share/bash-completion/completions/vlbench; "
               "zsh: eval \"$(vlbench completion zsh)\" in ~/.zshrc.")
SHELLS = ("bash", "zsh")


def add_arguments(p) -> None:
    p.add_argument("shell", metavar="{bash,zsh}", help="the shell")
    common.add_debug_flag(p)


def run(args) -> int:
    if args.shell not in SHELLS:
        raise UserError("unsupported shell", field="shell", value=args.shell, fix="use bash or zsh")

    print(script(build_parser(), args.shell))
    return 0


def script(parser: argparse.ArgumentParser, shell: str = "bash") -> str:
    commands = _subcommands(parser)
    lines = ["# vlbench completion (vlbench completion " + shell + ")"]
    if shell == "zsh":
        lines += ["autoload -U +X bashcompinit && bashcompinit"]
    lines += ["_vlbench() {",
              '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i',
              '  for ((i = 1; i < COMP_CWORD; i++)); do',
              '    case "${COMP_WORDS[i]}" in -*) ;; *) cmd="${COMP_WORDS[i]}"; break ;; esac',
              "  done",
              '  if [[ -z "$cmd" ]]; then',
              f'    COMPREPLY=($(compgen -W {shlex.quote(" ".join(["--debug", *commands]))} -- "$cur")); return',
              "  fi",
              '  local opts="" values=""',
              '  case "$cmd" in']
    for name, sub in commands.items():
        flags = sorted({s for a in sub._actions for s in a.option_strings if s.startswith("--")})
        lines.append(f"    {name}) opts={shlex.quote(' '.join(flags))}")
        cases = []
        for action in sub._actions:
            values = _values(action)
            if values and action.option_strings:
                cases.append(f"        {'|'.join(action.option_strings)}) values={shlex.quote(' '.join(values))} ;;")
        if cases:
            lines += ['      case "$prev" in', *cases, "      esac"]
        lines.append("      ;;")
    lines += ["  esac",
              '  if [[ -n "$values" ]]; then COMPREPLY=($(compgen -W "$values" -- "$cur")); return; fi',
              '  if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur")); return; fi',
              '  COMPREPLY=($(compgen -f -- "$cur"))',
              "}",
              "complete -o filenames -o bashdefault -F _vlbench vlbench"]
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _values(action: argparse.Action) -> list[str]:
    """The values a flag takes when the parser lists them: choices, a `{a,b}` metavar, experiment type names."""
    if action.choices:
        return [str(c) for c in action.choices]
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    found = re.fullmatch(r"\{([^{}]+)\}", metavar or "")
    if found:
        return [v for v in found.group(1).split(",") if v]
    if action.dest == "experiment":
        return builtin_names()
    return []
