"""The simulation loop that moves a FakeClock and lets scheduler nodes act."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime

from fantasma import Fantasma
from fantasma_testing.clock import FakeClock

__all__ = ["SimulationError", "SimulationStalledError", "advance"]

_MAX_PASSES_AT_ONE_INSTANT = 10_000


class SimulationError(RuntimeError):
    """A simulation was used in a way it cannot run."""


class SimulationStalledError(SimulationError):
    """The nodes kept asking to act again without the clock moving."""


async def advance(
    nodes: Sequence[Fantasma],
    clock: FakeClock,
    target: datetime,
    *,
    rng: random.Random | None = None,
) -> None:
    """Run ``nodes`` on ``clock`` until the fake time reaches ``target``.

    While any node has work or a timer due at or before ``target``, the clock
    jumps to the earliest such instant and every node does one pass there.
    A pass that leaves work due at the same instant (a handler scheduled a
    job for now, a finished occurrence unblocked the next) is followed by
    another pass before the clock moves. With ``rng``, the nodes act in an
    order drawn from it at each pass; otherwise in the given order.

    Raises:
        ValueError: ``target`` is before the clock's current time.
        SimulationStalledError: The nodes made 10,000 passes at one instant,
            which means a livelock rather than work.
    """
    if target < clock.now():
        raise ValueError(
            f"cannot advance to {target.isoformat()}: the clock already reads "
            f"{clock.now().isoformat()}"
        )
    passes_at_instant = 0
    while True:
        order = list(nodes)
        if rng is not None and len(order) > 1:
            rng.shuffle(order)
        wake = target
        has_wake = False
        for node in order:
            node_wake = await node.run_pending()
            if not has_wake or node_wake < wake:
                wake, has_wake = node_wake, True
        if not has_wake or wake > target:
            break
        if wake <= clock.now():
            passes_at_instant += 1
            if passes_at_instant >= _MAX_PASSES_AT_ONE_INSTANT:
                raise SimulationStalledError(
                    f"nodes asked to act again {passes_at_instant} times at "
                    f"{clock.now().isoformat()} without the clock moving"
                )
            continue
        passes_at_instant = 0
        clock.set(wake)
    clock.set(target)
