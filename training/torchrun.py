"""`torchrun` with a clean Ctrl-C: the same arguments as `torchrun` (torch.distributed.run).

    python -m training.torchrun --nproc_per_node=4 -m training.train --stage 1 --data ... -o runs/stage1

On Ctrl-C every training process saves its step (see training/loop.py) and torchrun's agent stops;
plain `torchrun` then ends with the agent's SignalException traceback, this launcher with one line
and exit status 130 (128 + the signal number for other signals).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as exc:
        print(f"interrupted ({exc.sigval.name}): each process saved its step; run the same command to resume",
              file=sys.stderr)
        return 128 + int(exc.sigval)
    except KeyboardInterrupt:
        print("interrupted: run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
