"""``lk-probe`` / ``python -m lk_probe``: diagnose and show jobs from OTLP JSON, print the catalogue or the options.

    lk-probe diagnose SOURCE [--job AJ_…] [--json]   the findings of each job in SOURCE
    lk-probe show SOURCE [--job AJ_…] [--width N]    each job's waterfall with its findings under it
    lk-probe phases | options | findings              the tables, as Markdown
    lk-probe canary --agent NAME | watch --room R     the dispatching side (lk_probe._cli_dispatch)

SOURCE is an OTLP JSON file or a folder of them (see :mod:`lk_probe.otlpjson`). Bad input (a missing file, malformed
JSON, no job in it) prints one line and exits with status 2. Colour needs rich (optional: plain text without it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import _catalogue as c


class _Usage(Exception):
    """A bad command line or bad input: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not argparse's usage block
        raise _Usage(message)


def _jobs(source: str, job: str | None) -> list[tuple[str, Any]]:
    """(job id, that job's spans) per job trace in SOURCE, in the order of their first span."""
    from .otlpjson import OtlpJsonError, load

    try:
        spans = load(source)
    except OtlpJsonError as e:
        raise _Usage(str(e)) from None
    out = []
    for trace in spans.traces().values():
        ids = {str(s.attributes[c.JOB_ID]) for s in trace if s.attributes.get(c.JOB_ID)}
        for job_id in sorted(ids):
            if job is None or job == job_id:
                out.append((job_id, trace))
    if not out:
        raise _Usage(f"{source}: no job {job} in it" if job else f"{source}: no job in it (no span has {c.JOB_ID})")
    return out


def _room(trace: Any) -> str | None:
    return next((str(s.attributes[c.ROOM_NAME]) for s in trace if s.attributes.get(c.ROOM_NAME)), None)


def _findings_text(findings: list[Any]) -> str:
    if not findings:
        return "  no finding: nothing slow or failed in this job\n"
    lines = []
    for i, f in enumerate(findings, 1):
        lines += [f"  {i}. {f.code} — {f.title}", f"     {f.summary}", f"     evidence: {f.evidence}",
                  f"     check: {f.check}"]
    return "\n".join(lines) + "\n"


def _diagnose(args: argparse.Namespace) -> int:
    from ._findings import diagnose

    report = []
    for job_id, trace in _jobs(args.source, args.job):
        report.append({"job_id": job_id, "room": _room(trace), "trace_id": trace[0].trace_id,
                       "findings": diagnose(trace)})
    if args.json:
        print(json.dumps([{**r, "findings": [f.as_dict() for f in r["findings"]]} for r in report], indent=2))
        return 0
    for r in report:
        room = f" · room {r['room']}" if r["room"] else ""
        sys.stdout.write(f"job {r['job_id']}{room} · trace {r['trace_id']}\n{_findings_text(r['findings'])}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ._findings import diagnose
    from .waterfall import print_waterfall

    import importlib.util

    color = None if importlib.util.find_spec("rich") is not None else False  # rich is optional
    for job_id, trace in _jobs(args.source, args.job):
        print_waterfall(trace, sys.stdout, width=args.width, color=color)
        sys.stdout.write(f"findings for job {job_id}:\n{_findings_text(diagnose(trace))}\n")
    return 0


def _table(name: str) -> int:
    if name == "phases":
        print(c.markdown_table())
    elif name == "options":
        from ._config import markdown_table

        print(markdown_table())
    else:
        from ._findings import markdown_table as findings_table

        print(findings_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="lk-probe", description="Diagnose LiveKit agent jobs from their lk_probe spans.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("diagnose", "the findings of each job in SOURCE"),
                           ("show", "each job's waterfall with its findings")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("source", metavar="SOURCE", help="an OTLP JSON file or a folder of them")
        p.add_argument("--job", metavar="AJ_…", help="only this job")
        if name == "diagnose":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            p.add_argument("--width", type=int, default=None, help="line width (default: the terminal's)")
    for name in ("phases", "options", "findings"):
        sub.add_parser(name, help=f"the {name} table, as Markdown")
    from . import _cli_dispatch  # the dispatching side: canary, watch

    dispatching = _cli_dispatch.register(sub)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if args.command in dispatching:
            return dispatching[args.command](args)
        if args.command == "diagnose":
            return _diagnose(args)
        if args.command == "show":
            return _show(args)
        return _table(args.command)
    except _Usage as e:
        print(f"lk-probe: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
