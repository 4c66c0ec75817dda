"""The reference pages made from the code: every pass and named pipeline from the
registry (docs/passes.md), every command and option from the CLI's parser (docs/cli.md).
``python -m prunepass.docs docs`` writes them; a test fails when they are stale."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

GENERATED = "<!-- made by `python -m prunepass.docs docs`; edit the code, not this file -->"

_KINDS = (("analysis", "Analysis passes",
           "Computed on demand, cached by the AnalysisManager until a transform changes "
           "the model."),
          ("plan", "Plan passes",
           "Build and refine the prune plan (`prunepass.plan.PrunePlan`); the model is not "
           "touched. `remove-channels` or `mask-channels` applies the plan and ends it."),
          ("transform", "Transform passes",
           "Change the model; the IR is verified after each."),
          ("pipeline", "Named pipelines",
           "A name with options that expands to the passes above when parsed; "
           "`prunepass passes --expand TEXT` prints the expansion with every option."))


def _default(o) -> str:  # noqa: ANN001
    from prunepass.pm.options import format_value
    return format_value(o.default) if o.default != "" else '""'


def pass_reference() -> str:
    from prunepass.pm import REGISTRY, PassManager
    lines = ["# Pass reference", "", GENERATED, ""]
    for kind, title, blurb in _KINDS:
        lines += [f"## {title}", "", blurb, ""]
        for name, cls in sorted(REGISTRY.items()):
            if cls.kind != kind:
                continue
            lines += [f"### `{name}`", "", cls.summary(), ""]
            if kind == "pipeline":
                expansion = ",".join(p.text() for p in PassManager([cls()]).passes)
                lines += [f"With its defaults it expands to `{expansion}`.", ""]
            if cls.options:
                lines += ["| option | type | default | meaning |", "|---|---|---|---|"]
                for o in cls.options:
                    doc = o.doc.replace("|", "\\|")
                    typ = o.describe_type().replace("|", " \\| ")
                    lines.append(f"| `{o.name}` | {typ} | `{_default(o)}` | {doc} |")
                lines.append("")
            else:
                lines += ["No options.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _options(parser: argparse.ArgumentParser) -> list[str]:
    from prunepass.cli import help_with_default
    rows = []
    for a in parser._actions:  # noqa: SLF001  (argparse keeps no public list)
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):  # noqa: SLF001
            continue
        names = ", ".join(a.option_strings) or a.dest
        if a.option_strings and a.nargs != 0:
            names += f" {a.metavar or a.dest.upper()}"
        helptext = help_with_default(a) % {"default": f"`{a.default}`", "prog": "prunepass"}
        rows.append(f"| `{names}` | {helptext.replace('|', chr(92) + '|')} |")
    return ["| argument | meaning |", "|---|---|", *rows] if rows else []


def cli_reference() -> str:
    import os
    from prunepass.cli import build_parser
    os.environ["COLUMNS"] = "100"  # usage lines wrap at the terminal's width: fix it
    p = build_parser()
    lines = ["# prunepass(1)", "", GENERATED, "",
             "## Synopsis", "", "```", "prunepass [--debug] [--version] COMMAND [ARGS]", "```",
             "", "## Description", "", p.description or "", "",
             "## Global options", "", *_options(p), "",
             "## Exit status", "",
             "| status | meaning |", "|---|---|",
             "| 0 | done |",
             "| 2 | an error in what was given: a model, pipeline, option, file or path (one "
             "line on stderr naming it) |",
             "| 3 | an internal error (one line; `--debug` shows the traceback) |",
             "| 4 | a check failed: pruned outputs differ from the masked model, or `bench "
             "--min-speedup` was not met |",
             "| 130 | interrupted |", "",
             "With `--json`, stdout carries one JSON document, also on an error: "
             "`{\"error\": {\"type\", \"message\", \"exit_status\"}}`; text goes to stderr. "
             "Progress bars go to stderr, only when it is a terminal "
             "(`PRUNEPASS_PROGRESS=1` or `0` forces them on or off).", "",
             "## Commands", ""]
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    helps = {c.dest: c.help for c in sub._choices_actions}  # noqa: SLF001
    for name, parser in sub.choices.items():
        lines += [f"### `prunepass {name}`", "", helps.get(name, "") or "", "",
                  "```", parser.format_usage().replace("usage: ", "").strip(), "```", "",
                  *_options(parser), ""]
    return "\n".join(lines).rstrip() + "\n"


PAGES = {"passes.md": pass_reference, "cli.md": cli_reference}


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:] or ["docs"])[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in PAGES.items():
        (folder / name).write_text(make())
        print(f"wrote {folder / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
