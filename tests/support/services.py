"""Services the integration tests start themselves: a real Milvus standalone server (PyPI `milvus`, the
"Embedded Milvus" 2.3.x binaries), on free loopback-advertised ports, stopped by its process group.

    with running_milvus(tmp_path / "milvus") as uri:      # "http://127.0.0.1:PORT"
        client = pymilvus.MilvusClient(uri=uri)

Why not the package's own `MilvusServer`: its embedded etcd always binds 2379/2380 (two servers on one
machine cannot run), its components advertise the machine's first address, it unpacks 246 MB per data
folder and calls os.chdir(). Here the binaries are unpacked once into a cache folder, the package's config
template is rendered with free ports and 127.0.0.1 everywhere, and the one process (`milvus run
standalone`: embedded etcd, rocksmq, local storage) is started in a session of its own, killed with the
process that started it (PR_SET_PDEATHSIG). A restart on the same data folder reuses the last ports
(data_dir/ports.json): on new ones the server waits ~50 s for its old etcd sessions to expire. Milvus 2.3's
gRPC/HTTP servers listen on every interface; only etcd is held to 127.0.0.1.

Also run as `python tests/support/services.py DIR` (prints the URI, serves until SIGINT/SIGTERM), which
`benchmarks/milvus_store.py --server` uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from support.net import free_ports

#: The components' gRPC ports in the package's config template (`{{ NAME_port(int): DEFAULT }}`).
PORT_KEYS = (
    "proxy_port",
    "proxy_internal_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
START_TIMEOUT_S = 120.0
#: SIGTERM starts an orderly stop that, with data loaded, takes longer than 10 s (the coordinators stop first
#: and the nodes keep retrying them); a write is durable once acknowledged, so tests need not wait.
STOP_GRACE_S = 3.0
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*(?:\(\s*\w+\s*\))?\s*(?::\s*([^}]*?))?\s*\}\}")


class MilvusStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log's last lines."""


def default_cache_dir() -> Path:
    """Where the unpacked binaries are kept: $MILVUS_BIN_CACHE, else ~/.cache/milvus-server/VERSION."""
    import milvus

    env = os.environ.get("MILVUS_BIN_CACHE")
    if env:
        return Path(env)
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "milvus-server"
        / str(milvus.__version__)
    )


def milvus_binary(cache_dir: Path | None = None) -> Path:
    """Unpack the package's binaries into `cache_dir`/bin (once: the package checks the md5 of each
    archive against a stamp) and return the `milvus` executable."""
    import milvus

    base = cache_dir or default_cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    milvus._initialize_data_files(str(base))  # private, but the only unpacker the package has
    return base / "bin" / "milvus"


def write_config(
    data_dir: Path, ports: Mapping[str, int], settings: Mapping[str, object] = MappingProxyType({})
) -> Path:
    """Render the package's milvus.yaml template for `data_dir` and `ports` (PORT_KEYS plus etcd_client
    and etcd_peer) into data_dir/configs/, with an embedded-etcd config of its own; returns configs/.
    `settings` overrides the template's other `{{ name }}` items, e.g. {"authorization_enabled": True}."""
    import milvus

    data_dir = data_dir.resolve()
    configs, logs, storage = data_dir / "configs", data_dir / "logs", data_dir / "data"
    for folder in (configs, logs, storage):
        folder.mkdir(parents=True, exist_ok=True)
    package = Path(milvus.__file__).parent / "data"
    values: dict[str, object] = {
        **{key: ports[key] for key in PORT_KEYS},
        "etcd_port": ports["etcd_client"],
        "etcd_log_level": "warn",
        "etcd_log_path": str(logs / "etcd.log"),
        "etcd_data_dir": str(storage / "etcd.data"),
        "local_storage_dir": str(storage),
        "rocksmq_data_dir": str(storage / "rocksmq"),
        "system_log_path": str(logs),
        **settings,
    }

    def fill(match: re.Match[str]) -> str:
        value = values.get(match.group(1), match.group(2))
        if value is None:
            raise KeyError(f"no value for {match.group(1)} in the Milvus config template")
        return str(value).lower() if isinstance(value, bool) else str(value)

    text = _PLACEHOLDER.sub(fill, (package / "config.yaml.template").read_text(encoding="utf-8"))
    # Every component registers 127.0.0.1 (not the machine's first address) in etcd for the others to dial.
    text = re.sub(r"(?m)^([ ]+)ip:[ \t]*(#.*)?$", r"\1ip: 127.0.0.1", text)
    # The embedded etcd listens where its own file says (its defaults are 2379 and 2380, fixed).
    etcd_yaml = configs / "embedEtcd.yaml"
    client, peer = f"http://127.0.0.1:{ports['etcd_client']}", f"http://127.0.0.1:{ports['etcd_peer']}"
    etcd_yaml.write_text(
        f"name: default\ndata-dir: {storage / 'etcd.data'}\n"
        f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\n",
        encoding="utf-8",
    )
    text = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_yaml}\n", 1)
    (configs / "milvus.yaml").write_text(text, encoding="utf-8")
    (configs / "glog.conf").write_text((package / "glog.conf").read_text(encoding="utf-8"), encoding="utf-8")
    return configs


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners: TIME_WAIT is no use
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _ports_for(data_dir: Path) -> dict[str, int]:
    """Free ports for a server on `data_dir`: those of its last run when all are still free (a server
    restarted on other ports waits for its old etcd sessions to expire, about 50 s, before it answers),
    else new ones; recorded in data_dir/ports.json."""
    names = (*PORT_KEYS, "etcd_client", "etcd_peer", "metrics")
    record = data_dir / "ports.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        old = json.loads(record.read_text(encoding="utf-8"))
        if set(old) == set(names) and all(_port_free(int(p)) for p in old.values()):
            return {k: int(v) for k, v in old.items()}
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    data_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(ports), encoding="utf-8")
    return ports


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the process that started it dies (Linux), so that a
    killed test run leaves no server behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return b"OK" in resp.read()
    except (OSError, urllib.error.URLError):
        return False


def _log_tail(data_dir: Path, lines: int = 15) -> str:
    path = data_dir / "logs" / "milvus-stdout.log"
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_milvus(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server, wait up to `grace_s`, then SIGKILL its process group (it was started as the
    leader of a session of its own, so the group is its own and nobody else's)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group, the server too if it hung
    proc.wait()


def start_milvus(
    data_dir: Path,
    *,
    cache_dir: Path | None = None,
    settings: Mapping[str, object] = MappingProxyType({}),
    timeout_s: float = START_TIMEOUT_S,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on free ports with its data, config and logs in `data_dir` (`settings`: see
    `write_config`); returns the process and its client port once /healthz says OK.

    Raises:
        MilvusStartError: it exited, or was not healthy within `timeout_s` (it is stopped then).
    """
    data_dir = data_dir.resolve()
    exe = milvus_binary(cache_dir)
    ports = _ports_for(data_dir)
    configs = write_config(data_dir, ports, settings)
    env = {
        **os.environ,
        "DEPLOY_MODE": "STANDALONE",
        "MILVUSCONF": str(configs),
        "METRICS_PORT": str(ports["metrics"]),  # /healthz and the metrics
        "MILVUS_RUN_DIR": str(data_dir / "run"),  # its pid file
        "LD_LIBRARY_PATH": ":".join(filter(None, [str(exe.parent), os.environ.get("LD_LIBRARY_PATH")])),
    }
    with open(data_dir / "logs" / "milvus-stdout.log", "ab") as log:
        proc = subprocess.Popen(
            [str(exe), "run", "standalone"],
            cwd=data_dir,  # glog writes to ./logs
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    deadline = time.monotonic() + timeout_s
    while not _healthy(ports["metrics"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited with {proc.returncode}"
                if proc.poll() is not None
                else f"not healthy in {timeout_s}s"
            )
            stop_milvus(proc, grace_s=2)
            raise MilvusStartError(f"Milvus in {data_dir} {why}:\n{_log_tail(data_dir)}")
        time.sleep(0.2)
    return proc, ports["proxy_port"]


@contextlib.contextmanager
def running_milvus(
    data_dir: Path,
    *,
    cache_dir: Path | None = None,
    settings: Mapping[str, object] = MappingProxyType({}),
    stop_grace_s: float = STOP_GRACE_S,
) -> Iterator[str]:
    """A Milvus server for the block (see `start_milvus`); yields its URI, http://127.0.0.1:PORT."""
    proc, port = start_milvus(Path(data_dir), cache_dir=cache_dir, settings=settings)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_milvus(proc, stop_grace_s)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # python milvus_server.py DATA_DIR: print the URI, serve until SIGINT/SIGTERM
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # a background job of a script starts with SIGINT ignored
    with running_milvus(Path(sys.argv[1] if len(sys.argv) > 1 else "milvus-data")) as uri:
        print(uri, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
