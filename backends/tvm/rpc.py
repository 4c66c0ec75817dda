"""Remote devices through TVM's RPC tracker, with every wait bounded: a tracker or server that
does not answer is an RPCError after a timeout, never a hang. Also a local pool (a tracker and
servers on 127.0.0.1) for tests and for spreading runs over the cores of one machine."""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from prunepass.backends.tvm.errors import RPCError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RPCTracker:
    """Where devices are found: a tracker address and the key the devices registered with."""
    host: str
    port: int
    key: str
    timeout_s: float = DEFAULT_TIMEOUT_S   # bound on each wait: connect, reply, free device

    @classmethod
    def parse(cls, address: str, key: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> RPCTracker:
        """``address`` is "host:port"."""
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RPCError(f"RPC tracker address {address!r} is not host:port (e.g. 10.0.0.5:9190)")
        return cls(host, int(port), key, timeout_s)

    def __str__(self) -> str:
        return f"{self.host}:{self.port} (key {self.key!r})"


def tracker_summary(tracker: RPCTracker) -> dict[str, Any]:
    """The tracker's view of its servers and queues."""
    from tvm.rpc import base
    with _TrackerSocket(tracker) as sock:
        reply = _ask(sock, tracker, [base.TrackerCode.SUMMARY])
    return reply[1]


def wait_for_device(tracker: RPCTracker) -> None:
    """Return once the tracker lists a server with the tracker's key; RPCError after timeout_s."""
    deadline = time.monotonic() + tracker.timeout_s
    keys: list[str] = []
    while True:
        summary = tracker_summary(tracker)
        keys = sorted({info["key"].split(":", 1)[-1] for info in summary.get("server_info", [])})
        if tracker.key in keys:
            return
        if time.monotonic() > deadline:
            raise RPCError(f"the RPC tracker at {tracker.host}:{tracker.port} has no device with "
                           f"key {tracker.key!r} after {tracker.timeout_s:g} s (keys there: "
                           f"{', '.join(keys) or 'none'}); start one with python -m "
                           f"tvm.exec.rpc_server --tracker {tracker.host}:{tracker.port} "
                           f"--key {tracker.key}")
        time.sleep(0.2)


def request_session(tracker: RPCTracker, session_timeout_s: float = 0) -> Any:
    """A session on a free device with the tracker's key (tvm.rpc.RPCSession).
    session_timeout_s: the server ends the session after that long (0: never)."""
    import tvm.rpc
    from tvm.rpc import base
    wait_for_device(tracker)
    with _TrackerSocket(tracker) as sock:
        try:
            reply = _ask(sock, tracker, [base.TrackerCode.REQUEST, tracker.key, "", 1])
        except RPCError as err:
            raise RPCError(f"no device with key {tracker.key!r} at {tracker.host}:{tracker.port} "
                           f"became free within {tracker.timeout_s:g} s (all busy?)") from err
    url, port, match_key = reply[1]
    return _bounded(lambda: tvm.rpc.connect(url, port, match_key, session_timeout_s),
                    tracker.timeout_s, f"RPC server {url}:{port} for key {tracker.key!r}")


def remote_vm(session: Any, library: str, device: str = "cpu") -> tuple[Any, Any]:
    """Upload an exported library to the remote, load it, and return (VirtualMachine, device)."""
    from tvm import relax
    name = Path(library).name
    session.upload(library, name)
    dev = session.cuda(0) if device == "cuda" else session.cpu(0)
    return relax.VirtualMachine(session.load_module(name), dev), dev


class LocalRPCPool:
    """A tracker and ``servers`` RPC servers on 127.0.0.1, each in its own process.
    Use as a context manager; the processes end on exit. ``emulate="aarch64"``: the servers
    run aarch64 code under qemu-user (see prunepass.backends.tvm.emulate); they take tens of
    seconds to start, so give ``timeout_s`` room."""

    def __init__(self, key: str = "local", servers: int = 1, port: int = 9190,
                 timeout_s: float = 60.0, emulate: str | None = None) -> None:
        from tvm import rpc
        from tvm.rpc.tracker import Tracker
        if emulate not in (None, "aarch64"):
            raise RPCError(f"emulate={emulate!r}: only aarch64 can be emulated")
        self._procs: list[Any] = []
        try:
            # port..port+200: the first free one; another pool or tracker may hold some.
            tracker = Tracker("127.0.0.1", port=port, port_end=port + 200, silent=True)
            self._procs.append(tracker)
            self.tracker = RPCTracker("127.0.0.1", tracker.port, key, timeout_s)
            for _ in range(servers):
                if emulate:
                    from prunepass.backends.tvm.emulate import start_server
                    self._procs.append(start_server("127.0.0.1", tracker.port, key,
                                                    port + 201, port + 400))
                    continue
                self._procs.append(rpc.Server("127.0.0.1", port=port + 201, port_end=port + 400,
                                              key=key, tracker_addr=("127.0.0.1", tracker.port),
                                              silent=True))
            wait_for_device(self.tracker)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
        self._procs.clear()

    def __enter__(self) -> LocalRPCPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TrackerSocket:
    """A socket to the tracker, handshake done, with timeout_s on every send and receive."""

    def __init__(self, tracker: RPCTracker) -> None:
        self.tracker = tracker

    def __enter__(self) -> socket.socket:
        from tvm.rpc import base
        t = self.tracker
        where = f"{t.host}:{t.port}"
        try:
            self.sock = socket.create_connection((t.host, t.port), timeout=t.timeout_s)
        except OSError as err:
            raise RPCError(f"no RPC tracker answers at {where} ({err.strerror or err}); start one "
                           f"with python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {t.port}"
                           ) from err
        try:
            deadline = time.monotonic() + t.timeout_s
            self.sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", _recv_exactly(self.sock, 4, deadline))[0]
        except (OSError, EOFError) as err:
            self.sock.close()
            raise RPCError(f"{where} accepted a connection but did not answer as an RPC tracker "
                           f"within {t.timeout_s:g} s") from err
        if magic != base.RPC_TRACKER_MAGIC:
            self.sock.close()
            raise RPCError(f"{where} is not a TVM RPC tracker (wrong handshake)")
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _ask(sock: socket.socket, tracker: RPCTracker, message: list[Any]) -> list[Any]:
    from tvm.rpc import base
    deadline = time.monotonic() + tracker.timeout_s
    try:
        data = json.dumps(message).encode()
        sock.sendall(struct.pack("<i", len(data)) + data)
        size = struct.unpack("<i", _recv_exactly(sock, 4, deadline))[0]
        reply = json.loads(_recv_exactly(sock, size, deadline).decode())
    except (OSError, EOFError, ValueError) as err:
        raise RPCError(f"the RPC tracker at {tracker.host}:{tracker.port} did not reply within "
                       f"{tracker.timeout_s:g} s") from err
    if not isinstance(reply, list) or not reply:
        raise RPCError(f"the RPC tracker at {tracker.host}:{tracker.port} sent {reply!r}, not "
                       "a tracker reply")
    if reply[0] != base.TrackerCode.SUCCESS:
        raise RPCError(f"the RPC tracker at {tracker.host}:{tracker.port} refused {message[0]}: "
                       f"{reply}")
    return reply


MAX_REPLY = 1 << 24  # bytes: a tracker's replies are small JSON lists


def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    """``size`` bytes by ``deadline`` (time.monotonic()): a peer that trickles bytes cannot
    hold the caller longer than that, whatever each single read waits."""
    if not 0 <= size <= MAX_REPLY:
        raise ValueError(f"a reply of {size} bytes")
    chunks, got = [], 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        sock.settimeout(left)
        chunk = sock.recv(size - got)
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run ``fn`` (a blocking TVM call that takes no timeout) in a daemon thread; give up
    after timeout_s. The thread may linger until the OS times the socket out."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as err:  # handed to the caller's thread below
            failure.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RPCError(f"{what} did not answer within {timeout_s:g} s")
    if failure:
        raise RPCError(f"{what} failed: {failure[0]}") from failure[0]
    return result[0]
