"""The uvicorn server `farslip serve` runs: it wakes the app's waiting clients as soon as it is told
to stop.

uvicorn stops by closing its sockets, then waiting for open requests to end, and only then runs the
app's shutdown; a long-poll (`?wait=` up to a minute) or an event stream (until its job ends) would
hold the stop up that long. `on_stop` (the app's `JobWatch.close`) answers them first.
"""

from __future__ import annotations

from typing import Callable

import uvicorn


class StoppingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]):
        super().__init__(config)
        self._on_stop = on_stop

    async def shutdown(self, sockets=None) -> None:
        self._on_stop()
        await super().shutdown(sockets)
