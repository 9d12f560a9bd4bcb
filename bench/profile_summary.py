"""Summarise a py-spy raw profile of a benchmark contender: self and inclusive shares.

    py-spy record --subprocesses --threads -r 200 -f raw -o prof.txt -- \\
        python bench/throughput.py --only riverbed --events 300000 --rounds 1 --model light
    python bench/profile_summary.py prof.txt                      # the contender process
    python bench/profile_summary.py prof.txt confirm_in_order     # stacks through a frame

Only the child process started with ``--contender`` is counted (the parent mostly waits).
Note: py-spy counts the asyncio default executor's idle thread (``_worker``, blocked in
``work_queue.get``) as active; its share is not CPU.
"""

from __future__ import annotations

import collections
import re
import sys


def summarise(path: str, within: str | None = None, top: int = 30) -> str:
    """The table for the stacks of ``path`` (those through a frame containing ``within``)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            if "--contender" not in stack:
                continue
            frames = [f for f in stack.split(";") if not f.startswith("process ")]
            if within and not any(within in f for f in frames):
                continue
            n = int(count)
            total += n
            own[frames[-1]] += n
            for name in {re.sub(r" \(.*:\d+\)$", "", f) for f in frames}:
                inclusive[name] += n
    if not total:
        return "no samples of a --contender process"
    out = [f"{total} samples" + (f" through {within!r}" if within else ""), "--- self"]
    out += [f"{100 * c / total:5.1f}% {f}" for f, c in own.most_common(top)]
    out += ["--- inclusive"]
    out += [f"{100 * c / total:5.1f}% {f}" for f, c in inclusive.most_common(2 * top)]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(summarise(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
