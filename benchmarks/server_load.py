"""Load on the federation server: N concurrent clients over loopback, real 320 KB module updates.

Question: how many uploads per second does one server accept AND aggregate on this machine, at what
upload latency, with how much memory, and does it lose or duplicate any update?

Each simulated client loops: GET the round → GET the global module → POST its update (a distinct
safetensors body of the manifest's shapes) → wait for the next round. A round closes when every client
has sent (min_clients = N), so every update is aggregated. Counts come from the server's database.

    python benchmarks/server_load.py --clients 64 --seconds 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from machine import cpu_name, cpu_shares

import fedyolo
from fedyolo.fedserver.store import DB_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the synthetic bundle is a test fixture
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.wire import encode_module
from tests.synthetic import ADAPTER_MODULE, build_bundle

KEY = "server-load-benchmark-key-0001"
RESULTS = Path(__file__).parent / "results" / "server_load.json"
_load_at_start: list[float] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(conn: http.client.HTTPConnection | RawHttp, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    if isinstance(conn, RawHttp):
        return conn.request(method, path, body, headers or {})
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class RawHttp:
    """One keep-alive HTTP/1.1 connection that sends each request in one `sendall` and reads each answer
    into a buffer it reuses, with none of `http.client`'s header parsing (email.parser) or buffered reads.

    The clients of this benchmark stand in for phones, which do not share the server's cores; their own
    CPU is measurement overhead. `http.client` spent ~1.6 ms of CPU per upload (poll, module, upload) on
    the shared 2 cores; the same requests and answers, read whole, cost about a third of that here.
    The answers must carry a Content-Length (the server's do); one request is outstanding at a time.
    """

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(1 << 20)

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(head if body is None else head + body)
        view, got = memoryview(self.buf), 0
        while (end := self.buf.find(b"\r\n\r\n", 0, got)) < 0:
            got += self._recv(view[got:])
        match = CONTENT_LENGTH.search(self.buf, 0, end + 2)
        if match is None or self.buf[:9] != b"HTTP/1.1 ":
            raise ConnectionError(f"an answer without Content-Length: {bytes(self.buf[:end])!r}")
        total = end + 4 + int(match[1])
        if total > len(self.buf):
            self.buf.extend(bytes(total - len(self.buf)))
            view = memoryview(self.buf)
        while got < total:
            got += self._recv(view[got:total])
        return int(self.buf[9:12]), bytes(view[end + 4 : total])

    def _recv(self, into: memoryview) -> int:
        n = self.sock.recv_into(into)
        if n == 0:
            raise ConnectionError("the server closed the connection")
        return n

    def close(self) -> None:
        self.sock.close()


def distinct_body(base: bytes, serial: int) -> bytes:
    """`base` with the first value of its first tensor replaced by `serial * 1e-7`: another sha256 each call.

    The blob store keeps one file per distinct body (content-addressed), so a repeated body would cost no
    write and no fsync; every upload of a real client differs, and so must every upload here.
    """
    (header_len,) = struct.unpack("<Q", base[:8])
    start = 8 + header_len  # the first tensor's data; its dtype is float32 (fp32 wire)
    return base[:start] + struct.pack("<f", serial * 1e-7) + base[start + 4 :]


def client_loop(
    port: int, token: str, bodies: list[bytes], stop: Any, out: dict[str, list], http_client: str
) -> None:
    """One device: poll the round, fetch the module, upload once per round; record latency and acks.

    Each upload is a distinct body (one of `bodies` with a serial number written into it).
    """
    conn: http.client.HTTPConnection | RawHttp = (
        RawHttp(port, timeout=60)
        if http_client == "raw"
        else http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    )
    auth = {"Authorization": f"Bearer {token}"}
    last = 0
    serial = 0
    rng = random.Random(token)
    while not stop.is_set():
        # Long poll: the server answers when a round newer than ours is open (or after 5 s).
        status, raw = request(conn, "GET", f"/v1/tasks/topics/round?newer_than={last}&wait_s=5", headers=auth)
        out["polls"].append(1)
        info = json.loads(raw)
        if status != 200 or info["status"] != "open" or info["round"] <= last:
            continue
        status, module = request(
            conn, "GET", f"/v1/tasks/topics/modules/{info['module_version']}", headers=auth
        )
        assert status == 200 and len(module) > 300_000
        key = uuid.uuid4().hex
        headers = auth | {
            "Idempotency-Key": key,
            "Fedyolo-Examples": str(rng.randint(10, 200)),
            "Fedyolo-Metrics": '{"accuracy": 0.5, "loss": 1.0}',
            "Content-Type": "application/octet-stream",
        }
        serial += 1
        body = distinct_body(bodies[rng.randrange(len(bodies))], serial)
        t0 = time.perf_counter()
        status, raw = request(conn, "POST", f"/v1/tasks/topics/rounds/{info['round']}/updates", body, headers)
        latency = time.perf_counter() - t0
        if status == 201:
            out["latency"].append(latency)
            out["acks"].append((key, info["round"]))
            last = info["round"]
        else:
            out["refused"].append(status)
    conn.close()


def client_group(
    port: int, jobs: list[tuple[str, list[bytes]]], stop: Any, results: Any, http_client: str
) -> None:
    """One load-generator process: a thread per client; puts what they saw, and its CPU time, on `results`."""
    out: dict[str, list] = {"latency": [], "acks": [], "refused": [], "polls": []}
    threads = [
        threading.Thread(target=client_loop, args=(port, tok, bodies, stop, out, http_client))
        for tok, bodies in jobs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    own = psutil.Process().cpu_times()
    results.put(out | {"cpu_s": [own.user + own.system]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument(
        "--bodies", type=int, default=2,
        help="base update bodies per client (each upload also carries a serial number: no two are equal)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="server processes")
    p.add_argument("--loadgen-processes", type=int, default=4, help="processes the simulated clients run in")
    p.add_argument(
        "--http-client", choices=("raw", "http.client"), default="raw",
        help="the clients' HTTP: raw (one send per request, answers read into a reused buffer; the default "
        "since 2026-11-30) or Python's http.client (the earlier runs: ~1.6 ms of the shared CPU per upload)",
    )  # fmt: skip
    p.add_argument(
        "--work-dir", type=Path, default=None,
        help="where the bundle and the server state go (default: a temp dir on disk; /dev/shm takes the "
        "disk's flush bandwidth out of the measurement)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--keep", action="store_true",
        help="keep the bundle and the server state (every upload's blob: ~1 GB a 20 s run); removed by default",
    )  # fmt: skip
    args = p.parse_args()

    global _load_at_start
    _load_at_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews the figures
    work = Path(tempfile.mkdtemp(prefix="fedyolo-load-", dir=args.work_dir))
    bundle = open_bundle(build_bundle(work / "bundle", tasks={"topics": ADAPTER_MODULE}))
    task = bundle.task("topics")
    port = free_port()
    cmd = [
        sys.executable, "-m", "fedyolo.fedserver", str(bundle.root), "--state-dir", str(work / "state"),
        "--port", str(port), "--min-clients", str(args.clients), "--rounds", "1000000",
        "--enroll-key", KEY, "--log-level", "warning", "--deadline-s", "3600", "--workers", str(args.workers),
    ]  # fmt: skip
    with open(work / "server.log", "wb") as log:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    proc = psutil.Process(server.pid)

    def tree() -> list[psutil.Process]:
        return [proc, *proc.children(recursive=True)]

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(300):
            try:
                if request(conn, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                time.sleep(0.1)
        tokens = []
        for i in range(args.clients):
            _, raw = request(conn, "POST", "/v1/clients", json.dumps({"enroll_key": KEY, "name": f"load{i}"}).encode(),
                             {"Content-Type": "application/json"})  # fmt: skip
            tokens.append(json.loads(raw)["token"])
        rng = np.random.default_rng(0)
        jobs = [
            (tok, [
                encode_module({t.name: 0.02 * rng.standard_normal(t.shape).astype(np.float32) for t in task.trainable}, task)
                for _ in range(args.bodies)
            ])
            for tok in tokens
        ]  # fmt: skip
        # Clients in several processes, a thread each: one process's GIL would queue 64 clients' requests
        # behind one another and time the load generator, not the server.
        fork = multiprocessing.get_context("fork")
        stop, results = fork.Event(), fork.Queue()
        groups = [
            fork.Process(target=client_group, args=(port, jobs[g :: args.loadgen_processes], stop, results, args.http_client), daemon=True)
            for g in range(min(args.loadgen_processes, len(jobs)))
        ]  # fmt: skip
        peak_rss = 0
        cpu0, shares0 = _cpu(tree()), psutil.cpu_times()
        t_start = time.time()
        for g in groups:
            g.start()
        spread: list[int] = []
        while time.time() - t_start < args.seconds:
            peak_rss = max(peak_rss, sum(p.memory_info().rss for p in tree()))
            if not spread and time.time() - t_start > args.seconds / 2:
                spread = connections_per_worker(tree(), port)
            time.sleep(0.1)
        stop.set()
        out: dict[str, list] = {"latency": [], "acks": [], "refused": [], "polls": [], "cpu_s": []}
        for _ in groups:
            for key, values in results.get(timeout=120).items():
                out[key] += values
        for g in groups:
            g.join(timeout=60)
        t_stop = time.time()
        server_cpu = (_cpu(tree()) - cpu0) / (t_stop - t_start)
        shares = cpu_shares(shares0, psutil.cpu_times())
        loadgen_cpu = sum(out["cpu_s"]) / (t_stop - t_start)
        time.sleep(2.0)  # the last round cannot close (clients stopped); committed rounds are final
    finally:
        server.terminate()
        server.wait(timeout=30)

    db = sqlite3.connect(work / "state" / DB_NAME)
    rows = db.execute("SELECT idempotency_key, round, client_id FROM updates").fetchall()
    distinct_blobs = db.execute("SELECT COUNT(DISTINCT blob) FROM updates").fetchone()[0]
    committed = db.execute(
        "SELECT round, opened_at, committed_at FROM rounds WHERE status = 'committed' ORDER BY round"
    ).fetchall()
    agg_updates = db.execute(
        "SELECT COUNT(*) FROM updates u JOIN rounds r ON u.task_id = r.task_id AND u.round = r.round "
        "WHERE r.status = 'committed'"
    ).fetchone()[0]
    first_received = db.execute("SELECT MIN(received_at) FROM updates").fetchone()[0]
    # Where a round's time goes: open -> first upload, first -> last upload, closed -> committed.
    phases = db.execute(
        "SELECT AVG(f - r.opened_at), AVG(l - f), AVG(r.committed_at - r.closed_at) FROM rounds r JOIN "
        "(SELECT round, MIN(received_at) AS f, MAX(received_at) AS l FROM updates GROUP BY round) u "
        "ON u.round = r.round WHERE r.status = 'committed'"
    ).fetchone()
    db.close()
    keys = {k for k, _, _ in rows}
    acked = {k for k, _ in out["acks"]}
    lost = len(acked - keys)
    duplicated = len(rows) - len(keys) + len(out["acks"]) - len(acked)
    span = committed[-1][2] - first_received if committed else float("nan")
    lat = sorted(out["latency"])
    result = {
        "question": "uploads/s accepted and aggregated by one fedserver (server_workers processes) over loopback, 320 KB updates",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "clients": args.clients,
        "module_bytes": task.module_bytes,
        "seconds": round(t_stop - t_start, 2),
        "uploads_accepted": len(out["acks"]),
        "uploads_aggregated": agg_updates,
        "rounds_committed": len(committed),
        "aggregated_per_s": round(agg_updates / span, 1) if committed else 0.0,
        "accepted_per_s": round(len(out["acks"]) / (t_stop - t_start), 1),
        "upload_latency_ms": {
            "median": round(1000 * statistics.median(lat), 2) if lat else None,
            "p95": round(1000 * lat[int(0.95 * (len(lat) - 1))], 2) if lat else None,
            "max": round(1000 * lat[-1], 2) if lat else None,
        },
        "round_phases_ms": {
            "open_to_first_upload": round(1000 * (phases[0] or 0), 1),
            "first_to_last_upload": round(1000 * (phases[1] or 0), 1),
            "close_to_commit": round(1000 * (phases[2] or 0), 1),
        },
        "distinct_update_blobs": distinct_blobs,  # = uploads_accepted: every upload was written and fsynced
        "refused": len(out["refused"]),
        "round_polls_per_upload": round(len(out["polls"]) / max(1, len(out["acks"])), 2),
        "lost": lost,
        "duplicated": duplicated,
        "server_workers": args.workers,
        # The kernel hands each client's connection to whichever worker accepts first: an uneven split
        # leaves one worker's GIL the bottleneck (seen: 39/25 at 64 clients).
        "connections_per_worker": spread,
        "load_generator_processes": len(groups),
        "load_generator_http": args.http_client,
        "state_dir": str(work / "state") if args.keep else None,
        "server_peak_rss_mb": round(peak_rss / 2**20, 1),
        "server_cpu_cores_busy": round(server_cpu, 2),
        "load_generator_cpu_cores_busy": round(loadgen_cpu, 2),
        # Robust to other work on a shared machine: CPU spent per accepted upload, server and clients.
        "server_cpu_ms_per_upload": round(1000 * server_cpu * (t_stop - t_start) / max(1, len(out["acks"])), 2),
        "total_cpu_ms_per_upload": round(
            1000 * (server_cpu + loadgen_cpu) * (t_stop - t_start) / max(1, len(out["acks"])), 2
        ),
        "machine": {
            "cpu": cpu_name(),
            "logical_cores": os.cpu_count(),
            "platform": platform.platform(),
            "note": "server and load generator share these cores",
            "load_average_at_start": _load_at_start,
            # Of the whole machine's CPU time during the run: a shared VM loses some to other guests.
            "cpu_time_during_run": shares,
        },
        "versions": {
            "python": platform.python_version(),
            "fedyolo": fedyolo.__version__,
            "sqlite": sqlite3.sqlite_version,
            **{m: _version(m) for m in ("fastapi", "uvicorn", "starlette", "numpy", "safetensors", "h11", "httptools", "uvloop")},
        },
    }  # fmt: skip
    if not args.keep:
        shutil.rmtree(work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def connections_per_worker(processes: list[psutil.Process], port: int) -> list[int]:
    """Established client connections each server process holds, most first."""
    counts = []
    for p in processes:
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:
            continue
        n = sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)
        if n:
            counts.append(n)
    return sorted(counts, reverse=True)


def _cpu(processes: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
