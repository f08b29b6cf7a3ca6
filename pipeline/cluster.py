"""Which Dask cluster a pipeline run uses, and checks that its workers can do the work before any is submitted.

The cluster (the first that applies):

1. ``scheduler``: the address of a running scheduler (``--scheduler tcp://host:8786``);
2. ``scheduler_file``: the JSON file a scheduler wrote (``dask scheduler --scheduler-file F``, dask-mpi, a
   SLURM job); waited for up to Dask's connect timeout when it does not exist yet;
3. Dask's ``scheduler-address`` setting, i.e. the ``DASK_SCHEDULER_ADDRESS`` environment variable, unless
   ``workers`` is given (an explicit ``--workers N`` asks for a cluster on this machine);
4. a LocalCluster of ``workers`` single-threaded processes (default: one per core).

On a cluster of its own (1-3) the client waits for a first worker, then compares the environment of the
client, scheduler and workers (``check_versions``: Python, Dask and the libraries the stages use, and the
project's own code by hash) and stops with one line on a mismatch. ``check_workers`` then asks every worker
(``client.run``) whether it sees the output folder as the client's (a marker file the client wrote there,
so a same-named folder on another disk fails), can write there, finds the model files and a sample of the
input videos with the client's sizes; one line names each worker and what it lacks. Paths sent to workers
must be absolute (``absolute``): a relative one would be resolved in each worker's own folder.

Workers that join later (an adaptive cluster) are not checked; their tasks fail one by one instead, each
logged in failures.jsonl.
"""
from __future__ import annotations

import ast
import os
import re
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from pipeline.errors import UserError, one_line
from pipeline.version import code_hash, package_version

# Compared between the client and every worker: what Dask needs to exchange tasks and results, and what the
# stages compute with (a different decoder, detector runtime or HDF5 gives other crops or unreadable shards).
# Names are distributions (importlib.metadata), as Dask's get_versions reads them.
CHECKED_PACKAGES = ("dask", "distributed", "cloudpickle", "msgpack", "tornado", "toolz", "numpy", "h5py",
                    "hdf5plugin", "onnxruntime", "opencv-python-headless", "dlib-bin", "face-recognition-models",
                    "imageio-ffmpeg", "ffmpeg-python")
WAIT_FOR_WORKERS_S = 300.0   # a batch system may take minutes to start the first worker
VIDEO_SAMPLE = 16            # input videos each worker looks for (evenly spread over the run's list)
MARKER_PREFIX = ".laanet-cluster-check-"
SHOWN_WORKERS = 3            # workers named in full in a one-line error; the rest are counted


class ClusterError(UserError):
    """The cluster cannot run this job (unreachable, no workers, other environment, paths it cannot see).

    The message is one line that names the worker(s) and what is wrong."""


def absolute(path: str | os.PathLike | None) -> str | None:
    """``path`` made absolute against this process's folder (``~`` expanded); None stays None.

    Symbolic links are kept (not resolved): the same link may lead elsewhere on a worker's machine, while
    the path the user typed is what both sides share."""
    if path is None:
        return None
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


# ----------------------------------------------------------------------------------------------------------
# Which cluster, and the client.


def choose_cluster(workers: int | None, scheduler: str | None = None, scheduler_file: str | os.PathLike | None = None
                   ) -> tuple[str, str | None, str]:
    """``(kind, target, source)``: kind is "address", "file", "local" or "inline" (no Dask, ``workers=0``);
    target the address or scheduler file; source says which setting chose it (for messages)."""
    import dask

    if scheduler and scheduler_file:
        raise ClusterError("give --scheduler or --scheduler-file, not both")
    if scheduler:
        return "address", scheduler, "--scheduler"
    if scheduler_file:
        return "file", absolute(scheduler_file), "--scheduler-file"
    env = dask.config.get("scheduler-address", None)
    if env and workers is None:
        return "address", str(env), "DASK_SCHEDULER_ADDRESS"
    if workers == 0:
        return "inline", None, "--workers 0"
    return "local", None, "LocalCluster"


def _connect_timeout() -> float:
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s"))


def local_cluster(n_workers: int, dashboard_address: str | None = ":0"):
    """A LocalCluster of ``n_workers`` single-threaded worker processes, set up for this pipeline.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off glibc's adaptive
    mmap threshold: every frame, crop and batch buffer (>= 128 KiB) is then mmap'ed and zero-filled afresh.
    Measured on this pipeline (``bench/bench_pipeline.py`` workload, one process): 25x the page faults and
    18 % more CPU time per face. The workers here start without it; their memory stays bounded by one
    video's crops (see the benchmark's peak RSS per worker). For a cluster you start yourself, set
    ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in its Dask config for the same.

    The workers' own log shows CRITICAL only: a failed task is reported by the run as one line and a failures
    row, not also as Dask's multi-line "Compute Failed" dump per task and retry.
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=dashboard_address, silence_logs=50)


def make_client(workers: int | None, scheduler: str | None = None, scheduler_file: str | os.PathLike | None = None,
                wait_for_workers: float = WAIT_FOR_WORKERS_S):
    """A ``distributed.Client`` on the cluster ``choose_cluster`` picks (never "inline": ``workers=0`` with no
    scheduler is then a LocalCluster of one process per core, as before). Prints one line with the workers
    and the dashboard. Raises ``ClusterError`` (one line) when the scheduler cannot be reached, no worker
    joins within ``wait_for_workers`` seconds, or the workers' environment differs from this one."""
    from distributed import Client

    kind, target, source = choose_cluster(workers, scheduler, scheduler_file)
    if kind in ("local", "inline"):
        client = Client(local_cluster(workers or os.cpu_count() or 1))
    else:
        where = f"{target} (from {source})"
        try:
            if kind == "file":
                _wait_for_file(Path(target), _connect_timeout())
                client = Client(scheduler_file=target)
            else:
                client = Client(target)
        except ClusterError:
            raise
        except (OSError, TimeoutError, ValueError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {where}: {one_line(e, with_type=True)}") from None
        try:
            if not client.scheduler_info().get("workers"):
                print(f"Dask: waiting up to {wait_for_workers:.0f} s for a worker to join {where}", flush=True)
                try:
                    client.wait_for_workers(1, timeout=wait_for_workers)
                except TimeoutError:
                    raise ClusterError(f"no Dask worker joined the scheduler at {where} within "
                                       f"{wait_for_workers:.0f} s (start workers with `dask worker "
                                       f"{'--scheduler-file ' + target if kind == 'file' else target}`)") from None
            check_versions(client)
        except BaseException:
            client.close()
            raise
    _print_cluster(client)
    return client


def close_client(client) -> None:
    """Close ``client`` and the LocalCluster it started (a cluster someone else runs stays up)."""
    cluster = getattr(client, "cluster", None)
    try:
        client.close()
        if cluster is not None:
            cluster.close()
    except Exception:  # noqa: BLE001  (closing after a lost scheduler: the run's own error, if any, is what counts)
        pass


@contextmanager
def dask_client(workers: int | None, scheduler: str | None = None, scheduler_file: str | os.PathLike | None = None
                ) -> Iterator:
    """``make_client`` for one run, closed afterwards; yields None for an in-process run (``workers=0`` and no
    scheduler given in any way)."""
    if choose_cluster(workers, scheduler, scheduler_file)[0] == "inline":
        yield None
        return
    client = make_client(workers, scheduler, scheduler_file)
    with quiet_client_log():  # also while closing: a lost scheduler's reconnection attempts log until then
        try:
            yield client
        finally:
            close_client(client)


@contextmanager
def quiet_client_log():
    """Keep distributed's client-side loggers to themselves while a run uses its client: when the scheduler
    goes away, the client, its batched stream and its connection pool each log tracebacks (the client one per
    failed reconnection attempt, 40 lines each), which the run replaces by one line. Problems of the run itself
    reach the console as its own one-line messages and failure rows."""
    import logging

    logs = [logging.getLogger(name) for name in ("distributed", "distributed.client", "distributed.batched",
                                                 "distributed.comm", "distributed.core", "distributed.utils")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise ClusterError(f"{path}: scheduler file not found after {timeout:.0f} s (start the scheduler with "
                               f"`dask scheduler --scheduler-file {path}`; the file must be on a disk this machine "
                               f"shares)")
        time.sleep(0.1)


def _print_cluster(client) -> None:
    try:
        import bokeh  # noqa: F401  (the dashboard is served only when bokeh is installed)
        note = ""
    except ImportError:
        note = " (install bokeh>=3.1 for the web page)"
    n_workers = len(client.scheduler_info().get("workers", {}))
    print(f"Dask: {n_workers} workers at {client.scheduler.address}, dashboard {client.dashboard_link}{note}",
          flush=True)


# ----------------------------------------------------------------------------------------------------------
# Checks.


def _short(addresses: Sequence[str], what: Sequence[str]) -> str:
    """'worker A: x; worker B: y; and 4 more workers' from parallel lists (one line)."""
    shown = [f"worker {a}: {w}" for a, w in zip(addresses[:SHOWN_WORKERS], what[:SHOWN_WORKERS])]
    more = len(addresses) - SHOWN_WORKERS
    return "; ".join(shown) + (f"; and {more} more worker{'s' * (more > 1)}" if more > 0 else "")


def version_mismatches(versions: dict) -> dict[str, list[str]]:
    """From ``client.get_versions(packages=CHECKED_PACKAGES)``: per worker (or "scheduler"), the packages whose
    version differs from the client's, as 'name V (client W)'. Python is compared as major.minor.
    The scheduler is held only to what it uses itself (Dask's own list)."""
    from distributed.versions import scheduler_relevant_packages

    def norm(pkgs: dict) -> dict:
        pkgs = dict(pkgs or {})
        if pkgs.get("python"):
            pkgs["python"] = ".".join(str(pkgs["python"]).split(".")[:2])
        return pkgs

    mine = norm(versions["client"].get("packages"))
    names = ["python", *CHECKED_PACKAGES]
    out: dict[str, list[str]] = {}
    sched = norm((versions.get("scheduler") or {}).get("packages"))
    diff = [f"{n} {sched.get(n) or 'missing'} (client {mine.get(n) or 'missing'})" for n in names
            if n in scheduler_relevant_packages and sched.get(n) != mine.get(n)]
    if diff:
        out["scheduler"] = diff
    for addr, info in sorted((versions.get("workers") or {}).items()):
        theirs = norm((info or {}).get("packages"))
        diff = [f"{n} {theirs.get(n) or 'missing'} (client {mine.get(n) or 'missing'})" for n in names
                if theirs.get(n) != mine.get(n)]
        if diff:
            out[addr] = diff
    return out


def check_versions(client) -> None:
    """Stop (``ClusterError``, one line) when the scheduler or a worker runs another environment than this
    client: other versions of Python, Dask or the stages' libraries, or other project code (``code_hash``).

    Dask's own ``get_versions(check=True)`` only warns, and not about the project; this compares the same
    reports strictly."""
    bad = version_mismatches(client.get_versions(packages=list(CHECKED_PACKAGES)))
    if bad:
        raise ClusterError("the cluster's environment differs from this client's: "
                           + _short(list(bad), [", ".join(v) for v in bad.values()])
                           + " (install the same requirements.txt and project on every machine)")
    mine = (package_version(), code_hash())
    theirs = client.run(_worker_code, on_error="return")
    bad_addr, bad_what = [], []
    for addr, got in sorted(theirs.items()):
        if isinstance(got, BaseException):
            bad_addr.append(addr)
            bad_what.append(_import_problem(got))
        elif got[1] != mine[1]:  # the code decides; the version is shown (a checkout reports "<version>+source")
            bad_addr.append(addr)
            bad_what.append(f"laanet {got[0]}, code {got[1]} (client: laanet {mine[0]}, code {mine[1]}; install "
                            f"this version of the project on every worker)")
    if bad_addr:
        raise ClusterError("workers cannot run this client's project code: " + _short(bad_addr, bad_what))


def _worker_code() -> tuple[str, str]:
    return package_version(), code_hash()


def _import_problem(e: BaseException) -> str:
    """One phrase for a check that failed on a worker. A worker that cannot import the project cannot even
    unpickle the check; Dask then hands back a plain Exception around the ImportError's text."""
    text = str(e.args[0]) if type(e) is Exception and e.args else ""
    wrapped = re.fullmatch(r"(?:ModuleNotFoundError|ImportError)\((.*)\)", text, re.S)
    if isinstance(e, ImportError) or wrapped:
        try:
            reason = e.msg if isinstance(e, ImportError) else str(ast.literal_eval(wrapped.group(1)))
        except (ValueError, SyntaxError):
            reason = wrapped.group(1)
        return (f"cannot import the project ({reason}): install it where the worker runs (pip install "
                f"<repository>, or make install and start the worker with .venv/bin/python)")
    return f"check failed ({one_line(e, with_type=True)})"


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size if os.path.isfile(path) else None
    except OSError:
        return None


def sample(paths: Sequence[str], n: int = VIDEO_SAMPLE) -> list[str]:
    """Up to ``n`` of ``paths``, evenly spread, first and last included."""
    if len(paths) <= n:
        return list(paths)
    idx = sorted({round(i * (len(paths) - 1) / (n - 1)) for i in range(n)})
    return [paths[i] for i in idx]


def check_workers(client, out_dir: str | os.PathLike, files: Sequence[tuple[str, str]] = (),
                  packaged: Sequence[str] = (), videos: Sequence[str] = ()) -> None:
    """Ask every worker whether it can do this run; raise ``ClusterError`` (one line) naming those that cannot.

    out_dir: the folder the workers write into (absolute; created here, must exist on the workers as the
        same folder: a marker file written here must be visible there) and must be writable there.
    files: ``(what, absolute path)`` of model files given by path; each worker must find them with the
        client's size.
    packaged: names of packaged model files each worker locates in its own installation ("detector":
        the shipped RetinaFace MobileNet ONNX; "landmarks": dlib's 68-point model).
    videos: the run's input paths (absolute); a sample of those the client finds must be on every worker
        with the same size.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_absolute():
        raise ValueError(f"{out_dir}: check_workers needs absolute paths")
    out_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = out_dir / f"{MARKER_PREFIX}{token}"
    marker.write_text(token)
    wanted = [(what, p, _file_size(p)) for what, p in files]
    vids = [(p, s) for p in sample([v for v in videos if _file_size(v) is not None]) if (s := _file_size(p))]
    try:
        found = client.run(_probe, str(out_dir), marker.name, token, wanted, list(packaged), vids,
                           on_error="return")
    finally:
        marker.unlink(missing_ok=True)
    bad_addr, bad_what, lost = [], [], []
    for addr, got in sorted(found.items()):
        if _left_during_check(got):  # e.g. its batch job was cancelled: not a worker that lacks anything
            lost.append(addr)
            continue
        problems = [_import_problem(got)] if isinstance(got, BaseException) else got["problems"]
        if problems:
            host = "" if isinstance(got, BaseException) else f" on {got['host']}"
            bad_addr.append(addr + host)
            bad_what.append(", ".join(problems))
    if bad_addr:
        raise ClusterError("workers cannot run this job: " + _short(bad_addr, bad_what)
                           + " (workers need the same paths as the client: a shared disk mounted at the same place)")
    if lost:
        if len(lost) == len(found):
            raise ClusterError(f"no worker answered the check: {', '.join(lost)} left the cluster during it")
        print(f"Dask: {len(lost)} worker(s) left during the check, their work goes to the others: {', '.join(lost)}",
              flush=True)


def _left_during_check(got) -> bool:
    """True when a worker's answer to ``client.run`` is the error of a connection that closed or timed out: the
    worker left the cluster (its job was cancelled or preempted) while the check ran."""
    from distributed.comm.core import CommClosedError

    return isinstance(got, (CommClosedError, ConnectionError, TimeoutError))


def _probe(out_dir: str, marker_name: str, token: str, files: list, packaged: list, videos: list) -> dict:
    """Runs on a worker: what it lacks for the run (see ``check_workers``)."""
    problems: list[str] = []
    out = Path(out_dir)
    marker = out / marker_name
    if not out.is_dir():
        problems.append(f"no output folder {out}")
    elif not marker.is_file() or marker.read_text() != token:
        problems.append(f"output folder {out} is not the client's (the client's marker file is not there: "
                        f"another disk)")
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=out, prefix=MARKER_PREFIX):
                pass
        except OSError as e:
            problems.append(f"cannot write into the output folder {out} ({one_line(e, with_type=True)})")
    for what, path, size in files:
        got = _file_size(path)
        if got is None:
            problems.append(f"no {what} {path}")
        elif size is not None and got != size:
            problems.append(f"{what} {path} differs from the client's ({got} bytes, client {size})")
    for name in packaged:
        try:
            if name == "detector":
                from pipeline.faces import MOBILENET_ONNX as path
            elif name == "landmarks":
                from pipeline.landmarks import default_model_path

                path = default_model_path()
            else:
                raise ValueError(f"unknown packaged file {name!r}")
            if _file_size(str(path)) is None:
                problems.append(f"no packaged {name} model {path}")
        except Exception as e:  # noqa: BLE001  (reported to the client as this worker's problem)
            problems.append(f"packaged {name} model: {one_line(e, with_type=True)}")
    missing = [p for p, s in videos if _file_size(p) != s]
    if missing:
        problems.append(f"{len(missing)} of {len(videos)} sampled input videos missing or different "
                        f"(first: {missing[0]})")
    return {"host": socket.gethostname(), "problems": problems}
