"""Backup throughput on a realistic database: l2c-backup against `pg_dump | gzip`.

    python bench/backup.py                      # 1 GB and 4 GB databases (~25 minutes)
    python bench/backup.py --sizes 0.1          # a quick smoke run (~3 minutes)
    python bench/backup.py --sizes 1 --repeat 3 # best of three runs per variant

For each size it builds a database of realistic text in a throwaway cluster
(bench/realistic_db.py: gzip -6 shrinks its dump ~3x, where pgbench's filler shrinks 35x
and makes compression look free), then measures, one after the other on the same data:

  (0) pg_dump > /dev/null          the floor: what the dump alone costs
  (a) pg_dump | gzip -6 > file     the baseline every ratio is against
  (b) pg_dump | pigz -6 > file     parallel gzip from the shell (skipped without pigz)
  (c) l2c-backup to a directory    run_backup with BACKUP_TARGET=DIR
  (d) l2c-backup to local OSS      run_backup to `l2c-backup oss-server` in its own process
  (e) l2c zlib -6 -> local OSS     (d) as it ran before issue 13: L2C_DEFLATE_ENGINE=zlib,
                                   GZIP_LEVEL=6 (today's CPU per GB is measured against it)
  (f) l2c without table index      (d) with BACKUP_TABLE_INDEX=false: what cutting the
                                   sections into members and indexing them costs (issue 14)
  (g) l2c encrypted -> local OSS   (d) with BACKUP_AGE_RECIPIENTS set to a fresh key: what
                                   encrypting to age recipients costs (issue 15)

Every row has its wall ratio to (0) and to (a) of the same size. A second table prices
each row on FC (fc_cost.py) at the backup function's size in template.yml / s.yaml: CPU
seconds per GB of SQL (what the processes used), vCPU-seconds and GB-seconds per GB of SQL
(what FC bills: the configured size for the whole wall time, measured here on 2 cores
shared with PostgreSQL and the OSS server), CNY per backup and per month of PLAN's
schedule (daily + weekly), beside the OSS storage of a month at steady state (status.py's
monthly_cost over the kept daily and weekly objects of that output size). GB = 2^30 bytes.
Issue 13's targets are printed under the tables, each met or not met.

Wall seconds, CPU seconds (user+sys of the process tree: the shell pipeline's processes,
or the Python process running the backup plus its pg_dump), peak RSS (the largest
pipeline process; for l2c the Python process itself, its ru_maxrss) and output bytes.
Each l2c run is a fresh `bench/backup.py --run-variant` subprocess, so its peak RSS is
its own. The PostgreSQL server's CPU (the backend serving COPY) and, for (d), the local
OSS server's are not the backup's, but they share the same cores: they are reported
beside it ("server cpu s"), and so is the CPU everything else on the machine used during
the run ("others cpu s": other test runs on 2 cores slow every row). Before each run the
bench waits (up to --max-wait seconds) until the machine is quiet, and a run during which
others used more than 0.1 CPU is run again (twice at most; the fastest counts). Every
figure comes from this one run on this one machine; compare ratios.

Everything started here (cluster, OSS server, subprocesses, files under the work
directory) is stopped and removed at the end, also on Ctrl-C or SIGTERM.
GZIP_LEVEL, GZIP_WORKERS, UPLOAD_CONCURRENCY, UPLOAD_MIN_PART_MB and L2C_DEFLATE_ENGINE
set in the environment reach the l2c runs (to try settings; (e) always runs zlib); the rest
of their config is fixed here.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from procstat import Children, OssServer, cpu_of, exit_on_signals, proc_cpu, system_busy, vm_hwm_mb

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

MB = 1e6
GIB = 1 << 30
PASS_THROUGH = ("GZIP_LEVEL", "GZIP_WORKERS", "UPLOAD_CONCURRENCY", "UPLOAD_MIN_PART_MB",
                "L2C_DEFLATE_ENGINE")
# Issue 13's targets for (d), l2c to the local OSS server:
TARGET_VS_FLOOR = 1.3  # wall <= 1.3x (0) pg_dump > /dev/null
TARGET_VS_GZIP = 0.4  # wall <= 0.4x (a) pg_dump | gzip -6
TARGET_SIZE_SLACK = 0.02  # output within 2% of (a)'s
TARGET_RSS_MB = 150  # peak RSS below, at every size (c and d)
TARGET_CPU_VS_ZLIB = 0.5  # CPU seconds per GB of SQL at most half of (e)'s
TARGET_INDEX_COST = 0.03  # issue 14: the section cuts and their index cost almost nothing
TARGET_AGE_COST = 0.05  # issue 15: (g) encrypted within 5% of (d)'s wall
NOISY_CORES = 0.1  # a run during which others used more than this many CPUs is run again

LABELS = {"0": "(0) pg_dump > /dev/null", "a": "(a) pg_dump | gzip -6", "b": "(b) pg_dump | pigz -6",
          "c": "(c) l2c-backup -> dir", "d": "(d) l2c-backup -> local OSS",
          "e": "(e) l2c zlib -6 -> local OSS", "f": "(f) l2c -> local OSS, no table index",
          "g": "(g) l2c encrypted -> local OSS"}


@dataclass
class Result:
    variant: str
    size_gb: float
    wall: float = 0.0
    cpu: float = 0.0
    rss_mb: float = 0.0
    output: int = 0
    server_cpu: float | None = None  # PostgreSQL backends (+ the OSS server for (d))
    notes: list = field(default_factory=list)
    skipped: str = ""
    sql_bytes: int = 0
    oss_cpu: float = 0.0
    others_cpu: float = 0.0  # CPU anything else on the machine used meanwhile
    engine: str = ""  # the deflate engine of an l2c run
    key: str = ""  # the object an l2c run wrote
    took: float = 0.0  # seconds this row cost the bench: waits and reruns included


# -- processes ------------------------------------------------------------------------------

class RssPoller:
    """Peak RSS (VmHWM) of running processes, read from /proc until they exit.

    ru_maxrss of a child is no good here: Linux carries the RSS of the forking (or
    vforking) parent into the child's maxrss across exec, so every child of this Python
    process would report at least this process's size. VmHWM belongs to the exec'd image."""

    def __init__(self, pids, interval=0.05):
        import threading
        self.peaks = {pid: 0.0 for pid in pids}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)
        self.thread.start()

    def _poll(self, interval):
        while not self.done.is_set():
            for pid in self.peaks:
                mb = vm_hwm_mb(pid)
                if mb:
                    self.peaks[pid] = max(self.peaks[pid], mb)
            self.done.wait(interval)

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.peaks


def wait_for_quiet(log, busy_cores=0.2, max_wait=180):
    """Waits (up to max_wait s) until other work on the box uses under `busy_cores` CPUs
    over 3 s: other test runs on these 2 cores would be timed as the backup's."""
    started = time.monotonic()
    said = False
    while True:
        b0 = system_busy()
        time.sleep(3)
        load = (system_busy() - b0) / 3
        if load < busy_cores:
            if said:
                log(f"    quiet after {time.monotonic() - started:.0f} s")
            return
        if time.monotonic() - started > max_wait:
            log(f"    the machine is still busy ({load:.1f} CPUs in use by others); measuring anyway")
            return
        if not said:
            log(f"    waiting for a quiet machine ({load:.1f} CPUs in use by others)")
            said = True


class ServerMeter:
    """CPU of the PostgreSQL server across one variant: the postmaster's reaped children
    (a finished connection's backend) plus its own; None for a server not on this box."""

    def __init__(self, postmaster_pid):
        self.pid = postmaster_pid

    def read(self):
        return proc_cpu(self.pid) if self.pid else None


# -- the variants -------------------------------------------------------------------------

def run_pipeline(children, label, argvs, env, output_path, size_gb):
    """argvs[0] | argvs[1] | ... > output_path, timed; rusage per process via wait4."""
    result = Result(label, size_gb)
    err = open(output_path.with_suffix(".stderr"), "wb")
    out = open(output_path, "wb") if output_path.name != "null" else open(os.devnull, "wb")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    procs, upstream = [], subprocess.DEVNULL
    try:
        for i, argv in enumerate(argvs):
            last = i == len(argvs) - 1
            proc = children.start(argv, stdin=upstream, stdout=out if last else subprocess.PIPE,
                                  stderr=err, env=env)
            if upstream is not subprocess.DEVNULL:
                upstream.close()  # only the next process holds the pipe now
            upstream = proc.stdout
            procs.append(proc)
        poller = RssPoller([p.pid for p in procs])
        try:
            usages = [children.reap(p) for p in procs]
        finally:
            peaks = poller.stop()
    finally:
        out.close()
        err.close()
    result.wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for proc, (code, _) in zip(procs, usages):
        if code != 0:
            tail = output_path.with_suffix(".stderr").read_text(errors="replace")[-1000:]
            raise RuntimeError(f"{label}: {Path(proc.args[0]).name} exited {code}: {tail}")
    result.cpu = cpu_of(after) - cpu_of(before)  # == the sum of the wait4 figures
    result.rss_mb = max(peaks.values())
    result.output = output_path.stat().st_size if output_path.exists() else 0
    names = [Path(a[0]).name for a in argvs]
    result.notes.append(" + ".join(f"{n} {cpu_of(u):.1f}" for n, (_, u) in zip(names, usages))
                        + " cpu s; RSS " + ", ".join(f"{n} {peaks[p.pid]:.0f}"
                                                    for n, p in zip(names, procs)) + " MB")
    return result


def run_l2c(children, label, env, workdir, size_gb):
    """One l2c backup in a fresh `--run-variant` subprocess; returns its Result."""
    result = Result(label, size_gb)
    errlog = workdir / f"runner-{label[1]}.stderr"
    started = time.monotonic()
    with open(errlog, "wb") as err:
        proc = children.start([sys.executable, __file__, "--run-variant"], stdout=subprocess.PIPE,
                              stderr=err, env=env)
        out = proc.stdout.read()
        proc.stdout.close()
        code, usage = children.reap(proc)
    result.wall = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"{label}: the runner exited {code}: "
                           f"{errlog.read_text(errors='replace')[-2000:]}")
    inner = json.loads(out)
    (backup,) = inner["summary"]["backups"]
    result.cpu = cpu_of(usage)  # the whole process (imports included) and its pg_dump
    result.rss_mb = inner["self_peak_rss_kb"] / 1024
    result.output = backup["bytes"]
    result.key = backup["key"]
    result.notes.append(f"python {inner['self_cpu']:.1f} + pg_dump {inner['children_cpu']:.1f} cpu s "
                        f"in run_backup ({inner['wall']:.1f} s)")
    result.sql_bytes = backup["sql_bytes"]
    result.engine = inner["engine"]
    result.notes.append(f"engine {result.engine}")
    return result


def run_variant():
    """--run-variant: one backup with the config in the environment; prints JSON."""
    from l2c_backup import config
    from l2c_backup.backup import run_backup
    cfg = config.load(os.environ)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    summary = run_backup(cfg, "manual")
    wall = time.monotonic() - started
    try:
        from l2c_backup.deflate_engine import ENGINE as engine
    except ImportError:  # the code before issue 13: zlib in compress.py
        engine = "zlib (no deflate_engine module)"
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"summary": summary, "wall": wall, "engine": engine,
                      "self_cpu": cpu_of(self1) - cpu_of(self0),
                      "children_cpu": cpu_of(kids1) - cpu_of(kids0),
                      "self_peak_rss_kb": int(vm_hwm_mb() * 1024)}))
    return 0


def snapshot_code(workdir):
    """A copy of the l2c code as it is now, which every l2c run and the OSS server import
    (through PYTHONPATH, ahead of the editable install): all rows measure the same code,
    even if the working tree changes during a long run."""
    code = workdir / "code"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "functions" / "l2c_backup", code / "l2c_backup", ignore=skip)
    shutil.copytree(REPO / "scripts" / "l2c_local", code / "l2c_local", ignore=skip)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(code)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        rev = ""
    return rev or "(not a git checkout)"


def l2c_env(database_url, pg_bin_dir, extra):
    """The runner's environment: only what this bench decides (plus PASS_THROUGH)."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("PG", "OSS_", "BACKUP_", "GZIP_", "UPLOAD_", "ALIBABA_CLOUD_"))
                   or k == "DATABASE_URL")}
    env.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
    env["DATABASE_URL"] = database_url
    if pg_bin_dir:
        env["PG_BIN_DIR"] = str(pg_bin_dir)  # the same pg_dump as the pipelines
    env.update(extra)
    return env


def measure_size(children, workdir, size_gb, database_url, pg_dump, postmaster_pid, variants,
                 repeat, log, max_wait=180, reruns=2):
    """All variants on one database; returns their Results (best wall of `repeat`)."""
    from l2c_backup.database import DatabaseSettings
    from l2c_backup.dump import process_env
    settings = DatabaseSettings.from_url(database_url)
    dump_env = process_env(settings)
    dump_argv = [pg_dump, "--format=plain", "--no-password"]  # as l2c's PgDump runs it
    server = ServerMeter(postmaster_pid)
    results = []

    def timed(fn):
        best, runs, began = None, 0, time.monotonic()
        # Other work on the machine slows a run down: a noisy run is run again (at most
        # `reruns` extra times), and the fastest run counts.
        while runs < repeat or (best.others_cpu > NOISY_CORES * best.wall and runs < repeat + reruns):
            if max_wait > 0:
                wait_for_quiet(log, max_wait=max_wait)
            cpu0, busy0 = server.read(), system_busy()
            r = fn()
            busy1 = system_busy()
            time.sleep(0.3)  # let the postmaster reap the backend
            cpu1 = server.read()
            if cpu0 is not None and cpu1 is not None:
                r.server_cpu = cpu1 - cpu0 + r.oss_cpu
            r.others_cpu = max(0.0, busy1 - busy0 - r.cpu - (r.server_cpu or r.oss_cpu))
            runs += 1
            if runs > 1 or r.others_cpu > NOISY_CORES * r.wall:
                log(f"    run {runs}: {r.wall:.1f} s wall, others used {r.others_cpu:.1f} cpu s")
            if best is None or r.wall < best.wall:
                best = r
        best.took = time.monotonic() - began
        log(f"  {best.variant:<28} {best.wall:7.1f} s wall {best.cpu:7.1f} s cpu "
            f"{best.rss_mb:6.0f} MB RSS {best.output / MB:8.1f} MB out, others {best.others_cpu:.1f} "
            f"cpu s  ({'; '.join(best.notes)})")
        results.append(best)
        return best

    def pipeline(key, argvs, name):
        path = workdir / name

        def once():
            try:
                return run_pipeline(children, LABELS[key], argvs, dump_env, path, size_gb)
            finally:
                if path.exists():
                    path.unlink()
        return timed(once)

    if "0" in variants:
        pipeline("0", [dump_argv], "null")
    if "a" in variants:
        pipeline("a", [dump_argv, ["gzip", "-6"]], "a.sql.gz")
    if "b" in variants:
        pigz = shutil.which("pigz")
        if pigz:
            pipeline("b", [dump_argv, [pigz, "-6"]], "b.sql.gz")
        else:
            results.append(Result(LABELS["b"], size_gb, skipped="pigz not installed "
                                  "(apt-get install -y pigz)"))
            log("  (b) skipped: pigz not installed")
    if "c" in variants:
        target = workdir / "dir-target"

        def once_c():
            target.mkdir(exist_ok=True)
            try:
                return run_l2c(children, LABELS["c"], l2c_env(database_url, Path(pg_dump).parent,
                               {"BACKUP_TARGET": str(target)}), workdir, size_gb)
            finally:
                shutil.rmtree(target, ignore_errors=True)
        timed(once_c)

    def to_oss(key, extra):
        def once():
            with OssServer(children, workdir / "oss-data", workdir / "oss-server.log") as oss:
                oss_cpu0 = proc_cpu(oss.proc.pid, children=False)
                r = run_l2c(children, LABELS[key], l2c_env(database_url, Path(pg_dump).parent,
                            dict(oss.env(), **extra)), workdir, size_gb)
                oss_cpu = proc_cpu(oss.proc.pid, children=False) - oss_cpu0
                oss_rss = vm_hwm_mb(oss.proc.pid)
            r.oss_cpu = oss_cpu
            r.notes.append(f"OSS server {oss_cpu:.1f} cpu s, peak RSS {oss_rss:.0f} MB")
            if extra.get("L2C_DEFLATE_ENGINE") == "zlib" and not r.engine.startswith("zlib"):
                raise RuntimeError(f"{LABELS[key]}: L2C_DEFLATE_ENGINE=zlib ran {r.engine}: "
                                   "this row would not measure the old engine")
            if extra.get("BACKUP_AGE_RECIPIENTS") and not r.key.endswith(".age"):
                raise RuntimeError(f"{LABELS[key]}: wrote {r.key}, not an encrypted object: "
                                   "this row would not measure encryption")
            return r
        timed(once)

    if "d" in variants:
        to_oss("d", {})
    if "e" in variants:
        to_oss("e", {"L2C_DEFLATE_ENGINE": "zlib", "GZIP_LEVEL": "6"})
    if "f" in variants:  # issue 14: what cutting and indexing the sections costs
        to_oss("f", {"BACKUP_TABLE_INDEX": "false"})
    if "g" in variants:  # issue 15: what encrypting to an age recipient costs
        from l2c_backup import age
        _, recipient = age.generate()  # the secret is not needed: nothing here decrypts
        to_oss("g", {"BACKUP_AGE_RECIPIENTS": recipient})
    return results


# -- the report ---------------------------------------------------------------------------

def sql_bytes_of(results):
    """{size: bytes of SQL} from the l2c rows (the pipelines do not count it; every row
    of a size dumps the same database)."""
    found = {}
    for r in results:
        if r.sql_bytes:
            found[r.size_gb] = max(found.get(r.size_gb, 0), r.sql_bytes)
    return found


def table(results):
    lines = ["| variant | size | wall s | cpu s | peak RSS MB | output MB | wall vs (0) | wall vs (a) "
             "| server cpu s | others cpu s | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    floor = {r.size_gb: r.wall for r in results if r.variant == LABELS["0"] and not r.skipped}
    base = {r.size_gb: r.wall for r in results if r.variant == LABELS["a"] and not r.skipped}
    for r in results:
        size = f"{r.size_gb:g} GB"
        if r.skipped:
            lines.append(f"| {r.variant} | {size} | - | - | - | - | - | - | - | - | skipped: {r.skipped} |")
            continue
        vs0 = f"{r.wall / floor[r.size_gb]:.2f}" if r.size_gb in floor else "-"
        vsa = f"{r.wall / base[r.size_gb]:.2f}" if r.size_gb in base else "-"
        server = "-" if r.server_cpu is None else f"{r.server_cpu:.1f}"
        lines.append(f"| {r.variant} | {size} | {r.wall:.1f} | {r.cpu:.1f} | {r.rss_mb:.0f} | "
                     f"{r.output / MB:.1f} | {vs0} | {vsa} | {server} | {r.others_cpu:.1f} | {'; '.join(r.notes)} |")
    return "\n".join(lines)


def oss_month(output_bytes, now=1e9):
    """CNY a month on OSS for PLAN's retention of objects this size, at steady state:
    status.monthly_cost (what `l2c-backup status` prints) over the kept daily and weekly
    backups at their ages (30 daily, 12 weekly: some in IA after 30 days)."""
    from l2c_backup.prune import DEFAULT_KEEP
    from l2c_backup.status import BackupInfo, monthly_cost
    kept = [BackupInfo(f"d{i}", "daily", "", str(i), output_bytes, "ok", now - i * 86400)
            for i in range(DEFAULT_KEEP["daily"])]
    kept += [BackupInfo(f"w{i}", "weekly", "", str(i), output_bytes, "ok", now - i * 7 * 86400)
             for i in range(DEFAULT_KEEP["weekly"])]
    return monthly_cost(kept, now)["total"]


def fc_table(results, size, prices):
    """What each row would cost as the backup function on FC (fc_cost.py)."""
    from l2c_backup import fc_cost
    sql = sql_bytes_of(results)
    lines = ["| variant | size | SQL GB | cpu s/GB | vCPU-s/GB | GB-s/GB | FC CNY/backup "
             "| FC CNY/month | OSS CNY/month |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.skipped:
            continue
        run = fc_cost.run_cost(r.wall, size, prices)
        month = fc_cost.monthly(r.wall, size, prices)["total"]
        gb = sql.get(r.size_gb, 0) / GIB
        per = (lambda v: f"{v / gb:.1f}") if gb else (lambda v: "-")
        oss = f"{oss_month(r.output):.2f}" if r.output else "-"
        lines.append(f"| {r.variant} | {r.size_gb:g} GB | {gb:.2f} | {per(r.cpu)} | {per(run.vcpu_seconds)} "
                     f"| {per(run.gb_seconds)} | {run.cny:.4f} | {month:.2f} | {oss} |")
    runs = sum(fc_cost.RUNS_PER_MONTH.values())
    lines.append(f"\nFC at {size.memory_mb} MB and {size.vcpu:g} vCPU (the backup function), CNY "
                 f"{prices['vcpu_second']:g}/vCPU-s, {prices['gb_second']:g}/GB-s, "
                 f"{prices['invocation']:g}/invocation; a month = {runs:.1f} backups "
                 f"(daily + weekly), each the row's wall time. OSS: status.py's monthly_cost "
                 "over 30 daily and 12 weekly objects of the row's output size (steady state).")
    return "\n".join(lines)


def verdicts(results):
    out = []
    by = {(r.size_gb, r.variant): r for r in results if not r.skipped}
    sql = sql_bytes_of(results)

    def verdict(ok):
        return "met" if ok else "NOT met"

    rss = []
    for size in sorted({r.size_gb for r in results}):
        floor, gz, d, e = (by.get((size, LABELS[k])) for k in "0ade")
        if d and floor:
            ratio = d.wall / floor.wall
            out.append(f"- {size:g} GB: (d) wall {ratio:.2f}x (0) pg_dump > /dev/null "
                       f"(target <= {TARGET_VS_FLOOR}): {verdict(ratio <= TARGET_VS_FLOOR)}")
        if d and gz:
            ratio = d.wall / gz.wall
            out.append(f"- {size:g} GB: (d) wall {ratio:.2f}x (a) gzip -6 "
                       f"(target <= {TARGET_VS_GZIP}): {verdict(ratio <= TARGET_VS_GZIP)}")
            bigger = d.output / gz.output - 1
            out.append(f"- {size:g} GB: (d) output {d.output / MB:.1f} MB, {bigger:+.1%} vs (a)'s "
                       f"{gz.output / MB:.1f} MB (target within {TARGET_SIZE_SLACK:.0%}): "
                       f"{verdict(bigger <= TARGET_SIZE_SLACK)}")
        if d and e:
            gb = sql.get(size, 0) / GIB
            ratio = d.cpu / e.cpu
            out.append(f"- {size:g} GB: (d) CPU {d.cpu / gb:.1f} s/GB of SQL = {ratio:.2f}x (e) zlib -6's "
                       f"{e.cpu / gb:.1f} s/GB (target <= {TARGET_CPU_VS_ZLIB}): "
                       f"{verdict(ratio <= TARGET_CPU_VS_ZLIB)}")
        f = by.get((size, LABELS["f"]))
        if d and f:
            wall, cpu = d.wall / f.wall - 1, d.cpu / f.cpu - 1
            out.append(f"- {size:g} GB: (d) with the table index {wall:+.1%} wall, {cpu:+.1%} CPU "
                       f"vs (f) without (target within {TARGET_INDEX_COST:.0%}): "
                       f"{verdict(wall <= TARGET_INDEX_COST)}")
        g = by.get((size, LABELS["g"]))
        if d and g:
            wall, cpu = g.wall / d.wall - 1, g.cpu / d.cpu - 1
            out.append(f"- {size:g} GB: (g) encrypted {wall:+.1%} wall, {cpu:+.1%} CPU, output "
                       f"{g.output - d.output:+,d} bytes vs (d) plain (target within "
                       f"{TARGET_AGE_COST:.0%}): {verdict(wall <= TARGET_AGE_COST)}")
        for key in "cd":
            r = by.get((size, LABELS[key]))
            if r:
                rss.append((size, key, r.rss_mb))
    if rss:
        worst = max(m for _, _, m in rss)
        out.append("- l2c peak RSS: " + ", ".join(f"({k}) {s:g} GB {m:.0f} MB" for s, k, m in rss)
                   + f" (target < {TARGET_RSS_MB} MB): {verdict(worst < TARGET_RSS_MB)}")
        for key in "cd":
            per_size = [m for s, k, m in rss if k == key]
            if len(per_size) > 1:
                spread = max(per_size) - min(per_size)
                out.append(f"- ({key}) peak RSS varies by {spread:.0f} MB across sizes"
                           + (" (flat)" if spread < 15 else " (NOT flat)"))
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4", help="database sizes in GiB, comma-separated "
                        "(default 1,4; 0.2 for a quick smoke run)")
    parser.add_argument("--variants", default="0abcde", help="which rows to run (default 0abcde)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant; the fastest "
                        "counts (default 1)")
    parser.add_argument("--workdir", help="where the work directory goes (default: the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (stderr "
                        "of every run, the OSS server log) and print where it is")
    parser.add_argument("--database-url", metavar="URL", help="measure this database (already "
                        "filled, e.g. by realistic_db.py) instead of building one per size")
    parser.add_argument("--max-wait", type=float, default=180, help="seconds to wait before each "
                        "run for other work on the machine to stop (default 180; 0: no waiting)")
    parser.add_argument("--run-variant", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_variant:
        return run_variant()

    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    variants = set(args.variants)

    exit_on_signals()  # every finally below runs

    def log(msg):
        print(msg, flush=True)

    from l2c_backup import fc_cost
    fc_prices = fc_cost.prices(os.environ)  # PRICE_FC_*: a bad one stops here, not at the end
    fc_sizes = fc_cost.sizes_in_templates(REPO)
    fc_size = fc_sizes.get("template.yml") or fc_sizes.get("s.yaml") or fc_cost.BACKUP
    workdir = Path(tempfile.mkdtemp(prefix="l2c-bench-", dir=args.workdir))
    children = Children()
    results, cluster, took = [], None, []
    began = time.monotonic()
    try:
        passthrough = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
        rev = snapshot_code(workdir)
        log(f"bench/backup.py: {os.cpu_count()} CPUs, work dir {workdir}, code {rev}"
            + (f", l2c settings {passthrough}" if passthrough else ""))
        if args.database_url:
            from l2c_backup.dump import find_pg_tool
            from realistic_db import Psql
            size = int(Psql.for_url(args.database_url).value(
                "SELECT pg_database_size(current_database())"))
            log(f"database: {size / MB:,.0f} MB")
            results += measure_size(children, workdir, round(size / GIB, 2), args.database_url,
                                    str(find_pg_tool("pg_dump")), None, variants, args.repeat, log,
                                    max_wait=args.max_wait)
        else:
            from l2c_local.pgcluster import PgCluster
            from realistic_db import Psql, build, report_lines
            cluster = PgCluster().start()
            postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
            log(f"throwaway cluster: PostgreSQL in {cluster.bin_dir} on port {cluster.port}")
            for size in sizes:
                dbname = "realistic_" + f"{size:g}".replace(".", "_")
                cluster.create_database(dbname)
                log(f"\n== {size:g} GB: building {dbname}")
                built = time.monotonic()
                report = build(Psql(cluster.bin("psql"), cluster.env(), dbname), int(size * GIB),
                               workers=os.cpu_count() or 2, log=log)
                took.append((f"{size:g} GB build", time.monotonic() - built))
                for line in report_lines(report):
                    log("  " + line)
                log(f"== {size:g} GB: measuring")
                results += measure_size(children, workdir, size, cluster.url(dbname),
                                        str(cluster.bin("pg_dump")), postmaster, variants,
                                        args.repeat, log, max_wait=args.max_wait)
                sql = [r.sql_bytes for r in results if r.size_gb == size]
                if any(sql):
                    log(f"  SQL dump: {max(sql) / MB:,.0f} MB; database {report['size_bytes'] / MB:,.0f} MB")
                cluster.psql(f'DROP DATABASE "{dbname}"')
        took += [(f"{r.size_gb:g} GB {r.variant.split()[0]}", r.took) for r in results if not r.skipped]
        log("\n" + table(results))
        log("\n" + fc_table(results, fc_size, fc_prices))
        if len(set(fc_sizes.values())) > 1:
            log(f"(the templates disagree on the backup function's size: {fc_sizes}; priced at {fc_size})")
        log("\nTargets (issues 13, 14, 15):\n" + verdicts(results))
        log(f"\ntime taken: {time.monotonic() - began:.0f} s in all; "
            + ", ".join(f"{part} {seconds:.0f} s" for part, seconds in took)
            + " (waits for a quiet machine and reruns included)")
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted: stopping what this bench started")
        return 130
    finally:
        children.stop_all()
        if cluster is not None:
            cluster.stop()
        if args.keep:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
