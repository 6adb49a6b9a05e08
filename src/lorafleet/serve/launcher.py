"""Exec a replica's command after asking the kernel to SIGTERM it when the gateway dies.

    python -m lorafleet.serve.launcher PARENT_PID -- COMMAND...

A parent-death signal set here survives `execvp`, so the vLLM server gets SIGTERM even when the
gateway is SIGKILLed. Doing it in this tiny process instead of a Popen `preexec_fn` keeps code out of
the fork of a multi-threaded gateway. If the gateway died before the signal was armed, exit at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main(argv: list[str]) -> None:
    parent, separator, *command = argv
    if separator != "--" or not command:
        sys.exit("usage: python -m lorafleet.serve.launcher PARENT_PID -- COMMAND...")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != int(parent):  # the gateway is already gone: the signal will never come
        sys.exit(0)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
