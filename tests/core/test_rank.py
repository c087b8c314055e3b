"""``core.rank``: a launched rank runs its module and leaves with the module's status, its
output flushed, without the interpreter's teardown (atexit handlers do not run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("body", "code", "err"),
    [
        ("print('done', end='')", 0, ""),
        ("import sys; print('done', end=''); sys.exit(3)", 3, ""),
        ("import sys; print('done', end=''); sys.exit('bad config')", 1, "bad config"),
        ("print('done', end=''); raise RuntimeError('boom')", 1, "RuntimeError: boom"),
    ],
)
def test_a_rank_keeps_its_status_and_output(tmp_path, body, code, err):
    (tmp_path / "job.py").write_text(
        "import atexit, sys\natexit.register(lambda: print('teardown', file=sys.stderr))\n"
        f"if __name__ == '__main__':\n    {body}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    proc = subprocess.run(
        [sys.executable, "-m", "core.rank", "job", "--flag"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == code and proc.stdout == "done"
    assert err in proc.stderr
    # os._exit skips the teardown; an uncaught error takes the usual way out
    assert ("teardown" in proc.stderr) == body.endswith("('boom')")
