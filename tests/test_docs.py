"""The README's phase and option tables are generated from the catalogue and the options: they must not drift."""

import re
from pathlib import Path

from lk_probe import _catalogue, _config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _between(tag: str) -> str:
    m = re.search(rf"<!-- {tag}:begin -->\n(.*?)<!-- {tag}:end -->", README, re.S)
    assert m, f"README has no {tag} markers"
    return m.group(1).strip()


def test_readme_phase_table_is_the_catalogue():
    assert _between("phases") == _catalogue.markdown_table(), "run: python scripts/sync_readme.py"


def test_readme_option_table_is_the_options():
    assert _between("options") == _config.markdown_table(), "run: python scripts/sync_readme.py"


def test_readme_first_block_is_two_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(commands) == 2 and all(c.startswith("python3 scripts/dev.py ") for c in commands)


def test_readme_fault_table_is_the_double_s_faults():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("sync_readme", Path(__file__).resolve().parent.parent / "scripts" /
                                                  "sync_readme.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sync_readme", mod)
    spec.loader.exec_module(mod)
    assert _between("faults") == mod.faults_table(), "run: python scripts/sync_readme.py"
