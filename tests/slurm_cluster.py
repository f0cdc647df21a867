"""A throw-away single-node SLURM cluster on loopback, for tests/test_slurm.py.

Everything is private to one directory: its own munge key and socket, its own slurm.conf (non-default ports,
loopback only: ``NoCtldInAddrAny,NoInAddrAny``), state, spool and logs. No accounting database, no systemd, no
cgroups. The node advertises one fake GPU (``gres.conf``: ``File=/dev/null``) so ``--gpus=1`` jobs schedule on a
CPU-only machine. The daemons run in the foreground as children of this process and are stopped by PID.

Usage::

    reason = ensure_slurm()                      # installs the Debian packages when root with apt, else a reason
    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun")
PARTITION = "debug"
GPU_TYPE = "fake"


def _sbin_path() -> str:
    """PATH with the sbin folders (daemons live there; some shells leave them out)."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(parts + [p for p in ("/usr/sbin", "/sbin") if p not in parts])


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b, path=_sbin_path()) is None]


def ensure_slurm(timeout: int = 240) -> str | None:
    """Make the SLURM and munge binaries available; None when ready, else why not (a skip reason)."""
    if os.geteuid() != 0:  # slurmd runs as root and munged is started as the 'munge' user
        return (
            "a private SLURM test cluster needs root (slurmd runs as root); run pytest as root to include it"
        )
    if not missing_binaries():
        return _munge_user_missing()
    if shutil.which("apt-get") is None:
        return (
            f"SLURM is not installed ({', '.join(missing_binaries())} missing) and apt-get is not available"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=timeout)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr.strip()[-500:]}"
    if missing_binaries():
        return f"still missing after apt-get install: {', '.join(missing_binaries())}"
    return _munge_user_missing()


def _munge_user_missing() -> str | None:
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "munged is installed but there is no 'munge' user to run it as"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SlurmCluster:
    """One slurmctld + one slurmd (+ munged) on 127.0.0.1, configured and stopped by this object."""

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int = 4000):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.node = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.munge_dir: Path | None = None
        self.conf = self.root / "etc" / "slurm.conf"
        self.env: dict[str, str] = {}

    # -- configuration ------------------------------------------------------------------------------------------
    def _write_munge(self) -> Path:
        # munged refuses keys and sockets in folders other users can write, and runs as 'munge': give it its own
        # folder under /tmp (pytest's tmp_path is 0700 root, which 'munge' cannot enter).
        self.munge_dir = Path(tempfile.mkdtemp(prefix="invgrad-munge-"))
        user = pwd.getpwnam("munge")
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for path in (self.munge_dir, key):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.munge_dir.chmod(0o711)  # munged: the socket folder must be searchable by all
        return self.munge_dir / "munge.socket"

    def _write_slurm(self, munge_socket: Path) -> None:
        ctld_port, slurmd_port, srun_low = _free_ports(3)
        for name in ("etc", "state", "spool", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            f"""# Private single-node test cluster (tests/slurm_cluster.py): loopback only, no accounting.
ClusterName=invgradtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_low}-{srun_low + 20}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
MpiDefault=none
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{GPU_TYPE}:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.root / "etc" / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu Type={GPU_TYPE} File=/dev/null Count=1\n"
        )

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str], **kwargs) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True, **kwargs
        )
        log.close()

    def start(self, timeout: float = 30) -> SlurmCluster:
        munge_socket = self._write_munge()
        self._write_slurm(munge_socket)
        # The jobstep plugin runs each job through `srun` with every SLURM_* variable but a few removed, SLURM_CONF
        # included; a real cluster keeps slurm.conf at its default path, this one does not: an `srun` shim on PATH
        # points it at the private file.
        shims = self.root / "bin"
        shims.mkdir(exist_ok=True)
        srun = shims / "srun"
        srun.write_text(
            f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun", path=_sbin_path())} "$@"\n'
        )
        srun.chmod(0o755)
        path = f"{shims}{os.pathsep}{_sbin_path()}"
        self.env = {**os.environ, "PATH": path, "SLURM_CONF": str(self.conf)}
        m = self.munge_dir
        self._start(
            "munged",
            [
                shutil.which("munged", path=path),
                "--foreground",
                f"--socket={munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            user="munge",
            group="munge",
        )
        self._wait(lambda: munge_socket.exists(), timeout, "munged did not create its socket")
        conf = ["-f", str(self.conf)]
        self._start("slurmctld", [shutil.which("slurmctld", path=path), "-D", "-i", *conf])
        self._start("slurmd", [shutil.which("slurmd", path=path), "-D", *conf])
        self._wait(self._node_idle, timeout, "the node did not become idle")
        return self

    def _node_idle(self) -> bool:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"], env=self.env, capture_output=True, text=True, timeout=10
        )
        return out.returncode == 0 and out.stdout.strip().startswith("idle")

    def _wait(self, ready, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{message} within {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def ctld_log(self) -> str:
        path = self.root / "log" / "slurmctld.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Cancel leftover jobs, stop every daemon this object started, by PID (reverse order), drop munge's folder."""
        ctld = self.processes.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            user = pwd.getpwuid(os.getuid()).pw_name
            subprocess.run(["scancel", f"--user={user}"], env=self.env, capture_output=True, timeout=10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                queue = subprocess.run(
                    ["squeue", "-h", "-t", "PD,R,CG", "-o", "%i"],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.5)
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.processes.clear()
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
