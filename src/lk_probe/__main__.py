"""``lk-probe`` / ``python -m lk_probe``: diagnose and show jobs from OTLP JSON, print the catalogue or the options.

    lk-probe diagnose SOURCE [--job AJ_…] [--json]   the findings of each job in SOURCE
    lk-probe show SOURCE [--job AJ_…] [--width N]    each job's waterfall with its findings under it
    lk-probe show|diagnose SOURCE --html FILE        … and the report as one self-contained HTML file
    lk-probe serve [--http-port 4318] [--grpc-port 4317] [--save DIR]
                                                     an OTLP receiver printing each job as its trace completes
    lk-probe phases | options | findings              the tables, as Markdown
    lk-probe canary --agent NAME | watch --room R     the dispatching side (lk_probe._cli_dispatch)

SOURCE is an OTLP JSON file or a folder of them (see :mod:`lk_probe.otlpjson`), or ``http://HOST:PORT`` of a
running ``lk-probe serve`` (what it keeps). Bad input (a missing file, malformed
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
    from ._report import job_traces, load_source
    from .otlpjson import OtlpJsonError

    try:
        spans = load_source(source)
    except OtlpJsonError as e:
        raise _Usage(str(e)) from None
    out = job_traces(spans, job)
    if not out:
        raise _Usage(f"{source}: no job {job} in it" if job else f"{source}: no job in it (no span has {c.JOB_ID})")
    return out


def _html(args: argparse.Namespace, report: list[tuple[str, Any, list[Any]]]) -> None:
    """--html FILE: the report as one self-contained HTML file."""
    if not args.html:
        return
    from ._html import render

    try:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(render(report, source=args.source))
    except OSError as e:
        raise _Usage(f"{args.html}: cannot write it ({e.strerror or e})") from None
    print(f"lk-probe: wrote {args.html}", file=sys.stderr)


def _diagnosed(args: argparse.Namespace) -> list[tuple[str, Any, list[Any]]]:
    from ._findings import diagnose

    return [(job_id, trace, diagnose(trace)) for job_id, trace in _jobs(args.source, args.job)]


def _diagnose(args: argparse.Namespace) -> int:
    from ._report import findings_text, room

    report = _diagnosed(args)
    _html(args, report)
    if args.json:
        print(json.dumps([{"job_id": job_id, "room": room(trace), "trace_id": trace[0].trace_id,
                           "findings": [f.as_dict() for f in findings]} for job_id, trace, findings in report],
                         indent=2))
        return 0
    for job_id, trace, findings in report:
        where = f" · room {room(trace)}" if room(trace) else ""
        sys.stdout.write(f"job {job_id}{where} · trace {trace[0].trace_id}\n{findings_text(findings)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ._report import findings_text
    from .waterfall import print_waterfall

    import importlib.util

    report = _diagnosed(args)
    _html(args, report)
    color = None if importlib.util.find_spec("rich") is not None else False  # rich is optional
    for job_id, trace, findings in report:
        print_waterfall(trace, sys.stdout, width=args.width, color=color)
        sys.stdout.write(f"findings for job {job_id}:\n{findings_text(findings)}\n")
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
        p.add_argument("source", metavar="SOURCE", help="an OTLP JSON file or a folder of them, or the "
                       "http://HOST:PORT of a running lk-probe serve")
        p.add_argument("--job", metavar="AJ_…", help="only this job")
        p.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML file")
        if name == "diagnose":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            p.add_argument("--width", type=int, default=None, help="line width (default: the terminal's)")
    for name in ("phases", "options", "findings"):
        sub.add_parser(name, help=f"the {name} table, as Markdown")
    serve = sub.add_parser("serve", help="receive spans over OTLP and print each job's waterfall and findings")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=4318, help="OTLP/HTTP port (default 4318; 0: any free)")
    serve.add_argument("--grpc-port", type=int, default=4317, help="OTLP/gRPC port (default 4317; 0: any free; "
                       "-1: no gRPC)")
    serve.add_argument("--keep", type=int, default=100, metavar="N", help="keep the last N traces (default 100)")
    serve.add_argument("--save", metavar="DIR", help="also write each trace to DIR as OTLP JSON")
    serve.add_argument("--brief", action="store_true", help="one verdict line per job, no waterfall")
    serve.add_argument("--width", type=int, default=None, help="line width (default: the terminal's)")
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
        if args.command == "serve":
            from ._serve import main as serve

            return serve(args)
        return _table(args.command)
    except _Usage as e:
        print(f"lk-probe: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
