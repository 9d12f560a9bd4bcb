"""Apply the effects of a history fold to a live estimator: learn examples, load snapshots.

Pure CPU (no I/O): used by the learner (``agents/learner.py``) and by ``replay``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from riverbed.streams.errors import ValidationError
from riverbed.streams.history import Examples, Learn, Load
from riverbed.streams.models import OnlineModel
from riverbed.streams.snapshots import load_snapshot

#: checks one recorded example before it is learned again (ValidationError: refused)
ExampleCheck = Callable[[Mapping[str, float], Any], object]


def apply_effects(model: OnlineModel, effects: Sequence[Learn | Load], key: bytes,
                  check: ExampleCheck | None = None) -> int:
    """Apply fold effects to a live estimator (learn examples, load snapshots); returns the
    examples ``check`` refused. The history is read like any input: a record riverbed
    never wrote (a NaN feature, a label this model cannot take) is checked before
    ``learn_one`` -- River mutates a model before it raises -- and skipped, so it neither
    poisons the model nor stops a restore.

    The cyclic GC is paused meanwhile: a replay holds the decoded history (millions of
    small dicts) in memory, and full collections over it cost more than the learning
    (bench/replay.py). Reference counting still frees everything as usual.
    """
    refused = 0
    with gc_paused():
        for effect in effects:
            if isinstance(effect, Learn):
                learn = model.estimator.learn_one  # type: ignore[attr-defined]
                examples = Examples.of(effect.examples)
                for x, y in zip(examples.xs, examples.ys, strict=True):
                    if check is not None:
                        try:
                            check(x, y)
                        except ValidationError:
                            refused += 1
                            continue
                    learn(dict(x), y)
            elif isinstance(effect, Load):
                model.estimator, _ = load_snapshot(effect.snapshot, key)
    return refused


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
