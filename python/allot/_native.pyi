"""Type stubs of the extension module ``allot._native`` (re-exported by
``allot``). The docstrings are the classes' own (see ``help(allot.Client)``)."""

import asyncio
from os import PathLike
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    final,
)

__all__ = [
    "__version__",
    "Client",
    "Result",
    "MapIterator",
    "Job",
    "Worker",
    "TaskInfo",
    "LocalCluster",
    "log_to_stderr",
    "_resolve_futures",
]

__version__: str

_Payload = Union[bytes, bytearray, str]
_Size = Union[int, str]
_Addresses = Union[str, Sequence[str]]
_AttrValue = Union[str, int, float, bool]
# f(payload: bytes, task: TaskInfo) -> bytes, or f(payload) -> bytes; or an
# `async def` of either form.
_Handler = Callable[..., Union[bytes, bytearray, Awaitable[Union[bytes, bytearray]]]]

def log_to_stderr(filter: Optional[str] = None) -> None:
    """Sends the nodes' and client's logs to stderr (``filter`` like
    ``"info"`` or ``"allot=debug"``; default ``ALLOT_LOG``, else ``"warn"``)."""

@final
class Result:
    """The outcome of a task that succeeded."""

    @property
    def output(self) -> bytes: ...
    @property
    def task_id(self) -> int: ...
    @property
    def worker(self) -> str: ...
    @property
    def distributor(self) -> str: ...
    @property
    def gateway(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def latency_us(self) -> int: ...
    @property
    def exit_code(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def queued_us(self) -> int: ...
    @property
    def matched_us(self) -> int: ...
    @property
    def ran_us(self) -> int: ...

@final
class MapIterator(Iterator[Result]):
    """The iterator ``Client.map`` returns."""

    def __iter__(self) -> "MapIterator": ...
    def __next__(self) -> Result: ...
    @property
    def in_flight(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> "MapIterator": ...
    def __exit__(self, *exc: Any) -> None: ...

@final
class Job:
    """A job the cluster holds."""

    @property
    def id(self) -> str: ...
    @property
    def tasks(self) -> int: ...
    def summary(self) -> Dict[str, Any]: ...
    def wait(self, timeout: Optional[float] = None) -> Dict[str, Any]: ...
    def outputs(self) -> List[Dict[str, Any]]: ...
    def cancel(self) -> int: ...

@final
class Client:
    """A connection to an allot cluster, shared by every thread."""

    def __new__(
        cls,
        gateways: Optional[_Addresses] = None,
        pki: Union[str, "PathLike[str]"] = "pki",
        name: str = "client",
        attrs: Optional[Mapping[str, _AttrValue]] = None,
        *,
        distributor: Optional[str] = None,
        retry_for: float = 30.0,
        connect_timeout: Optional[float] = None,
    ) -> "Client": ...
    def submit(
        self,
        app: str,
        payload: Optional[_Payload] = None,
        *,
        require: Optional[str] = None,
        prefer: Optional[str] = None,
        user: Optional[str] = None,
        cores: int = 0,
        mem: Optional[_Size] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> Result: ...
    def map(
        self,
        app: str,
        payloads: Iterable[_Payload],
        max_in_flight: int = 256,
        ordered: bool = True,
        *,
        return_exceptions: bool = False,
        require: Optional[str] = None,
        prefer: Optional[str] = None,
        user: Optional[str] = None,
        cores: int = 0,
        mem: Optional[_Size] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> MapIterator: ...
    def submit_async(
        self,
        app: str,
        payload: Optional[_Payload] = None,
        *,
        require: Optional[str] = None,
        prefer: Optional[str] = None,
        user: Optional[str] = None,
        cores: int = 0,
        mem: Optional[_Size] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> "asyncio.Future[Result]": ...
    def explain(
        self,
        app: str,
        *,
        require: Optional[str] = None,
        prefer: Optional[str] = None,
        user: Optional[str] = None,
        cores: int = 0,
        mem: Optional[_Size] = None,
    ) -> Dict[str, Any]: ...
    def status(self) -> List[Dict[str, Any]]: ...
    def submit_job(
        self,
        app: str,
        payload: Optional[_Payload] = None,
        *,
        array: Optional[Tuple[int, int]] = None,
        lines: Optional[_Payload] = None,
        require: Optional[str] = None,
        prefer: Optional[str] = None,
        user: Optional[str] = None,
        cores: int = 0,
        mem: Optional[_Size] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> Job: ...
    def jobs(self) -> List[Dict[str, Any]]: ...
    def job(self, id: str) -> Job: ...
    @property
    def distributor(self) -> Optional[str]: ...
    @property
    def name(self) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Client": ...
    def __exit__(self, *exc: Any) -> None: ...

@final
class TaskInfo:
    """What a handler learns about the task it runs."""

    @property
    def task_id(self) -> str: ...
    @property
    def key(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def deadline(self) -> Optional[float]: ...
    def remaining(self) -> Optional[float]: ...
    @property
    def app(self) -> str: ...
    @property
    def job(self) -> Optional[str]: ...
    @property
    def index(self) -> int: ...

@final
class Worker:
    """A worker that serves tasks with Python functions."""

    def __new__(
        cls,
        join: _Addresses,
        pki: Union[str, "PathLike[str]"],
        name: str,
        cores: int = 4,
        mem: Optional[_Size] = None,
        labels: Optional[Mapping[str, _AttrValue]] = None,
        apps: Optional[Mapping[str, _Handler]] = None,
        *,
        slots: Optional[int] = None,
        threads: Optional[int] = None,
        power: Optional[float] = None,
        builtins: Optional[Sequence[str]] = None,
        commands: Optional[Mapping[str, str]] = None,
        report: str = "registered",
        listen: str = "0.0.0.0:0",
    ) -> "Worker": ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def run(self) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def apps(self) -> List[str]: ...
    def __enter__(self) -> "Worker": ...
    def __exit__(self, *exc: Any) -> None: ...

@final
class LocalCluster:
    """A whole cluster in this process."""

    def __new__(
        cls,
        workers: int = 2,
        apps: Optional[Mapping[str, _Handler]] = None,
        *,
        distributors: int = 1,
        cores: int = 4,
        mem: Optional[_Size] = None,
        slots: Optional[int] = None,
        threads: Optional[int] = None,
        labels: Union[None, Mapping[str, _AttrValue], Sequence[Mapping[str, _AttrValue]]] = None,
        builtins: Optional[Sequence[str]] = None,
        timeout: float = 20.0,
    ) -> "LocalCluster": ...
    def client(
        self,
        name: str = "client",
        attrs: Optional[Mapping[str, _AttrValue]] = None,
        *,
        retry_for: float = 5.0,
    ) -> Client: ...
    def issue(self, name: str, role: str = "worker") -> str: ...
    @property
    def gateways(self) -> List[str]: ...
    @property
    def distributors(self) -> List[str]: ...
    @property
    def workers(self) -> List[str]: ...
    @property
    def pki(self) -> str: ...
    def stop(self) -> None: ...
    def __enter__(self) -> "LocalCluster": ...
    def __exit__(self, *exc: Any) -> None: ...

def _resolve_futures(batch: List[Tuple[Any, bool, Any]]) -> None: ...
