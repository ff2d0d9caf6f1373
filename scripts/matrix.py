"""The compatibility matrix: what each version set's test run proved, as recorded by the run itself.

Every version set's pytest session writes a report (``LK_PROBE_MATRIX_REPORT=<file>``, see tests/conftest.py): the
versions it ran on, its totals, and the outcome of each smoke test (``@pytest.mark.smoke("<capability>")``).
``python3 scripts/dev.py test`` gathers those reports into ``MATRIX`` (committed), and the README's supported-versions
table is rendered from that file (``python scripts/sync_readme.py``; tests/test_docs.py checks the two agree).
Standard library only: dev.py runs it with any Python 3.10+.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / ".ci" / "matrix.json"

#: capability (the smoke marker's argument) -> its column in the README table
CAPABILITIES: dict[str, str] = {
    "job": "job trace (worker + job process)",
    "connect": "connect + engine phases",
    "signal_timeout": "fault: signal timeout",
    "reconnect": "reconnect episode",
    "sigkill": "SIGKILL closed by the worker",
}
#: distributions whose versions the table shows
VERSIONED = ("livekit-agents", "livekit")


def load(path: Path = MATRIX) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"sets": {}}


def save(matrix: dict[str, Any], path: Path = MATRIX) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(matrix, indent=1, sort_keys=True) + "\n")


def cell(results: list[dict[str, Any]] | None) -> str:
    """One capability on one set: passed, failed, skipped (with pytest's reason) or not in that set's subset."""
    if not results:
        return "not run"
    outcomes = {r["outcome"] for r in results}
    if "failed" in outcomes:
        return "**failed**"
    if outcomes == {"passed"}:
        return "✓"
    reasons = sorted({r["reason"] for r in results if r["outcome"] == "skipped" and r.get("reason")})
    mark = "✓ partly; " if "passed" in outcomes else ""
    return mark + "skipped: " + "; ".join(reasons).replace("|", "/")


def table(matrix: dict[str, Any]) -> str:
    cols = list(CAPABILITIES)
    rows = ["| version set | " + " | ".join(VERSIONED) + " | tests run | " +
            " | ".join(CAPABILITIES[c] for c in cols) + " |",
            "|" + "---|" * (3 + len(VERSIONED) + len(cols) - 1)]
    for name, rep in sorted(matrix["sets"].items(), key=lambda kv: _order(kv[1])):
        versions = [rep["versions"].get(d) or "—" for d in VERSIONED]
        t = rep["totals"]
        run = f"{rep['subset']}: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, {t.get('skipped', 0)} skipped"
        rows.append(f"| {name} | " + " | ".join(versions) + f" | {run} | " +
                    " | ".join(cell(rep["smoke"].get(c)) for c in cols) + " |")
    return "\n".join(rows)


def _order(rep: dict[str, Any]) -> tuple:
    def key(v: str | None) -> tuple:
        return tuple(int(x) for x in v.split(".") if x.isdigit()) if v else (999,)

    return tuple(key(rep["versions"].get(d)) for d in VERSIONED)


README = ROOT / "README.md"
BEGIN, END = "<!-- matrix:begin -->\n", "<!-- matrix:end -->"


def sync_readme(matrix: dict[str, Any], path: Path = README) -> bool:
    """Put ``table(matrix)`` between the README's matrix markers; True when that changed the file."""
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + BEGIN + table(matrix) + "\n" + END + tail
    if new == text:
        return False
    path.write_text(new)
    return True
