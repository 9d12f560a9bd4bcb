"""Apply the effects of a history fold to a live estimator: learn examples, load snapshots.

Pure CPU (no I/O): used by the learner (``agents/learner.py``) and by ``replay``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence

from riverbed.streams.history import Examples, Learn, Load
from riverbed.streams.models import OnlineModel
from riverbed.streams.snapshots import load_snapshot


def apply_effects(model: OnlineModel, effects: Sequence[Learn | Load], key: bytes) -> None:
    """Apply fold effects to a live estimator (learn examples, load snapshots).

    The cyclic GC is paused meanwhile: a replay holds the decoded history (millions of
    small dicts) in memory, and full collections over it cost more than the learning
    (bench/replay.py). Reference counting still frees everything as usual.
    """
    with gc_paused():
        for effect in effects:
            if isinstance(effect, Learn):
                learn = model.estimator.learn_one  # type: ignore[attr-defined]
                examples = Examples.of(effect.examples)
                for x, y in zip(examples.xs, examples.ys, strict=True):
                    learn(dict(x), y)
            elif isinstance(effect, Load):
                model.estimator, _ = load_snapshot(effect.snapshot, key)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector inside the block (restored after)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
