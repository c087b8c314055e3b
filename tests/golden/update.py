"""Re-record ``tests/golden/fingerprints.json`` after a change that is *meant* to change the
numerics: ``python -m tests.golden.update`` (``--platform``: this CPU kernel family's own
recording, from the same code, see ``fingerprint``). Every accuracy row of a method whose digest changes
becomes stale in the report; say why in the commit."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tests.conftest import launch_module
from tests.golden import fingerprint


def record() -> dict[str, dict[str, list]]:
    """Run every golden case on 1 and 2 processes; their fingerprints by case name."""
    cases: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            out = Path(tmp) / f"world{world}.json"
            proc = launch_module(
                "tests.golden.worker", world, str(out), timeout=900, env=fingerprint.kernel_env()
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-4000:])
            cases.update(json.loads(out.read_text()))
    return cases


def main() -> int:
    if "--platform" in sys.argv[1:]:  # this machine's kernel family, beside the main recording
        print(f"wrote {fingerprint.save_platform(record())}", file=sys.stderr)
        return 0
    old = fingerprint.load()["methods"] if fingerprint.FILE.exists() else {}
    data = fingerprint.save(record())
    for method, digest in sorted(data["methods"].items()):
        state = "unchanged" if old.get(method) == digest else f"changed (was {old.get(method)})"
        print(f"{method}: {digest} {state}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
