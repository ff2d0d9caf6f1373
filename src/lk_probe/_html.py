"""``lk-probe show|diagnose … --html FILE``: one self-contained HTML file to attach to a support ticket.

Per job: its verdict, its findings (summary, evidence, what to check, the phase durations that matter) and its phases
as a waterfall (each span's bar on the trace's timeline, ✗ for an error, ◆ for an event; a click on a row opens its
attributes, events and status). No script and no external resource: a Content-Security-Policy forbids both, and every
text from the spans (which carry user-controlled strings: room names, error messages) is redacted as lk_probe's
exports are (:func:`lk_probe._redact.clean`) and HTML-escaped. Standard library only.
"""

from __future__ import annotations

import datetime
from html import escape
from typing import Any

from ._redact import clean
from ._report import room, seconds, verdict
from .spans import SpanRecord, SpanSet

__all__ = ["render"]

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d2125;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .3em}h3{font-size:1em;margin:1.2em 0 .4em}
.meta{color:#5e6c84}code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
.verdict{padding:.5em .8em;border-radius:4px;background:#e3fcef;border-left:4px solid #36b37e}
.verdict.bad{background:#ffebe6;border-left-color:#de350b}
.finding{margin:.6em 0 1em}.finding .headline{font-weight:600;margin:0 0 .2em}
.finding dl{display:grid;grid-template-columns:7em 1fr;gap:.2em .8em;margin:.3em 0}.finding dt{color:#5e6c84}
.finding dd{margin:0}
.waterfall{border:1px solid #dfe1e6;border-radius:4px}
.waterfall details{border-top:1px solid #f4f5f7}.waterfall details:first-of-type{border-top:0}
.row{display:grid;grid-template-columns:minmax(12em,26%) 1fr 6.5em;align-items:center;cursor:pointer;list-style:none;
padding:2px 6px}.row::-webkit-details-marker{display:none}.row:hover{background:#f4f5f7}
.name{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}.err .name{color:#de350b;font-weight:600}
.track{position:relative;height:14px;background:#fafbfc}
.bar{position:absolute;top:2px;height:10px;min-width:2px;background:#0065ff;border-radius:2px}
.err .bar{background:#de350b}.open .bar{background:repeating-linear-gradient(90deg,#b3d4ff 0 4px,#fff 4px 6px)}
.ev{position:absolute;top:0;width:0;height:14px;border-left:2px solid #ff991f}
.head{cursor:default;color:#5e6c84;font-size:.85em;border-bottom:1px solid #dfe1e6}.head:hover{background:none}
.axis{display:flex;justify-content:space-between}
.dur{text-align:right;color:#5e6c84;font-variant-numeric:tabular-nums}
.brief{grid-column:1/-1;color:#5e6c84;font-size:.85em;padding-left:var(--indent)}
.detail{padding:.3em 1em .8em 2em;background:#fafbfc}
table.attrs{border-collapse:collapse}table.attrs td{padding:1px 10px 1px 0;vertical-align:top}
table.attrs td:first-child{color:#5e6c84}
"""

_BRIEF = ("lk_probe.warm", "lk_probe.attempt", "lk_probe.signal.path", "error.type", "lk_probe.outcome", "lk_probe.pc",
          "lk_probe.stall.phase", "lk_probe.finding.code", "server.address")


def _t(value: Any) -> str:
    """A value from the spans, as safe text."""
    if isinstance(value, (tuple, list)):
        value = ", ".join(map(str, value))
    return escape(clean(value))


def _ms(ns: int) -> str:
    return f"{ns / 1e9:.2f} s" if ns >= 1_000_000_000 else f"{ns / 1e6:.1f} ms"


def _rows(trace: SpanSet) -> list[tuple[SpanRecord, int]]:
    """The spans in tree order with their depth (orphans as roots)."""
    out: list[tuple[SpanRecord, int]] = []

    def walk(span: SpanRecord, depth: int) -> None:
        out.append((span, depth))
        for kid in trace.children(span):
            walk(kid, depth + 1)

    for root in trace.roots():
        walk(root, 0)
    return out


def _pct(x: float) -> str:
    return f"{max(0.0, min(100.0, x)):.3f}%"


def _waterfall(trace: SpanSet) -> str:
    t0 = trace[0].start_ns
    end = max(max(s.end_ns or s.start_ns for s in trace), max((e.t_ns for s in trace for e in s.events), default=t0))
    total = max(end - t0, 1)
    out = ['<div class="waterfall"><div class="row head"><span>phase</span><span class="axis"><span>0</span>'
           f'<span>{_ms(total)}</span></span><span class="dur">duration</span></div>']
    for span, depth in _rows(trace):
        left = (span.start_ns - t0) * 100 / total
        width = ((span.end_ns if span.end_ns is not None else end) - span.start_ns) * 100 / total
        cls = " ".join(x for x in ("span", "err" if span.error else "", "open" if span.end_ns is None else "") if x)
        dur = "open" if span.end_ns is None else _ms(span.end_ns - span.start_ns)
        marks = "".join(f'<span class="ev" style="left:{_pct((e.t_ns - t0) * 100 / total)}" title="{_t(e.name)}">'
                        f"</span>" for e in span.events)
        brief = " ".join(f"{_t(k.removeprefix('lk_probe.'))}={_t(span.attributes[k])}" for k in _BRIEF
                         if k in span.attributes)
        indent = f"{depth * 1.2:.1f}em"
        out.append(
            f'<details class="{cls}"><summary class="row" style="--indent:{indent}">'
            f'<span class="name" style="padding-left:{indent}">{_t(span.name)}</span>'
            f'<span class="track"><span class="bar" style="left:{_pct(left)};width:{_pct(width)}"></span>{marks}'
            f'</span><span class="dur">{dur}{" ✗" if span.error else ""}</span>'
            + (f'<span class="brief">{brief}</span>' if brief else "") + f"</summary>{_detail(span, t0)}</details>")
    out.append("</div>")
    return "\n".join(out)


def _detail(span: SpanRecord, t0: int) -> str:
    rows = "".join(f"<tr><td>{_t(k)}</td><td class=mono>{_t(v)}</td></tr>" for k, v in sorted(span.attributes.items()))
    parts = [f'<table class="attrs"><tr><td>span</td><td class=mono>{_t(span.span_id)} · {_t(span.kind)} · '
             f"+{_ms(span.start_ns - t0)}</td></tr>{rows}</table>"]
    if span.status_code != "UNSET":
        parts.append(f"<p>status: {_t(span.status_code)}{': ' + _t(span.status_message) if span.status_message else ''}"
                     "</p>")
    if span.events:
        parts.append("<ul>" + "".join(
            f"<li>+{_ms(e.t_ns - t0)} <b>{_t(e.name)}</b> "
            + " ".join(f"{_t(k)}={_t(v)}" for k, v in sorted(e.attributes.items())) + "</li>" for e in span.events)
            + "</ul>")
    return f'<div class="detail">{"".join(parts)}</div>'


def _findings(findings: list[Any]) -> str:
    if not findings:
        return '<p class="none">No finding: nothing slow or failed in this job.</p>'
    items = []
    for f in findings:
        durations = ", ".join(f"{_t(k)} {v:.2f} s" for k, v in f.durations.items())
        items.append(
            f'<li class="finding"><p class="headline"><code>{_t(f.code)}</code> — {_t(f.title)}</p>'
            f'<p class="summary">{_t(f.summary)}</p><dl><dt>evidence</dt><dd class="evidence">{_t(f.evidence)}</dd>'
            f"<dt>check</dt><dd>{_t(f.check)}</dd>"
            + (f"<dt>phases</dt><dd>{durations}</dd>" if durations else "")
            + f"<dt>read more</dt><dd>{_t(f.more)}</dd></dl></li>")
    return '<ol class="findings">' + "".join(items) + "</ol>"


def _job(job_id: str, trace: SpanSet, findings: list[Any]) -> str:
    where = room(trace)
    head = " · ".join(x for x in (f"room {_t(where)}" if where else "", f"trace {_t(trace[0].trace_id)}",
                                  f"{len(trace)} spans", f"{seconds(trace):.2f} s") if x)
    return (f'<section class="job" id="job-{_t(job_id)}"><h2>job {_t(job_id)}</h2><p class="meta">{head}</p>'
            f'<p class="verdict{" bad" if findings else ""}">{_t(verdict(job_id, trace, findings))}</p>'
            f"<h3>Findings</h3>{_findings(findings)}"
            f"<h3>Phases</h3>{_waterfall(trace)}</section>")


def render(report: list[tuple[str, SpanSet, list[Any]]], *, source: str = "") -> str:
    """The HTML page of ``report``: (job id, the job's trace, its findings) per job."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = "lk_probe report" + (f" · job {report[0][0]}" if len(report) == 1 else f" · {len(report)} jobs")
    services = sorted({str(s.resource.get("service.name")) for _, t, _ in report for s in t
                       if s.resource.get("service.name")})
    meta = " · ".join(x for x in (f"from {_t(source)}" if source else "", f"written {now}",
                                  f"service {_t(', '.join(services))}" if services else "") if x)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{_t(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_t(title)}</h1><p class=\"meta\">{meta}</p>\n"
            + "\n".join(_job(*job) for job in report) + "\n</body></html>\n")
