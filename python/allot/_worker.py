"""The asyncio side of a worker's ``async def`` apps.

The worker's Rust thread queues each task in an inbox and writes a byte to
a socket once per batch; this loop, on a thread of its own, reads the
batch and runs each task as an asyncio task, answering through the reply
object the inbox gave with it. A task the worker stops (cancelled, past
its deadline) is cancelled here.
"""

import asyncio
import threading
from typing import Any, Dict


class AsyncRunner:
    """Runs one worker's async handlers on an event loop of its own."""

    def __init__(self, inbox: Any, name: str) -> None:
        self._inbox = inbox
        self._name = name
        self._tasks: Dict[int, "asyncio.Task[None]"] = {}
        self._loop = asyncio.new_event_loop()

    def start(self) -> None:
        """Starts the loop's thread (a daemon: it never keeps the
        interpreter from exiting)."""
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        fd = self._inbox.fileno()
        loop.add_reader(fd, self._wake)
        try:
            loop.run_forever()
        finally:
            loop.remove_reader(fd)
            pending = list(self._tasks.values())
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def _wake(self) -> None:
        jobs, cancels, closing = self._inbox.take()
        for jid, fn, payload, info, reply in jobs:
            self._tasks[jid] = self._loop.create_task(self._one(jid, fn, payload, info, reply))
        for jid in cancels:
            task = self._tasks.get(jid)
            if task is not None:
                task.cancel()
        if closing:
            self._loop.stop()

    async def _one(self, jid: int, fn: Any, payload: bytes, info: Any, reply: Any) -> None:
        try:
            out = await (fn(payload) if info is None else fn(payload, info))
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # noqa: B902 - every failure is the task's
            reply.fail(e)
        else:
            reply.done(out)
        finally:
            self._tasks.pop(jid, None)
