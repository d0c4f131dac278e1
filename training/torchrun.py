"""`torchrun` with a clean Ctrl-C: the same arguments as `torchrun` (torch.distributed.run).

    python -m training.torchrun --nproc_per_node=4 -m training.train --stage 1 --data ... -o runs/stage1

On Ctrl-C (or SIGTERM) torchrun's agent passes the signal on, every training process stops after the
same step and the main one saves it (training/interrupt.py). Plain `torchrun` then ends with the
agent's SignalException traceback; this launcher with one line and exit status 130 (128 + the signal
number for other signals) — also when the agent saw the processes end before its own signal handler
ran.
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED = {128 + signal.SIGINT, 128 + signal.SIGTERM}   # what training.train exits with when stopped


def _all_interrupted(exc) -> bool:
    codes = [f.exitcode for f in exc.failures.values()]
    return bool(codes) and any(c in INTERRUPTED for c in codes) and \
        all(c in INTERRUPTED or c in (-signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL) for c in codes)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    resume = "each process saved its step; run the same command to resume"
    try:
        torchrun(argv)
    except SignalException as exc:
        print(f"interrupted ({exc.sigval.name}): {resume}", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        if not _all_interrupted(exc):
            raise
        print(f"interrupted: {resume}", file=sys.stderr)
        return max(f.exitcode for f in exc.failures.values())
    except KeyboardInterrupt:
        print("interrupted: run the same command to resume", file=sys.stderr)
        return 130
    finally:
        _drop_pending_signals(SignalException)
    return 0


def _drop_pending_signals(signal_exception: type) -> None:
    """torchrun's handler raises SignalException; a signal still pending when the agent is done would
    raise it at interpreter exit (a traceback after our one line): ignore those signals from now on."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (signal_exception, KeyboardInterrupt):  # the pending one runs as the handler is swapped
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
