"""allot: allocate computing tasks to servers by matching attributes.

The Python SDK of allot (distribution ``allot-cluster``). Connect to a
cluster and run tasks::

    import allot

    client = allot.Client(gateways=["127.0.0.1:7000"], pki="pki", name="client")
    r = client.submit("sha256", b"data", require="server.mem >= 1GiB")
    print(r.output, r.worker, r.latency_us)
    for r in client.map("echo", [b"a", b"b", b"c"]):
        print(r.output)

Serve tasks with Python functions::

    def upper(payload: bytes, task: allot.TaskInfo) -> bytes:
        return payload.upper()

    allot.Worker(join=["127.0.0.1:7001"], pki="pki", name="py-1",
                 apps={"upper": upper}).run()

Or try it all in one process::

    with allot.LocalCluster(workers=2, apps={"upper": upper}) as c:
        print(c.client().submit("upper", b"hi").output)

Errors are :class:`AllotError` and its subclasses :class:`Unavailable`,
:class:`Timeout`, :class:`TaskFailed`, :class:`NoMatch` and
:class:`PkiError`; an expression that does not
parse raises ``ValueError``.
"""

from ._errors import (
    AllotError,
    NoMatch,
    PkiError,
    TaskFailed,
    Timeout,
    Unavailable,
)
from ._native import (
    Client,
    Job,
    LocalCluster,
    MapIterator,
    Result,
    TaskInfo,
    Worker,
    __version__,
    log_to_stderr,
)

__all__ = [
    "AllotError",
    "Client",
    "Job",
    "LocalCluster",
    "MapIterator",
    "NoMatch",
    "PkiError",
    "Result",
    "TaskFailed",
    "TaskInfo",
    "Timeout",
    "Unavailable",
    "Worker",
    "__version__",
    "log_to_stderr",
]
