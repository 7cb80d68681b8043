"""A tiny trio primitive: wake everyone waiting for 'something changed'."""

import trio


class Broadcast:
    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()
