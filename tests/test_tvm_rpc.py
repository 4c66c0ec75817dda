"""Remote runs through TVM's RPC tracker: a tracker and a server on 127.0.0.1, started and
stopped inside the test; and trackers that never answer, which must fail fast, not hang."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

tvm = pytest.importorskip("tvm", reason="Apache TVM is not installed: pip install "
                          "'apache-tvm==0.27.*' 'apache-tvm-ffi==0.1.14.post1' tornado")
pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado: pip install tornado")

import prunepass  # noqa: E402
from prunepass.backends.tvm import (LocalRPCPool, RPCError, RPCTracker,  # noqa: E402
                                    compile_model, load_library, measure_compiled,
                                    request_session, tracker_summary)
from prunepass.testing import randomize  # noqa: E402

X = (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 4, 1)).eval())
    pruned = prunepass.prune(model, X, "prune-channels<ratio=0.5>,dce").model.eval()
    with torch.no_grad():
        reference = pruned(*X).numpy()
    return compile_model(pruned, X, "x86", tmp_path_factory.mktemp("rpc")), reference


def run_remotely(artifact, tracker: RPCTracker) -> list[np.ndarray]:
    session = request_session(tracker)
    return load_library(artifact.library, "cpu", artifact.inputs, session)(*X)


def test_model_runs_and_is_measured_through_a_local_tracker(compiled):
    artifact, reference = compiled
    with LocalRPCPool(key="test-cpu", timeout_s=60) as pool:
        assert "test-cpu" in str(tracker_summary(pool.tracker)["server_info"])
        out = run_remotely(artifact, pool.tracker)
        np.testing.assert_allclose(out[0], reference, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(out[0], artifact.load()(*X)[0])
        # The server takes one session at a time: the one above ended with run_remotely.
        stats = measure_compiled(artifact, X, repeats=5, number=2, warmup=1, rpc=pool.tracker)
        assert stats.backend == "tvm@test-cpu" and stats.repeats == 5
        assert 0 < stats.q1_ms <= stats.median_ms <= stats.q3_ms < 1000
        tracker = pool.tracker
    # Shut down: the port no longer answers, and saying so takes no time.
    start = time.monotonic()
    with pytest.raises(RPCError, match="no RPC tracker answers"):
        tracker_summary(RPCTracker(tracker.host, tracker.port, tracker.key, timeout_s=5))
    assert time.monotonic() - start < 5


def test_tracker_that_accepts_but_never_answers_times_out():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel accepts connections; nobody ever replies
    try:
        tracker = RPCTracker("127.0.0.1", silent.getsockname()[1], "any", timeout_s=1)
        start = time.monotonic()
        with pytest.raises(RPCError, match="did not answer as an RPC tracker within 1 s"):
            request_session(tracker)
        assert time.monotonic() - start < 4
    finally:
        silent.close()


def test_tracker_without_the_key_names_the_keys_it_has():
    with LocalRPCPool(key="board-a", timeout_s=60) as pool:
        other = RPCTracker(pool.tracker.host, pool.tracker.port, "board-b", timeout_s=1)
        with pytest.raises(RPCError, match=r"no device with key 'board-b'.*board-a"):
            request_session(other)


def test_bad_tracker_address():
    with pytest.raises(RPCError, match="host:port"):
        RPCTracker.parse("localhost", "k")
    assert RPCTracker.parse("10.0.0.5:9190", "rk3588").port == 9190


def test_tracker_that_trickles_bytes_is_bounded_by_one_deadline():
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        # a tracker's handshake at once, then a reply one byte every 0.3 s (20 at most):
        # each read alone returns well within the timeout
        import struct
        from tvm.rpc import base
        conn, _ = server.accept()
        with conn:
            conn.recv(4)
            conn.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            conn.sendall(struct.pack("<i", 100))
            for _ in range(20):
                if stop.wait(0.3):
                    return
                try:
                    conn.sendall(b"\x00")
                except OSError:
                    return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        tracker = RPCTracker("127.0.0.1", server.getsockname()[1], "any", timeout_s=1)
        start = time.monotonic()
        with pytest.raises(RPCError, match="within 1 s"):
            request_session(tracker)
        assert time.monotonic() - start < 3  # not 20 x 0.3 s
    finally:
        stop.set()
        server.close()
        t.join(5)


def test_bench_times_tvm_variants_on_a_device_behind_a_tracker(tmp_path, capsys,
                                                                monkeypatch):
    from prunepass.cli import main
    (tmp_path / "tinynet.py").write_text(
        "import torch\n"
        "def make():\n"
        "    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(),\n"
        "                            torch.nn.Conv2d(16, 8, 3)).eval()\n"
        "    return m, (torch.randn(1, 3, 16, 16),)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with LocalRPCPool(key="bench-cpu", timeout_s=60) as pool:
        argv = ["bench", "tinynet:make", "--backends", "tvm", "--rounds", "2", "--repeats",
                "2", "--rpc-tracker", f"{pool.tracker.host}:{pool.tracker.port}",
                "--rpc-key", "bench-cpu"]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tvm@bench-cpu dense" in out and "tvm@bench-cpu pruned" in out
    assert "measured on the device" in out and "speedup" in out
