"""Splice benchmark outputs into README.md so measured results are never typed by hand.

Each benchmark's stdout is saved as ``benchmarks/results/<name>.md`` (``make bench`` does
it); this script replaces the text between ``<!-- bench:<name> -->`` and
``<!-- /bench:<name> -->`` in README.md with that file's contents.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def splice(readme: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no <!-- bench:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), readme)


def main() -> int:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    for result in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        readme = splice(readme, result.stem, result.read_text())
        print(f"README.md <- {result.relative_to(ROOT)}")
    readme_path.write_text(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
