"""A real local Ray cluster (`ray start --head`, plus worker nodes) for tests, with token authentication.

    with running_ray_cluster(Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")), worker_nodes=1) as cluster:
        subprocess.run([..., "--ray-address", cluster.address], env=cluster.driver_environ())
    with running_ray_head(temp_dir) as address:
        ray.init(address=address)            # "127.0.0.2:PORT"; the token comes from the environment

Each node is one `ray start --block` process in a session of its own (and killed if this process dies): it
supervises its gcs_server, raylet, agents and workers (Ray starts them with PR_SET_PDEATHSIG), and SIGTERM
makes it stop them. Stopping is by pid only: SIGTERM to that process, SIGKILL to its process group after a
grace time, then SIGKILL to any process left whose command line names this cluster's temp folder. Never
`ray stop`: it kills every Ray process of the machine, other people's clusters included.

The GCS, Ray Client and dashboard-agent ports are chosen free here, the rest are Ray's random ones, and
every node is 127.0.0.2: `ray start` replaces 127.0.0.1 (and localhost) with the machine's first address,
but keeps any other loopback address, so no traffic leaves loopback and parallel sessions don't meet.

Token auth (Ray >= 2.52): a token is written to TEMP/auth_token (0600) and the nodes get RAY_AUTH_MODE=token
and RAY_AUTH_TOKEN_PATH; `running_ray_head` puts the same two variables in os.environ for the block (and
makes an already imported Ray reread them), which is what a driver's `ray.init(address=...)` and the `ray`
CLI read. With auth=False the nodes and the driver get RAY_AUTH_MODE=disabled explicitly: unset, `ray start`
turns token auth on whenever ~/.ray/auth_token exists (which any `ray.init()` without an address writes).

Keep TEMP short (under /tmp): Ray's Unix sockets live in TEMP/session_*/sockets/ and such a path may not
pass 107 bytes (`ray start` exits: "AF_UNIX path length cannot exceed 107 bytes").
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support.net import free_ports

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
NODE_IP = "127.0.0.2"  # not 127.0.0.1, which `ray start` replaces with the machine's first address
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")


class RayStartError(RuntimeError):
    """A node exited or did not come up in time; the message ends with its output's last lines."""


@dataclass
class RayCluster:
    """A running local cluster: its GCS address, Ray Client address, the variables a driver needs, and the
    `ray start --block` process of each node (the head first)."""

    temp_dir: Path
    address: str
    client_address: str
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def driver_environ(self) -> dict[str, str]:
        """os.environ for a driver subprocess: this cluster's auth variables and no other of Ray's."""
        base = {k: v for k, v in os.environ.items() if k not in AUTH_VARS and k != "RAY_ADDRESS"}
        return base | self.env

    def descendants(self, text: str) -> list[int]:
        """Pids of this cluster's processes (children of its nodes, at any depth) whose command line
        contains `text`: Ray's workers rename themselves ("ray::MapWorker(...)"), so the temp folder does
        not find them, but they descend from a node's `ray start`."""
        roots = {proc.pid for proc in self.procs}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if text.encode() not in (entry / "cmdline").read_bytes():
                    continue
                pid = int(entry.name)
                for _ in range(16):  # up the parent chain to a node's `ray start`, or to init
                    pid = _parent(pid)
                    if pid in roots:
                        found.append(int(entry.name))
                        break
                    if pid <= 1:
                        break
        return found


def ray_command() -> list[str]:
    """The `ray` script beside this interpreter (the venv's), else Ray's CLI run by this interpreter (a venv
    that reuses another's packages has no script of its own)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def auth_env(temp_dir: Path, *, auth: bool) -> dict[str, str]:
    """The auth variables for nodes and drivers; with `auth`, a new token in temp_dir/auth_token."""
    if not auth:
        return {"RAY_AUTH_MODE": "disabled"}
    token_path = temp_dir / "auth_token"
    if not token_path.exists():
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the process that started it dies (Linux); Ray's own
    processes die with it in turn, so a killed test run leaves no cluster behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    node_env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS and k != "RAY_ADDRESS"}
    node_env |= env | {"RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*ray_command(), "start", "--block", *args],
            env=node_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that stopping it touches nothing else
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def _wait_started(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Until `ray start --block` says it is blocking (its nodes' processes are up and registered)."""
    deadline = time.monotonic() + timeout_s
    while b"will now block" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not up in {timeout_s}s"
            _stop_node(proc, grace_s=2)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RayStartError(f"`ray start` {why}:\n{tail}")
        time.sleep(0.2)


def start_ray_head(
    temp_dir: Path, *, num_cpus: int = 2, auth: bool = True, timeout_s: float = START_TIMEOUT_S
) -> RayCluster:
    """Start a head node with `num_cpus` CPUs, no GPU and no dashboard, its files in `temp_dir`.

    Raises:
        RayStartError: it exited or was not up within `timeout_s` (it is stopped then).
    """
    temp_dir = temp_dir.resolve()
    temp_dir.mkdir(parents=True, exist_ok=True)
    env = auth_env(temp_dir, auth=auth)
    gcs, client, agent = free_ports(3)
    log = temp_dir / "head.log"
    proc = _spawn(
        [
            "--head",
            f"--node-ip-address={NODE_IP}",
            f"--port={gcs}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            "--include-dashboard=false",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env,
        log,
    )
    _wait_started(proc, log, timeout_s)
    return RayCluster(temp_dir, f"{NODE_IP}:{gcs}", f"ray://{NODE_IP}:{client}", env, [proc])


def add_worker_node(
    cluster: RayCluster,
    *,
    num_cpus: int = 1,
    resources: str | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> subprocess.Popen[bytes]:
    """Join another node (another raylet on this machine) to `cluster`; returns its `ray start` process.
    `resources`: a JSON object of custom resources, e.g. '{"node2": 1}'."""
    (agent,) = free_ports(1)
    log = cluster.temp_dir / f"worker-{len(cluster.procs)}.log"
    args = [
        f"--address={cluster.address}",
        f"--node-ip-address={NODE_IP}",
        f"--dashboard-agent-listen-port={agent}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--disable-usage-stats",
    ]
    if resources:
        args.append(f"--resources={resources}")
    proc = _spawn(args, cluster.env, log)
    _wait_started(proc, log, timeout_s)
    cluster.procs.append(proc)
    return proc


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])  # the field after the state, past a name with spaces


def _pids_naming(text: str) -> list[int]:
    """Pids of this user's processes whose command line contains `text` (this cluster's temp folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == os.getuid() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def _stop_node(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` then stops its node's processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_ray(cluster: RayCluster, grace_s: float = STOP_GRACE_S) -> None:
    """Stop every node of `cluster`, workers first, then anything left that names its temp folder."""
    for proc in reversed(cluster.procs):
        _stop_node(proc, grace_s)
    for pid in _pids_naming(str(cluster.temp_dir)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _reload_ray_auth() -> None:
    """Make an already imported Ray read the auth variables again: its RayConfig holds RAY_AUTH_MODE and
    its token loader caches the first token it read for the life of the process (a second cluster with
    another token, or one after a local `ray.init()` that used ~/.ray/auth_token, is refused otherwise)."""
    raylet = sys.modules.get("ray._raylet")
    if raylet is None:
        return  # Ray reads the environment when it is imported
    raylet.Config.initialize("")  # as Ray's own _enable_token_auth does
    raylet.AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def driver_env(env: dict[str, str]) -> Iterator[None]:
    """os.environ with the cluster's auth variables (and no others of Ray's auth) for the block."""
    saved = {k: os.environ.get(k) for k in AUTH_VARS}
    for key in AUTH_VARS:
        os.environ.pop(key, None)
    os.environ.update(env)
    _reload_ray_auth()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_ray_auth()


@contextlib.contextmanager
def running_ray_cluster(
    temp_dir: Path, *, num_cpus: int = 2, worker_nodes: int = 0, worker_cpus: int = 1, auth: bool = True
) -> Iterator[RayCluster]:
    """A local cluster for the block: a head with `num_cpus` CPUs and `worker_nodes` more nodes of
    `worker_cpus` each; os.environ is left alone (drivers in subprocesses take `driver_environ()`)."""
    cluster = start_ray_head(Path(temp_dir), num_cpus=num_cpus, auth=auth)
    try:
        for _ in range(worker_nodes):
            add_worker_node(cluster, num_cpus=worker_cpus)
        yield cluster
    finally:
        stop_ray(cluster)


@contextlib.contextmanager
def running_ray_head(
    temp_dir: Path, *, num_cpus: int = 2, worker_nodes: int = 0, auth: bool = True
) -> Iterator[str]:
    """A local cluster for the block: a head with `num_cpus` CPUs and `worker_nodes` more nodes of one CPU
    each; yields the address for `ray.init(address=...)`, with the driver's auth variables in os.environ."""
    cluster = start_ray_head(Path(temp_dir), num_cpus=num_cpus, auth=auth)
    try:
        for _ in range(worker_nodes):
            add_worker_node(cluster)
        with driver_env(cluster.env):
            yield cluster.address
    finally:
        stop_ray(cluster)
