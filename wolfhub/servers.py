"""Local redis-server and influxd on free loopback ports, in a directory of their own.

Used by the test fixtures and by the example/demo when no servers are configured:
generated configs (loopback binds, no reporting, quiet logs), no /etc files, no docker.
Each server can be stopped, killed (SIGKILL) and restarted on the same port and data.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubdomain.errors import BackendUnavailable
from hubdomain.influxql import ident, literal

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install them with `sudo apt-get install -y redis-server influxdb` (Debian/Ubuntu) "
    "or `brew install redis influxdb@1` (macOS)"
)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own exited child not yet reaped) counts as gone
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortTaken(BackendUnavailable):
    """The server could not listen: its port was taken."""


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise BackendUnavailable("local", f"{name} not found; {INSTALL_HINT}")
    return path


@dataclass
class _Server:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    name: str = "server"
    # the ports were given (a config names them): never move to others
    fixed_ports: bool = False

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart) the server and wait until it answers. At a first start, a
        port taken since :func:`free_port` chose it (another process was quicker) is
        replaced by a fresh one, a few times."""
        for attempt in range(5):
            try:
                self._start(timeout)
                self._started = True
                return
            except PortTaken:
                if self.fixed_ports or getattr(self, "_started", False) or attempt == 4:
                    raise
                log.info("%s: a port was taken meanwhile; trying fresh ports", self.name)
                self.fresh_ports()

    def fresh_ports(self) -> None:
        """New free ports for a server that has never run (its data has no port in it)."""
        self.port = free_port()

    def _start(self, timeout: float) -> None:
        if self.running:
            return
        self.directory = self.directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        logfile = (self.directory / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.directory, start_new_session=True,
        )
        logfile.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.directory / f"{self.name}.log").read_text(errors="replace")[-2000:]
                code = self.process.returncode
                self.process = None
                error = PortTaken if "address already in use" in tail.lower() \
                    else BackendUnavailable
                raise error(self.name, f"exited with {code}: {tail}")
            if self.ready():
                log.info("%s listening on 127.0.0.1:%s", self.name, self.port)
                return
            time.sleep(0.05)
        self.kill()
        raise BackendUnavailable(self.name, f"did not answer on port {self.port} in {timeout}s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the crash a test wants to survive."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (openssl CLI).

    Both carry the extensions strict X.509 checking asks for (Python 3.13's default
    TLS context verifies strictly: a CA without ``keyUsage`` is refused)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {n: directory / f"{n}.pem" for n in ("ca", "ca-key", "cert", "key")}
    ext = directory / "san.ext"
    # (a cluster node is a TLS client of the others with the same certificate)
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    run = [binary("openssl")]
    subprocess.run([*run, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=wolfhub-test-ca",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout", str(paths["ca-key"]),
                    "-out", str(paths["ca"])], check=True, capture_output=True)
    csr = directory / "server.csr"
    subprocess.run([*run, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-keyout", str(paths["key"]), "-out", str(csr)], check=True,
                   capture_output=True)
    subprocess.run([*run, "x509", "-req", "-in", str(csr), "-CA", str(paths["ca"]),
                    "-CAkey", str(paths["ca-key"]), "-CAcreateserial", "-days", "2",
                    "-extfile", str(ext), "-out", str(paths["cert"])], check=True,
                   capture_output=True)
    return paths


@dataclass
class RedisServer(_Server):
    name: str = "redis"
    password: str | None = None
    # ACL rules, e.g. "alice on >secret ~* &* +@all"
    acl_users: list[str] = field(default_factory=list)
    # certificates from make_certificates(): serve TLS only
    tls: dict[str, Path] | None = None
    extra: list[str] = field(default_factory=list)  # more redis-server options

    def fresh_ports(self) -> None:
        super().fresh_ports()
        if "--cluster-port" in self.extra:  # a cluster node's bus port too
            self.extra[self.extra.index("--cluster-port") + 1] = str(free_port())

    def command(self) -> list[str]:
        cmd = [
            binary("redis-server"), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "warning", "--protected-mode", "yes",
        ]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port),
                    "--tls-cert-file", str(self.tls["cert"]),
                    "--tls-key-file", str(self.tls["key"]),
                    "--tls-ca-cert-file", str(self.tls["ca"]), "--tls-auth-clients", "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.password:
            cmd += ["--requirepass", self.password]
        for rule in self.acl_users:
            cmd += ["--user", *rule.split()]
        return cmd + self.extra

    def ready(self) -> bool:
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5))
                if self.tls:
                    context = ssl.create_default_context(cafile=str(self.tls["ca"]))
                    sock = stack.enter_context(
                        context.wrap_socket(sock, server_hostname="127.0.0.1"))
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class SentinelServer(RedisServer):
    """``redis-server --sentinel`` watching one master (quick failover, for tests)."""

    name: str = "sentinel"
    master_port: int = 0
    service: str = "mymaster"

    def fresh_ports(self) -> None:
        super().fresh_ports()
        (self.directory / "sentinel.conf").unlink(missing_ok=True)  # it names the port

    def command(self) -> list[str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"
        if not conf.exists():  # sentinel rewrites it with what it learns
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {self.service} 800\n"
                f"sentinel failover-timeout {self.service} 3000\n")
        return [binary("redis-server"), str(conf), "--sentinel"]


def _cli_options(node: RedisServer) -> list[str]:
    """redis-cli's options to reach ``node``: its password, its TLS CA."""
    out = ["-a", node.password, "--no-auth-warning"] if node.password else []
    if node.tls:
        out += ["--tls", "--cacert", str(node.tls["ca"])]
    return out


@dataclass
class RedisClusterServers:
    """A Redis Cluster on loopback: ``masters`` masters with ``replicas`` replicas each
    (``redis-cli --cluster create``), quick failover (node timeout ``node_timeout_ms``)."""

    directory: Path
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000
    password: str | None = None  # requirepass on every node (and masterauth for replicas)
    # certificates from make_certificates(): clients, replication and the bus all use TLS
    tls: dict[str, Path] | None = None
    # Redis' default (yes): every node refuses queries while any slot has no live master
    full_coverage: bool = True
    nodes: list[RedisServer] = field(init=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()
        count = self.masters * (1 + self.replicas)
        self.nodes = [self._node(f"node{i}") for i in range(count)]

    def _node(self, name: str) -> RedisServer:
        options = [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            # the bus port must be named: port + 10000 may be taken or out of range
            "--cluster-port", str(free_port()),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # a killed master's replica takes over however long it was disconnected
            "--cluster-replica-validity-factor", "0"]
        if self.password:
            options += ["--masterauth", self.password]
        if self.tls:
            options += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        if not self.full_coverage:
            options += ["--cluster-require-full-coverage", "no"]
        return RedisServer(self.directory / name, name="redis-cluster", password=self.password,
                           tls=self.tls, extra=options)

    def add_node(self, timeout: float = 30.0) -> RedisServer:
        """Start one more node and introduce it to the cluster (CLUSTER MEET): a master
        without slots until some are moved to it."""
        node = self._node(f"node{len(self.nodes)}")
        node.start()
        self.nodes.append(node)
        bus = node.extra[node.extra.index("--cluster-port") + 1]
        self.ask(self.nodes[0], "CLUSTER", "MEET", "127.0.0.1", str(node.port), bus)
        deadline = time.monotonic() + timeout
        while self.ask(node, "CLUSTER", "NODES").count("\n") < len(self.nodes):
            if time.monotonic() > deadline:
                raise BackendUnavailable("redis-cluster", "new node not known in time")
            time.sleep(0.05)
        return node

    def node_id(self, node: RedisServer) -> str:
        return self.ask(node, "CLUSTER", "MYID").strip()

    def move_slot(self, slot: int, target: RedisServer, timeout: float = 30.0) -> None:
        """Move ``slot`` with its keys to ``target``, the way redis-cli's reshard does."""
        self.begin_move(slot, target)
        self.finish_move(slot, target, timeout)

    def begin_move(self, slot: int, target: RedisServer) -> None:
        """IMPORTING/MIGRATING, then MIGRATE every key: the source answers ASK for them."""
        source = next(n for n in self.nodes if n.running and self._owns(n, slot))
        src, dst = self.node_id(source), self.node_id(target)
        self.ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src)
        self.ask(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst)
        while keys := self.ask(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split():
            for key in keys:
                self.migrate(source, target, key)

    def migrate(self, source: RedisServer, target: RedisServer, key: str) -> str:
        """MIGRATE one key (its single-key form) from ``source`` to ``target``."""
        return self.ask(source, "MIGRATE", "127.0.0.1", str(target.port), key, "0", "5000",
                        *self._migrate_auth())

    def finish_move(self, slot: int, target: RedisServer, timeout: float = 30.0) -> None:
        """SETSLOT NODE on every master; wait until all nodes agree."""
        dst = self.node_id(target)
        for node in self.nodes:
            if node.running and self.ask(node, "ROLE").startswith("master"):
                self.ask(node, "CLUSTER", "SETSLOT", str(slot), "NODE", dst)
        deadline = time.monotonic() + timeout
        while not all(self._owns(target, slot, as_seen_by=n) for n in self.nodes if n.running):
            if time.monotonic() > deadline:
                raise BackendUnavailable("redis-cluster", f"slot {slot} not moved in time")
            time.sleep(0.05)

    def _migrate_auth(self) -> list[str]:
        return ["AUTH", self.password] if self.password else []

    def _owns(self, node: RedisServer, slot: int, as_seen_by: RedisServer | None = None) -> bool:
        """``node`` serves ``slot``, according to ``as_seen_by`` (default: ``node``)."""
        for line in self.ask(as_seen_by or node, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if not fields[1].startswith(f"127.0.0.1:{node.port}@"):
                continue
            for part in fields[8:]:
                lo, _, hi = part.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return True
        return False

    @property
    def seeds(self) -> list[str]:
        """``host:port`` of every node (config ``redis.cluster.nodes``)."""
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        if not (self.nodes[0].directory / "created").exists():
            subprocess.run(
                [binary("redis-cli"), *_cli_options(self.nodes[0]), "--cluster", "create",
                 *self.seeds,
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout)
            (self.nodes[0].directory / "created").touch()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise BackendUnavailable("redis-cluster", f"not ready in {timeout}s")
            time.sleep(0.1)

    @staticmethod
    def ask(node: RedisServer, *args: str) -> str:
        """One command through redis-cli on ``node``; its printed reply."""
        done = subprocess.run([binary("redis-cli"), *_cli_options(node), "-p",
                               str(node.port), *args], capture_output=True, timeout=10)
        return done.stdout.decode(errors="replace")

    def healthy(self) -> bool:
        """Every running node reports cluster_state:ok and sees every slot served."""
        for node in self.nodes:
            if node.running and "cluster_state:ok" not in self.ask(node, "CLUSTER", "INFO"):
                return False
        return True

    def master_of(self, key: str) -> RedisServer:
        """The running node that serves ``key`` now, as the cluster itself reports."""
        alive = next(n for n in self.nodes if n.running)
        slot = int(self.ask(alive, "CLUSTER", "KEYSLOT", key))
        for node in self.nodes:
            if node.running and self._owns(node, slot, as_seen_by=alive):
                return node
        raise LookupError(f"no running master serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def save_state(self) -> None:
        """Pids and ports in the format of LocalServers.save_state (so ``saved`` and
        ``stop_saved`` work on this directory too)."""
        state = {f"node{i}": {"pid": n.process.pid if n.process else None, "port": n.port}
                 for i, n in enumerate(self.nodes)}
        (self.directory / "state.json").write_text(json.dumps(state, indent=1))

    def __enter__(self) -> RedisClusterServers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class InfluxServer(_Server):
    name: str = "influxd"
    rpc_port: int = field(default_factory=free_port)
    # (user, password): auth-enabled server with this admin user
    admin: tuple[str, str] | None = None

    def fresh_ports(self) -> None:
        super().fresh_ports()
        self.rpc_port = free_port()

    def config_text(self) -> str:
        d = self.directory
        return f"""reporting-enabled = false
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  trace-logging-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  pprof-enabled = false
  auth-enabled = {"true" if self.admin else "false"}
[logging]
  level = "warn"
  suppress-logo = true
[continuous_queries]
  log-enabled = false
"""

    def command(self) -> list[str]:
        conf = self.directory / "influxdb.conf"
        conf.write_text(self.config_text())
        return [binary("influxd"), "run", "-config", str(conf)]

    def ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5)
        try:
            conn.request("GET", "/ping")
            if conn.getresponse().status != 204:
                return False
        except OSError:
            return False
        finally:
            conn.close()
        if self.admin:
            self._create_admin()
        return True

    def _create_admin(self) -> None:
        """With auth on and no user yet, InfluxDB 1.x lets anyone create the first admin."""
        assert self.admin is not None
        user, password = self.admin
        q = f"CREATE USER {ident(user)} WITH PASSWORD {literal(password)} WITH ALL PRIVILEGES"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("POST", "/query?" + urllib.parse.urlencode({"q": q}),
                         headers={"Authorization": "Basic " + base64.b64encode(
                             f"{user}:{password}".encode()).decode()})
            conn.getresponse().read()
        finally:
            conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class LocalServers:
    """A redis-server and an influxd under one directory."""

    directory: Path
    redis_port: int | None = None  # None: any free port
    influx_port: int | None = None
    influx_rpc_port: int | None = None  # influxd's backup/restore service
    redis: RedisServer = field(init=False)
    influx: InfluxServer = field(init=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()  # the servers run with cwd there
        self.redis = RedisServer(self.directory / "redis", port=self.redis_port or free_port(),
                                 fixed_ports=self.redis_port is not None)
        self.influx = InfluxServer(self.directory / "influxdb",
                                   port=self.influx_port or free_port(),
                                   rpc_port=self.influx_rpc_port or free_port(),
                                   fixed_ports=self.influx_port is not None
                                   or self.influx_rpc_port is not None)

    # ---- detached servers (wolfhub up / down / status) ----

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    def save_state(self) -> None:
        """Remember pids and ports so another process can stop or inspect the servers."""
        state = {name: {"pid": server.process.pid if server.process else None,
                        "port": server.port}
                 for name, server in (("redis", self.redis), ("influxdb", self.influx))}
        self.state_file.write_text(json.dumps(state, indent=1))

    @staticmethod
    def saved(directory: Path) -> dict[str, dict[str, Any]]:
        """What ``save_state`` wrote, with ``running`` (the pid is alive and it answers)."""
        path = Path(directory) / "state.json"
        if not path.exists():
            return {}
        state: dict[str, dict[str, Any]] = json.loads(path.read_text())
        for name, entry in state.items():
            probe: _Server = (InfluxServer(Path(directory) / "influxdb", port=entry["port"])
                              if name == "influxdb" else  # redis, or a cluster node
                              RedisServer(Path(directory) / name, port=entry["port"]))
            entry["running"] = _alive(entry.get("pid")) and probe.ready()
        return state

    @staticmethod
    def stop_saved(directory: Path, timeout: float = 15.0) -> list[str]:
        """SIGTERM the servers ``save_state`` recorded; returns the names it stopped."""
        path = Path(directory) / "state.json"
        if not path.exists():
            return []
        stopped = []
        for name, entry in json.loads(path.read_text()).items():
            pid = entry.get("pid")
            if not _alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
        path.unlink()
        return stopped

    def start(self) -> None:
        self.redis.start()
        try:
            self.influx.start()
        except BaseException:
            self.redis.stop()
            raise

    def stop(self) -> None:
        self.influx.stop()
        self.redis.stop()

    def config_overrides(self) -> dict[str, dict[str, object]]:
        """The config sections that point a hub at these servers."""
        return {
            "redis": {"host": "127.0.0.1", "port": self.redis.port},
            "influxdb": {"url": self.influx.url},
        }

    def __enter__(self) -> LocalServers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
