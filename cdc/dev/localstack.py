"""A private PostgreSQL cluster from local server binaries: the Docker-free local stack.

Used by `cdc stack up|down|psql` (the Makefile's local stack) and by the test harness.
The cluster runs with `wal_level=logical` on its own port, with its unix socket next to
its data. `initdb` refuses to run as root, so when we are root the server runs as the
`postgres` OS user (created if missing); if that user cannot reach the requested
directory (a checkout under a root-only home), the cluster lives under the system temp
dir instead and `.stack/` records where.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cdc.errors import CdcError, ErrorKind

SERVER_USER = "postgres"
LOGICAL_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "64",
    "max_wal_senders": "64",
    "max_connections": "200",
    "fsync": "off",
    "full_page_writes": "off",
    "listen_addresses": "'127.0.0.1'",
    "log_min_messages": "warning",
    "shared_buffers": "128MB",
}
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install them: "
    "Debian/Ubuntu `sudo apt-get install postgresql`, Fedora `sudo dnf install "
    "postgresql-server`, macOS `brew install postgresql@16`; or set CDC_PG_BINDIR to their "
    "directory."
)


def find_bindir() -> Path:
    """The directory holding initdb/pg_ctl: CDC_PG_BINDIR, pg_config, Debian's layout, PATH."""
    candidates: list[Path] = []
    if env := os.environ.get("CDC_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in debian)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise CdcError(ErrorKind.SETUP, INSTALL_HINT)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_server_user() -> None:
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/false", SERVER_USER],
            check=True,
        )


def _server_user_can_reach(directory: Path) -> bool:
    """True if the server user can traverse every directory down to `directory`."""
    probe = subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", "test", "-x", str(directory)], capture_output=True
    )
    return probe.returncode == 0


@dataclass(frozen=True)
class ClusterPaths:
    data: Path
    socket: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def log(self) -> Path:
        return self.data.parent / "postgres.log"


class LocalCluster:
    """One private cluster rooted at `root` (data, socket and log inside it)."""

    def __init__(self, root: Path, port: int, overrides: dict[str, str] | None = None) -> None:
        self.paths = ClusterPaths(data=root / "data", socket=root / "run", port=port)
        self.settings = {**LOGICAL_SETTINGS, **(overrides or {})}
        self.bindir = find_bindir()

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if _is_root():
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check)

    def _prepare_dirs(self) -> None:
        root = self.paths.data.parent
        root.mkdir(parents=True, exist_ok=True)
        self.paths.socket.mkdir(parents=True, exist_ok=True)
        if _is_root():
            _ensure_server_user()
            user = pwd.getpwnam(SERVER_USER)
            for path in (root, self.paths.socket):
                os.chown(path, user.pw_uid, user.pw_gid)
            root.chmod(0o700)

    @property
    def initialized(self) -> bool:
        return (self.paths.data / "PG_VERSION").exists()

    @property
    def running(self) -> bool:
        return (
            self.initialized
            and self._run(["pg_ctl", "status", "-D", str(self.paths.data)], check=False).returncode
            == 0
        )

    def init(self) -> None:
        if self.initialized:
            return
        self._prepare_dirs()
        result = self._run(
            [
                "initdb",
                "--no-sync",
                "--auth=trust",
                "--username",
                SERVER_USER,
                "--encoding=UTF8",
                "--locale=C",
                "-D",
                str(self.paths.data),
            ],
            check=False,
        )
        if result.returncode != 0:
            raise CdcError(ErrorKind.SETUP, f"initdb failed: {result.stderr.strip()}")
        with (self.paths.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# local stack settings\n")
            for key, value in self.settings.items():
                conf.write(f"{key} = {value}\n")

    def start(self) -> None:
        self.init()
        if self.running:
            return
        if port_in_use(self.paths.port):
            raise CdcError(
                ErrorKind.SETUP,
                f"port {self.paths.port} is already in use; stop what listens there or choose "
                "another port (CDC_STACK_PORT)",
            )
        result = self._run(
            [
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.paths.data),
                "-l",
                str(self.paths.log),
                "-o",
                f"-p {self.paths.port} -k {self.paths.socket}",
            ],
            check=False,
        )
        if result.returncode != 0:
            log_tail = self.paths.log.read_text()[-2000:] if self.paths.log.exists() else ""
            raise CdcError(
                ErrorKind.SETUP,
                f"PostgreSQL did not start: {result.stderr.strip()} {log_tail.strip()}",
            )

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run(["pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.paths.data)])

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.paths.data.parent, ignore_errors=True)


@dataclass(frozen=True)
class StackState:
    """What `.stack/stack.json` records about the local stack."""

    cluster_root: str
    port: int
    dsn: str
    clickhouse_url: str


def stack_cluster_root(stack_dir: Path) -> Path:
    """Where the local stack's cluster lives: in `.stack/` when the server user can reach
    it, else under the system temp dir (named after the checkout, so it is stable)."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    if not _is_root():
        return stack_dir / "pg"
    _ensure_server_user()
    if _server_user_can_reach(stack_dir):
        return stack_dir / "pg"
    digest = hashlib.sha1(str(stack_dir.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"cdc-stack-{digest}"


def read_state(stack_dir: Path) -> StackState | None:
    state_file = stack_dir / "stack.json"
    if not state_file.exists():
        return None
    return StackState(**json.loads(state_file.read_text()))


def stack_up(stack_dir: Path, port: int) -> StackState:
    stack_dir = stack_dir.resolve()
    state = read_state(stack_dir)
    root = Path(state.cluster_root) if state else stack_cluster_root(stack_dir)
    port = state.port if state else port
    # The stack is a daemon's home: cap the WAL a stopped daemon's slot may keep.
    cluster = LocalCluster(root, port, overrides={"max_slot_wal_keep_size": "'10GB'"})
    cluster.start()
    new_state = StackState(
        cluster_root=str(root),
        port=port,
        dsn=cluster.paths.dsn,
        clickhouse_url=f"chdb://{(stack_dir / 'clickhouse').resolve()}",
    )
    (stack_dir / "stack.json").write_text(json.dumps(asdict(new_state), indent=2))
    return new_state


def stack_down(stack_dir: Path, purge: bool = False) -> StackState | None:
    state = read_state(stack_dir)
    if state is None:
        return None
    cluster = LocalCluster(Path(state.cluster_root), state.port)
    if purge:
        cluster.destroy()
        shutil.rmtree(stack_dir, ignore_errors=True)
    else:
        cluster.stop()
    return state
