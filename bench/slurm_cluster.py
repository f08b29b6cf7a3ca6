"""A real SLURM on this machine, for running the documented cluster recipes: munged, slurmctld and one slurmd per
node (two or more nodes, all on 127.0.0.1), configured in a temporary folder and stopped at the end.

    with LocalSlurm(nodes=2) as slurm:      # SLURM_CONF is set for this process and its children
        slurm.run(["sbatch", "--wait", "job.sbatch"])

The packages come from the distribution (``apt-get install slurm-wlm munge``, Debian bookworm: SLURM 22.05);
``ensure_slurm()`` installs them when they are missing and says in one line why SLURM cannot run where it cannot
(not root, no apt, no network to the package mirror). The daemons run as root, the only user this needs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_slurm() -> str | None:
    """None when SLURM and munge are installed (installing them with apt if needed); else why they cannot be."""
    if all(shutil.which(d) or shutil.which(d, path="/usr/sbin") for d in DAEMONS):
        return None
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it needs root"
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and this machine has no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["failed"]
            return f"apt-get could not install slurm-wlm and munge: {last[0]}"
    return None


def slurm_version() -> str:
    return subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()


class LocalSlurm:
    """A one-machine SLURM cluster of ``nodes`` nodes (``cpus`` CPUs each) in a temporary folder."""

    def __init__(self, nodes: int = 2, cpus: int = 2, memory_mb: int = 4000):
        self.nodes, self.cpus, self.memory_mb = nodes, cpus, memory_mb
        self.names = [f"n{i}" for i in range(1, nodes + 1)]
        self.dir = Path(tempfile.mkdtemp(prefix="laanet-slurm-"))
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.dir / "slurm.conf"))
        self.hosts_line = f"127.0.0.1 {' '.join(self.names)}  # laanet-slurm {self.dir}\n"

    # ------------------------------------------------------------------------------------------- setup
    def _conf(self) -> str:
        d = self.dir
        nodes = "\n".join(f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={_free_port()} "
                          f"CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN" for n in self.names)
        return f"""ClusterName=laanet
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/sock
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/spool/%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=5
{nodes}
PartitionName=debug Nodes={",".join(self.names)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""

    def _hosts(self, add: bool) -> None:
        """The node names resolve to this machine (an /etc/hosts line while the cluster runs), so jobs that contact
        their first node by name, as torchrun's rendezvous does, work as on a real cluster."""
        hosts = Path("/etc/hosts")
        lines = [ln for ln in hosts.read_text().splitlines(keepends=True) if ln != self.hosts_line]
        hosts.write_text("".join(lines) + (self.hosts_line if add else ""))

    def __enter__(self) -> "LocalSlurm":
        self._hosts(add=True)
        d = self.dir
        for sub in ("munge", "state", "log", *(f"spool/{n}" for n in self.names)):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / "munge", 0o700)
        subprocess.run(["mungekey", "-c", "-f", "-k", str(d / "munge" / "munge.key")], check=True,
                       capture_output=True)
        subprocess.run(["munged", "--force", "-S", str(d / "munge" / "sock"), "--key-file",
                        str(d / "munge" / "munge.key"), "--pid-file", str(d / "munge" / "pid"), "--log-file",
                        str(d / "munge" / "log"), "--seed-file", str(d / "munge" / "seed")], check=True,
                       capture_output=True)
        (d / "slurm.conf").write_text(self._conf())
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-c"], env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        for n in self.names:
            self.procs.append(subprocess.Popen(["slurmd", "-D", "-N", n], env=self.env,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self._wait_idle()
        return self

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.run(["sinfo", "-h", "-o", "%T %D"], check=False)
            if r.returncode == 0 and any(line.startswith("idle") and int(line.split()[1]) == self.nodes
                                         for line in r.stdout.splitlines()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM did not come up in {timeout:.0f} s (logs in {self.dir / 'log'})")

    def __exit__(self, *exc) -> None:
        self.run(["scancel", "--full", "--user=root"], check=False)
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        pid = self.dir / "munge" / "pid"
        if pid.is_file():
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (OSError, ValueError):
                pass
        self._hosts(add=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------------- use
    def run(self, cmd: list[str], check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        """A SLURM command (sbatch, squeue, scancel, ...) against this cluster."""
        env = {**self.env, **kw.pop("env", {})}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=check, timeout=timeout, **kw)
