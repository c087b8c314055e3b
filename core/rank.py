"""One rank of a job that :mod:`core.launch` started: ``python -m core.rank MODULE ARGS...``
runs ``python -m MODULE ARGS...`` in this process and, once the module has returned, leaves
with ``os._exit`` (its status unchanged) instead of the interpreter's own teardown.

Why: a rank that had finished its work, written its rows and checkpoints and destroyed its
process groups was at times (about one run in several hundred, on CPU with gloo) aborted while
the interpreter shut down, with ``terminate called without an active exception``: gloo's
threads can still hold tensors whose release needs the interpreter that is being torn down
(pytorch/pytorch#179291 describes the same crash). The launcher then saw a failed job. Leaving
with ``os._exit`` skips that teardown; nothing is lost, since the module's own code has closed
what it opened, and streams are flushed first. A module that raises still fails as before.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m core.rank MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as end:
        if end.code is None or isinstance(end.code, int):
            code = end.code or 0
        else:  # sys.exit("message"): print it and fail, as the interpreter would
            print(end.code, file=sys.stderr)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
