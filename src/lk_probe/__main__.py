"""``lk-probe`` / ``python -m lk_probe``: print the phase catalogue or the options as Markdown."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("canary", "watch"):  # the dispatching side (lk_probe._cli_dispatch)
        import argparse

        from . import _cli_dispatch

        parser = argparse.ArgumentParser(prog="lk-probe")
        handlers = _cli_dispatch.register(parser.add_subparsers(dest="command", required=True))
        ns = parser.parse_args(args)
        return handlers[ns.command](ns)
    if args == ["phases"]:
        from ._catalogue import markdown_table

        print(markdown_table())
        return 0
    if args == ["options"]:
        from ._config import markdown_table

        print(markdown_table())
        return 0
    print("usage: lk-probe phases | options | canary --agent NAME | watch --room R   (the demo: python -m "
          "lk_probe.demo)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
