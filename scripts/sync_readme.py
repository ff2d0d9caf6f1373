#!/usr/bin/env python3
"""Regenerate the README's generated sections (phases, options, attributes, events, faults, findings) from the code,
and its supported-versions table from the compatibility matrix the last test run recorded (.ci/matrix.json)."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lk_probe import _catalogue, _config, _findings  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import matrix  # noqa: E402


def faults_table() -> str:
    from lk_probe.testing import FAULTS

    rows = ["| fault | effect |", "|---|---|"]
    rows += [f"| `{name}` | {desc} |" for name, desc in sorted(FAULTS.items())]
    return "\n".join(rows)


def main() -> None:
    path = ROOT / "README.md"
    text = path.read_text()
    for tag, body in (("phases", _catalogue.markdown_table()), ("options", _config.markdown_table()),
                      ("attributes", _catalogue.attributes_table()), ("events", _catalogue.events_table()),
                      ("faults", faults_table()),
                      ("findings", _findings.markdown_table())):
        text = re.sub(rf"(<!-- {tag}:begin -->\n).*?(<!-- {tag}:end -->)", lambda m: m.group(1) + body + "\n" +
                      m.group(2), text, flags=re.S)
    path.write_text(text)
    matrix.sync_readme(matrix.load(), path)


if __name__ == "__main__":
    main()
