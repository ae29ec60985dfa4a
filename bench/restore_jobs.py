"""Parallel and single-table restores (issue 14): l2c restore --jobs N against the one-stream
`gunzip | psql -1` and against `pg_restore -j N`; l2c restore --table against the object.

    python bench/restore_jobs.py                       # 1 GB restores + one table of a 4 GB backup
    python bench/restore_jobs.py --sizes 0.1 --table-size 0.2 --repeat 1 --max-wait 0   # smoke run
    python bench/restore_jobs.py --sizes 1 --table-size 0 --oss   # no table part; + OSS rows

The restore of one database is one stream into one server backend: COPY is most of its wall
and one core does it, so a bigger machine does not help (bench/restore.py). Issue 14 cuts
the object into indexed sections so a restore can load tables over N connections and build
indexes in parallel, and can read only the sections of one table. This bench prices both in
one throwaway cluster (bench/realistic_db.py's data plus its ~1% table app.refunds; the
same server settings as bench/restore.py: fsync off, everything else default), each size
backed up once by l2c-backup to a directory (and copied into the local OSS server with
--oss) and dumped once by `pg_dump -Fd` (timed apart: it is not in any restore figure):

  (a)   gunzip -c FILE | psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d NEWDB
                                   the one-stream baseline (of the same l2c object)
  (bN)  l2c restore --jobs N       parallel_restore.restore_parallel(storage, key, server,
                                   create_db=NEWDB, jobs=N), from the directory
  (oN)  the same from the local OSS server (with --oss)
  (cN)  pg_restore -j N -d NEWDB DUMPDIR    of the `pg_dump -Fd` directory

NEWDB is created before the clock starts for (a) and (c) (pg_restore and psql need it);
the l2c runs create it themselves, inside their time. Each l2c run is a fresh
`--run-variant` subprocess, its wall includes the interpreter's start; restore_seconds,
the function's own figure, and its phases (pre-data, data, post-data) are beside it.
Columns: wall s (fastest run; the median too with --repeat > 1), the wall ratio to (a)
and to pg_restore -j of the same N, l2c's phases, cpu s (the client: gunzip + psql,
pg_restore and its workers, or the l2c process and what it ran), server cpu s (the whole
PostgreSQL server: backends, parallel index workers, walwriter, checkpointer) and others
cpu s (the rest of the machine meanwhile: a run during which others used over 0.1 CPU is
run again, twice at most).

Every restored database is compared with the source before it is dropped: each table's
row count and the sum of a 64-bit hash of every row's text, every index and constraint
definition, every sequence's value; a restore that differs is marked WRONG and wins
nothing. The single-table part restores app.refunds (or --table) from the --table-size
backup into an empty database with table_restore.restore_tables, checks that table and
its indexes against the source, and reports seconds, bytes read, the object's bytes,
bytes read as % of the object and the table's share of the dump's SQL (from the index).
Targets (issue 14) are printed met or NOT met: (b2) >= 1.5x faster than (a) and within
1.15x of (c2) (on a 2-core machine), single table <= 2% of the object's bytes.

Before each run the bench waits until no other bench runs (--bench-wait) and the machine
is quiet (--max-wait). The l2c runs import a copy of the code taken at the start.
Everything it starts is stopped on exit, also on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from procstat import Children, OssServer, cpu_of, exit_on_signals, proc_cpu, system_busy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MB = 1e6
GIB = 1 << 30
NOISY_CORES = 0.1
OTHER_BENCHES = ("bench/backup.py", "bench/verify.py", "bench/restore.py")
# Issue 14's targets.
TARGET_JOBS = 2
TARGET_VS_ONE_STREAM = 1.5  # (b2) at least this many times faster than (a)
TARGET_VS_PG_RESTORE = 1.15  # (b2) wall at most this times (c2)'s
TARGET_TABLE_READ = 0.02  # single table: bytes read at most 2% of the object
TARGET_CORES = 2  # the machine the targets are stated for
DEFAULT_TABLE = "app.refunds"  # realistic_db's ~1% table


def _load(name, filename):
    """A sibling bench module under its own name (bench/backup.py is not l2c_backup.backup)."""
    spec = importlib.util.spec_from_file_location(name, HERE / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Run:
    key: str
    size: float
    wall: float = 0.0
    cpu: float = 0.0
    server_cpu: float = 0.0
    others_cpu: float = 0.0
    summary: dict = field(default_factory=dict)  # l2c's own summary
    wrong: str = ""  # why the restored database is not the source, or the run failed
    notes: list = field(default_factory=list)

    @property
    def noisy(self):
        return self.others_cpu > NOISY_CORES * self.wall


# -- the l2c runs (a fresh process each) ----------------------------------------------------

def run_variant(args):
    """--run-variant: one restore_parallel or restore_tables with the storage and server in
    the environment; prints its summary and CPU as JSON."""
    from l2c_backup import config
    from l2c_backup.database import DatabaseSettings
    from l2c_backup.storage import open_storage

    target, oss = config.storage_target(os.environ)
    storage = open_storage(target, oss)
    settings = DatabaseSettings.from_url(os.environ["DATABASE_URL"], {})
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    if args.run_table:
        from l2c_backup.table_restore import restore_tables
        summary = restore_tables(storage, args.key, settings, args.run_table)
    else:
        from l2c_backup.parallel_restore import restore_parallel
        summary = restore_parallel(storage, args.key, settings, create_db=args.create_db,
                                   jobs=args.run_jobs)
    seconds = time.monotonic() - started
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"summary": summary, "seconds": seconds,
                      "self_cpu": cpu_of(self1) - cpu_of(self0),
                      "children_cpu": cpu_of(kids1) - cpu_of(kids0)}, default=str))
    return 0


def runner_env(database_url, pg_bin_dir, extra):
    """Only what this bench decides: no PG*/OSS_*/BACKUP_* of the caller's shell."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("PG", "OSS_", "BACKUP_", "GZIP_", "UPLOAD_", "ALIBABA_CLOUD_"))
                   or k == "DATABASE_URL")}
    env.update(DATABASE_URL=database_url, PG_BIN_DIR=str(pg_bin_dir), **extra)
    return env


# -- checking a restore against the source --------------------------------------------------

USER_TABLES = r"""
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%' {only} ORDER BY 1
"""
# Index and constraint definitions name their table; sequences' values and large objects
# are what a restore must also set. Each as one line of text, sorted.
DEFINITIONS = r"""
SELECT 'index ' || indexdef FROM pg_indexes
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') {only_index}
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid <> 0
   AND connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
   {only_constraint}
UNION ALL
SELECT 'sequence ' || schemaname || '.' || sequencename || ' ' || coalesce(last_value::text, 'null')
  FROM pg_sequences {only_sequence}
UNION ALL
SELECT 'large objects ' || count(*) || ' ' || coalesce(sum(hashtextextended(encode(lo_get(oid), 'hex'), 0)::numeric), 0)
  FROM pg_largeobject_metadata {only_sequence}
ORDER BY 1
"""


def fingerprint(cluster, dbname, only=None):
    """What a restore must bring back, as comparable text: per table its row count and the
    sum of a 64-bit hash of each row's text (order-free, one scan, no sort), the index and
    constraint definitions, the sequences' values and the large objects. `only`: one
    "schema.table" (its rows, indexes and constraints)."""
    def lit(text):
        return "'" + text.replace("'", "''") + "'"
    where = f"AND format('%I.%I', n.nspname, c.relname) = {lit(only)}" if only else ""
    tables = cluster.psql(USER_TABLES.format(only=where), dbname).split()
    found = {}
    for table in tables:
        line = cluster.psql(
            f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
            f"FROM {table} t", dbname).strip()
        found[table] = line.replace("\t", " rows, hash sum ")
    if only:
        schema, _, name = only.partition(".")
        defs = DEFINITIONS.format(
            only_index=f"AND schemaname = {lit(schema)} AND tablename = {lit(name)}",
            only_constraint=f"AND conrelid = {lit(only)}::regclass",
            only_sequence="WHERE false")
    else:
        defs = DEFINITIONS.format(only_index="", only_constraint="", only_sequence="")
    found["definitions"] = cluster.psql(defs, dbname).strip()
    return found


def differences(expected, found):
    """What differs between two fingerprints, as short lines (empty: equal)."""
    out = []
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            if key == "definitions":
                a = set(expected.get(key, "").splitlines())
                b = set(found.get(key, "").splitlines())
                out.append(f"definitions missing {sorted(a - b)[:3]}, extra {sorted(b - a)[:3]}")
            else:
                out.append(f"{key}: expected {expected.get(key)!r}, found {found.get(key)!r}")
    return out


# -- the bench ------------------------------------------------------------------------------

def label(key):
    if key == "a":
        return "(a) gunzip | psql -1"
    n = key[1:]
    return {"b": f"(b{n}) l2c --jobs {n} <- dir", "o": f"(o{n}) l2c --jobs {n} <- OSS",
            "c": f"(c{n}) pg_restore -j {n}"}[key[0]]


class Bench:
    def __init__(self, args, log):
        self.args, self.log = args, log
        self.bb = _load("bench_backup", "backup.py")
        self.br = _load("bench_restore", "restore.py")
        self.children = Children()
        self.workdir = Path(tempfile.mkdtemp(prefix="l2c-restore-jobs-", dir=args.workdir))
        self.cluster = self.oss = None
        self.runs: list[Run] = []
        self.tables: list[dict] = []  # single-table results
        self.setup_notes: dict = {}  # size -> lines about the backup and the pg_dump -Fd
        self.counter = 0

    # -- setup ----------------------------------------------------------------------------

    def start(self):
        from l2c_local.pgcluster import PgCluster
        rev = self.bb.snapshot_code(self.workdir)
        sys.path.insert(0, str(self.workdir / "code"))  # this process imports the copy too
        self.code = self.workdir / "code" / "l2c_backup"
        self.cluster = PgCluster().start()
        c = self.cluster
        self.postmaster = int((c.data_dir / "postmaster.pid").read_text().split()[0])
        self.server = self.br.ServerTreeMeter(self.postmaster)
        os.environ["PG_BIN_DIR"] = str(c.bin_dir)  # the same psql/pg_dump/pg_restore everywhere
        version = c.psql("SHOW server_version").strip()
        self.log(f"code {rev}; throwaway cluster: PostgreSQL {version} in {c.bin_dir} on port "
                 f"{c.port} (fsync off, as bench/restore.py)")
        if self.args.oss:
            self.oss = OssServer(self.children, self.workdir / "oss-data",
                                 self.workdir / "oss-server.log").__enter__()
        self.dir_target = self.workdir / "backups"
        self.dir_target.mkdir()

    def has(self, module):
        return (self.code / f"{module}.py").exists()

    def prepare(self, size, dump_fd, table=None):
        """Builds the database of `size` GB, fingerprints it (and `table` alone), backs it
        up with l2c (and copies the backup into the OSS server), dumps it with pg_dump -Fd
        when `dump_fd`, drops it. Returns what the runs need."""
        from l2c_backup import config
        from l2c_backup.backup import run_backup
        from l2c_backup.restore import read_manifest
        from l2c_backup.storage import open_storage
        from realistic_db import Psql, build, report_lines
        c = self.cluster
        source = "source_" + f"{size:g}".replace(".", "_")
        c.create_database(source)
        self.log(f"\n== {size:g} GB: building {source}")
        report = build(Psql(c.bin("psql"), c.env(), source), int(size * GIB),
                       workers=os.cpu_count() or 2, log=self.log, refunds=True)
        for line in report_lines(report):
            self.log("  " + line)
        t = time.monotonic()
        expected = fingerprint(c, source)
        self.log(f"  fingerprint of the source in {time.monotonic() - t:.1f} s: "
                 f"{len(expected) - 1} tables, {len(expected['definitions'].splitlines())} "
                 "definitions")
        table_expected = fingerprint(c, source, only=table) if table else None
        if table and table not in table_expected:
            raise RuntimeError(f"{source} has no table {table}")

        notes = self.setup_notes.setdefault(size, [])
        cfg = config.load({"DATABASE_URL": c.url(source), "BACKUP_TARGET": str(self.dir_target),
                           "PRUNE_AFTER_BACKUP": "false"})
        (backup,) = run_backup(cfg, "manual")["backups"]
        key = backup["key"]
        doc = read_manifest(open_storage(str(self.dir_target)), key)
        sections = doc.get("index", {}).get("sections")
        notes.append(f"l2c backup {backup['seconds']:.1f} s: {backup['bytes'] / MB:,.1f} MB gzip, "
                     f"{backup['sql_bytes'] / MB:,.1f} MB SQL, {doc['compression']['members']} "
                     f"members, " + (f"{len(sections)} indexed sections" if sections
                                     else "NO INDEX (made before issue 14's part A?)"))
        self.log("  " + notes[-1])
        if self.oss:
            from l2c_backup.names import manifest_key
            from l2c_backup.storage import read_chunks
            from l2c_backup.storage.oss import OSSStorage
            _, oss_settings = config.storage_target(self.oss.env())
            oss = OSSStorage(oss_settings, "l2c-backups", "db-backups/")
            with open(self.dir_target / key, "rb") as f:
                oss.put_stream(key, read_chunks(f, 8 << 20), backup["bytes"])
            oss.put_bytes(manifest_key(key), (self.dir_target / manifest_key(key)).read_bytes())

        dump_dir = None
        if dump_fd:
            dump_dir = self.workdir / f"pg_dump-Fd-{size:g}"
            t = time.monotonic()
            subprocess.run([str(c.bin("pg_dump")), "-Fd", "--no-sync", "-f", str(dump_dir),
                            "-d", source], env=c.env(), check=True, capture_output=True)
            seconds = time.monotonic() - t
            dump_bytes = sum(p.stat().st_size for p in dump_dir.iterdir())
            notes.append(f"pg_dump -Fd (default compression, one job) {seconds:.1f} s: "
                         f"{dump_bytes / MB:,.1f} MB in {len(list(dump_dir.iterdir()))} files "
                         "(not in any restore figure)")
            self.log("  " + notes[-1])
        c.psql(f'DROP DATABASE "{source}"')
        c.psql("CHECKPOINT")
        return {"key": key, "doc": doc, "expected": expected, "dump_dir": dump_dir,
                "table_expected": table_expected,
                "file": self.dir_target / key, "sql_bytes": backup["sql_bytes"],
                "bytes": backup["bytes"], "db_bytes": report["size_bytes"]}

    def forget(self, prepared):
        """Frees the disk a size used: its object, manifest and pg_dump -Fd directory."""
        from l2c_backup.names import manifest_key
        for path in (prepared["file"], self.dir_target / manifest_key(prepared["key"])):
            path.unlink(missing_ok=True)
        if prepared["dump_dir"]:
            shutil.rmtree(prepared["dump_dir"], ignore_errors=True)

    # -- one run --------------------------------------------------------------------------

    def new_dbname(self):
        self.counter += 1
        return f"restored_{self.counter}"

    def l2c(self, argv, env, errname):
        """One `--run-variant` subprocess: (wall, cpu of it and its children, its JSON)."""
        errlog = self.workdir / f"{errname}.stderr"
        started = time.monotonic()
        with open(errlog, "wb") as err:
            proc = self.children.start([sys.executable, __file__, "--run-variant", *argv],
                                       stdout=subprocess.PIPE, stderr=err, env=env)
            out = proc.stdout.read()
            proc.stdout.close()
            code, usage = self.children.reap(proc)
        wall = time.monotonic() - started
        if code != 0:
            tail = errlog.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"the runner exited {code}: {' / '.join(tail)[-600:]}")
        return wall, cpu_of(usage), json.loads(out)

    def storage_env(self, key):
        return self.oss.env() if key.startswith("o") else {"BACKUP_TARGET": str(self.dir_target)}

    def once(self, key, size, prepared):
        c, bb = self.cluster, self.bb
        dbname = self.new_dbname()
        run = Run(key, size)
        if key[0] in "ac":
            c.create_database(dbname)  # outside the clock: psql and pg_restore need it made
        cpu0, busy0 = self.server.read(), system_busy()
        oss0 = proc_cpu(self.oss.proc.pid, children=False) if self.oss else 0.0
        try:
            try:
                if key == "a":
                    r = bb.run_pipeline(
                        self.children, label(key),
                        [["gunzip", "-c", prepared["file"]],
                         [c.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                          "-d", dbname]], c.env(), self.workdir / "null", size)
                    run.wall, run.cpu = r.wall, r.cpu
                elif key[0] == "c":
                    r = bb.run_pipeline(
                        self.children, label(key),
                        [[c.bin("pg_restore"), "-j", key[1:], "--exit-on-error", "-d", dbname,
                          prepared["dump_dir"]]], c.env(), self.workdir / "null", size)
                    run.wall, run.cpu = r.wall, r.cpu
                else:
                    run.wall, run.cpu, inner = self.l2c(
                        ["--key", prepared["key"], "--create-db", dbname, "--run-jobs", key[1:]],
                        runner_env(c.url("postgres"), c.bin_dir, self.storage_env(key)),
                        f"{key}-{size:g}-{self.counter}")
                    run.summary = inner["summary"]
                    run.notes.append(f"restore_seconds {run.summary.get('restore_seconds', 0):.1f}; "
                                     f"python {inner['self_cpu']:.1f} + children "
                                     f"{inner['children_cpu']:.1f} cpu s")
            except RuntimeError as exc:
                run.wrong = f"failed: {exc}"
            busy1 = system_busy()
            time.sleep(0.3)  # let the postmaster reap the backends
            cpu1 = self.server.read()
            if cpu0 is not None and cpu1 is not None:
                run.server_cpu = cpu1 - cpu0
            if self.oss:
                oss_cpu = proc_cpu(self.oss.proc.pid, children=False) - oss0
                run.server_cpu += oss_cpu
                if key.startswith("o"):
                    run.notes.append(f"OSS server {oss_cpu:.1f} cpu s")
            run.others_cpu = max(0.0, busy1 - busy0 - run.cpu - run.server_cpu)
            if not run.wrong:
                diff = differences(prepared["expected"], fingerprint(c, dbname))
                if diff:
                    run.wrong = "restored database differs from the source: " + "; ".join(diff)[:600]
            return run
        finally:
            c.psql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            c.psql("CHECKPOINT")  # the next run does not pay for this one's dirty pages

    def wait(self):
        """Before a run: no other bench, then a quiet machine. False when a bench still ran."""
        alone = True
        if self.args.bench_wait > 0:
            alone = self.wait_for_benches()
        if self.args.max_wait > 0:
            self.bb.wait_for_quiet(self.log, max_wait=self.args.max_wait)
        return alone

    def wait_for_benches(self):
        started, said = time.monotonic(), False
        while True:
            found = []
            for pattern in OTHER_BENCHES:
                out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
                found += out.splitlines()
            if not found:
                return True
            if time.monotonic() - started >= self.args.bench_wait:
                self.log(f"    other benchmarks still run after {self.args.bench_wait:.0f} s; "
                         "measuring anyway")
                return False
            if not said:
                self.log("    waiting for other benchmarks: " + "; ".join(f[:80] for f in found))
                said = True
            time.sleep(30)

    def timed(self, key, size, prepared):
        for attempt in range(1 + self.args.reruns):
            alone = self.wait()
            run = self.once(key, size, prepared)
            if not alone:
                run.notes.append("MEASURED WHILE ANOTHER BENCHMARK RAN")
            self.runs.append(run)
            again = run.noisy and not run.wrong and attempt < self.args.reruns
            phases = ""
            if run.summary:
                s = run.summary
                phases = (f", phases {s.get('pre_data_seconds', 0):.1f} / "
                          f"{s.get('data_seconds', 0):.1f} / {s.get('post_data_seconds', 0):.1f} s")
            self.log(f"  {label(key):<28} {run.wall:7.1f} s wall {run.cpu:6.1f} s cpu, server "
                     f"{run.server_cpu:.1f}, others {run.others_cpu:.1f} cpu s{phases}"
                     + (f"  WRONG: {run.wrong}" if run.wrong else "")
                     + ("  (noisy: again)" if again else ""))
            if not again:
                return

    def keys(self):
        jobs = self.args.jobs
        keys = ["a"]
        if self.has("parallel_restore"):
            keys += [f"b{n}" for n in jobs] + ([f"o{n}" for n in jobs] if self.oss else [])
        else:
            self.log("  (b) skipped: parallel_restore.py is not in the code yet")
        keys += [f"c{n}" for n in jobs]
        return keys

    def measure(self, size, prepared):
        keys = self.keys()
        for round_ in range(self.args.repeat):
            self.log(f"== {size:g} GB: round {round_ + 1} of {self.args.repeat}")
            for key in keys:
                self.timed(key, size, prepared)

    # -- one table out of a big backup ----------------------------------------------------

    def one_table(self, size, prepared, table):
        c = self.cluster
        sections = (prepared["doc"].get("index") or {}).get("sections") or []
        schema, _, name = table.partition(".")
        mine = [s for s in sections if s.get("kind") == "table-data"
                and s.get("schema") == schema and s.get("table") == name]
        share_sql = sum(s["sql_length"] for s in mine) / prepared["sql_bytes"] if mine else None
        share_obj = sum(s["length"] for s in mine) / prepared["bytes"] if mine else None
        expected = prepared["table_expected"]
        targets = ["dir"] + (["oss"] if self.oss else [])
        for where in targets:
            for round_ in range(self.args.repeat):
                self.wait()
                dbname = self.new_dbname()
                c.create_database(dbname)  # restore_tables restores into an existing database
                result = {"size": size, "table": table, "where": where, "share_sql": share_sql,
                          "share_object": share_obj, "wrong": ""}
                try:
                    env = runner_env(c.url(dbname), c.bin_dir,
                                     self.storage_env("o" if where == "oss" else "b"))
                    wall, cpu, inner = self.l2c(["--key", prepared["key"], "--run-table", table], env,
                                                f"table-{where}-{size:g}-{self.counter}")
                    result.update(wall=wall, cpu=cpu, summary=inner["summary"])
                    diff = differences(expected, fingerprint(c, dbname, only=table))
                    if diff:
                        result["wrong"] = "differs from the source: " + "; ".join(diff)[:600]
                except RuntimeError as exc:
                    result.update(wall=0.0, cpu=0.0, summary={}, wrong=f"failed: {exc}")
                finally:
                    c.psql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
                s = result["summary"]
                self.log(f"  --table {table} <- {where}: {result['wall']:.1f} s wall, "
                         f"{s.get('bytes_read', 0) / MB:,.2f} MB read of "
                         f"{s.get('object_bytes', 0) / MB:,.1f} MB"
                         + (f"  WRONG: {result['wrong']}" if result["wrong"] else ""))
                self.tables.append(result)

    # -- the report -----------------------------------------------------------------------

    def counted(self, key, size):
        runs = [r for r in self.runs if r.key == key and r.size == size]
        if any(r.wrong for r in runs):
            return []  # one wrong restore disqualifies the row
        return [r for r in runs if not r.noisy] or runs

    def fastest(self, key, size):
        runs = self.counted(key, size)
        return min(runs, key=lambda r: r.wall) if runs else None

    def median(self, key, size):
        runs = self.counted(key, size)
        return statistics.median(r.wall for r in runs) if runs else None

    def ratio(self, key, base, size):
        a, b = self.fastest(key, size), self.fastest(base, size)
        if not a or not b:
            return None
        return a.wall / b.wall, self.median(key, size) / self.median(base, size)

    def table(self):
        lines = ["| GB | restore | wall s | median s | vs (a) | vs pg_restore -j N | l2c pre / data "
                 "/ post s | cpu s | server cpu s | others cpu s | notes |",
                 "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
        sizes = sorted({r.size for r in self.runs})
        for size in sizes:
            keys = list(dict.fromkeys(r.key for r in self.runs if r.size == size))
            for key in keys:
                all_runs = [r for r in self.runs if r.key == key and r.size == size]
                best = self.fastest(key, size)
                if best is None:
                    wrong = next(r.wrong for r in all_runs if r.wrong)
                    lines.append(f"| {size:g} | {label(key)} | WRONG | | | | | | | | {wrong} |")
                    continue

                def fmt(pair):
                    return f"{pair[0]:.2f}" + (f" / {pair[1]:.2f}" if self.args.repeat > 1 else "") \
                        if pair else "-"
                vs_c = fmt(self.ratio(key, "c" + key[1:], size)) if key[0] in "bo" else "-"
                s = best.summary
                phases = (f"{s.get('pre_data_seconds', 0):.1f} / {s.get('data_seconds', 0):.1f} / "
                          f"{s.get('post_data_seconds', 0):.1f}" if s else "-")
                notes = list(best.notes)
                if len(all_runs) > 1:
                    notes.append("runs " + ", ".join(
                        f"{r.wall:.1f}" + ("*" if r.noisy else "")
                        for r in sorted(all_runs, key=lambda r: r.wall)) + " s")
                lines.append(
                    f"| {size:g} | {label(key).replace('|', chr(92) + '|')} | {best.wall:.1f} | "
                    f"{self.median(key, size):.1f} | {fmt(self.ratio(key, 'a', size))} | {vs_c} | "
                    f"{phases} | {best.cpu:.1f} | {best.server_cpu:.1f} | {best.others_cpu:.1f} | "
                    f"{'; '.join(notes)} |")
        lines.append("(fastest run's figures; ratios fastest" + (" / median" if self.args.repeat > 1
                                                                 else "") + "; * = noisy run)")
        return "\n".join(lines)

    def table_of_tables(self):
        lines = ["| GB | table <- | seconds | restore_seconds | rows | bytes read MB | object MB | "
                 "read % of object | table's share of SQL % | its sections % of object | check |",
                 "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in self.tables:
            s = r["summary"]
            read, obj = s.get("bytes_read"), s.get("object_bytes")
            pct = f"{100 * read / obj:.2f}" if read is not None and obj else "-"
            share = f"{100 * r['share_sql']:.2f}" if r["share_sql"] is not None else "-"
            share_o = f"{100 * r['share_object']:.2f}" if r["share_object"] is not None else "-"
            lines.append(
                f"| {r['size']:g} | {r['table']} <- {r['where']} | {r['wall']:.1f} | "
                f"{s.get('restore_seconds', 0):.1f} | {s.get('rows', '-')} | "
                f"{(read or 0) / MB:,.2f} | {(obj or 0) / MB:,.1f} | {pct} | {share} | {share_o} | "
                f"{('WRONG: ' + r['wrong']) if r['wrong'] else 'equal to the source'} |")
        return "\n".join(lines)

    def verdicts(self):
        out = []
        cores = os.cpu_count()
        b, base_a, base_c = f"b{TARGET_JOBS}", "a", f"c{TARGET_JOBS}"
        for size in sorted({r.size for r in self.runs}):
            pair_a, pair_c = self.ratio(b, base_a, size), self.ratio(b, base_c, size)
            if pair_a is None:
                out.append(f"- {size:g} GB: --jobs {TARGET_JOBS} >= {TARGET_VS_ONE_STREAM}x faster "
                           f"than (a): NOT met (no valid {b} or (a) row)")
            else:
                speed = [1 / x for x in pair_a]
                ok = min(speed) >= TARGET_VS_ONE_STREAM
                out.append(f"- {size:g} GB: --jobs {TARGET_JOBS}'s speed-up over (a) is {speed[0]:.2f}x "
                           f"(process wall, fastest; median {speed[1]:.2f}x; target >= "
                           f"{TARGET_VS_ONE_STREAM}x, on both): "
                           f"{'met' if ok else 'NOT met'}")
            if pair_c is None:
                out.append(f"- {size:g} GB: --jobs {TARGET_JOBS} within {TARGET_VS_PG_RESTORE}x of "
                           f"pg_restore -j {TARGET_JOBS}: NOT met (no valid row)")
            else:
                ok = max(pair_c) <= TARGET_VS_PG_RESTORE
                out.append(f"- {size:g} GB: --jobs {TARGET_JOBS} takes {pair_c[0]:.2f}x "
                           f"pg_restore -j {TARGET_JOBS}'s wall (fastest; median {pair_c[1]:.2f}x; "
                           f"target <= {TARGET_VS_PG_RESTORE}x, on both): {'met' if ok else 'NOT met'}")
            best = self.fastest(b, size)
            if best and best.summary.get("restore_seconds") and self.fastest(base_a, size):
                inner = best.summary["restore_seconds"]
                out.append(f"  (on restore_seconds, no interpreter start: {inner:.1f} s; (a) takes "
                           f"{self.fastest(base_a, size).wall / inner:.2f}x that, "
                           + (f"it takes {inner / self.fastest(base_c, size).wall:.2f}x "
                              f"pg_restore -j {TARGET_JOBS}'s)" if self.fastest(base_c, size)
                              else "no pg_restore row)"))
        seen = set()
        for r in self.tables:  # one verdict per table and source: the bytes read repeat
            if (r["table"], r["where"], r["size"]) in seen and not r["wrong"]:
                continue
            seen.add((r["table"], r["where"], r["size"]))
            s = r["summary"]
            if r["wrong"] or not s.get("object_bytes"):
                out.append(f"- one table ({r['table']} <- {r['where']}, {r['size']:g} GB): bytes "
                           f"read <= {100 * TARGET_TABLE_READ:.0f}% of the object: NOT met "
                           f"({r['wrong'] or 'no figures'})")
                continue
            frac = s["bytes_read"] / s["object_bytes"]
            out.append(f"- one table ({r['table']} <- {r['where']}, {r['size']:g} GB): read "
                       f"{100 * frac:.2f}% of the object (target <= {100 * TARGET_TABLE_READ:.0f}%): "
                       f"{'met' if frac <= TARGET_TABLE_READ else 'NOT met'}")
            if r["share_sql"] is not None and not 0.005 <= r["share_sql"] <= 0.02:
                out.append(f"  (the table holds {100 * r['share_sql']:.2f}% of the SQL, not ~1%: "
                           "the target's premise does not hold for it)")
        if self.runs:
            out.append("- (a) and l2c restore in one transaction; pg_restore -j cannot (each job "
                       "commits its own), so a failed (cN) leaves a half-restored database")
        if cores != TARGET_CORES:
            out.append(f"- the --jobs targets are stated for a {TARGET_CORES}-core machine; this "
                       f"one has {cores}")
        if any(r.notes and "MEASURED WHILE ANOTHER BENCHMARK RAN" in r.notes for r in self.runs):
            out.append("- some runs were measured while another benchmark ran")
        return "\n".join(out)

    def close(self):
        self.children.stop_all()
        if self.oss is not None:
            with contextlib.suppress(Exception):
                self.oss.__exit__(None, None, None)
        if self.cluster is not None:
            self.cluster.stop()
        if self.args.keep:
            print(f"kept {self.workdir}", flush=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def machine_facts():
    model = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / (1 << 20):.0f} GB RAM"
                break
    load = ", load %.2f %.2f %.2f" % os.getloadavg()
    return (f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model or platform.machine()}"
            f"{mem}{load}, Python {platform.python_version()}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1", help="database sizes in GiB for the whole "
                        "restores, comma-separated (default 1; 0.1 for a smoke run)")
    parser.add_argument("--table-size", type=float, default=4.0, help="GiB of the database the "
                        "single table is restored from (default 4; 0: no single-table part)")
    parser.add_argument("--table", default=DEFAULT_TABLE, help=f"the table (default {DEFAULT_TABLE}, "
                        "~1%% of realistic_db's data)")
    parser.add_argument("--jobs", default="1,2,4", help="--jobs / pg_restore -j values (default 1,2,4)")
    parser.add_argument("--oss", action="store_true", help="also restore from the local OSS server")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the fastest run of each row "
                        "counts, the median is shown (default 3)")
    parser.add_argument("--reruns", type=int, default=2,
                        help="extra runs of a run during which others used > 0.1 CPU (default 2)")
    parser.add_argument("--max-wait", type=float, default=180, help="seconds to wait before each "
                        "run for a quiet machine (default 180; 0: no waiting)")
    parser.add_argument("--bench-wait", type=float, default=2700, help="seconds to wait before each "
                        "run for bench/backup.py, verify.py and restore.py to finish (default 2700)")
    parser.add_argument("--workdir", help="where the work directory goes (default: the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (each run's stderr)")
    parser.add_argument("--run-variant", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--create-db", help=argparse.SUPPRESS)
    parser.add_argument("--run-jobs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-table", action="append", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_variant:
        return run_variant(args)
    args.sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    args.jobs = [int(j) for j in args.jobs.split(",") if j.strip()]

    exit_on_signals()  # every finally below runs

    def log(msg):
        print(msg, flush=True)

    bench = Bench(args, log)
    began = time.monotonic()
    try:
        log(f"bench/restore_jobs.py: {machine_facts()}; work dir {bench.workdir}")
        bench.start()
        sizes = sorted(set(args.sizes) | ({args.table_size} if args.table_size > 0 else set()))
        for size in sizes:
            restores = size in args.sizes
            prepared = bench.prepare(size, dump_fd=restores,
                                     table=args.table if size == args.table_size else None)
            try:
                if restores:
                    bench.measure(size, prepared)
                if size == args.table_size:
                    if bench.has("table_restore"):
                        bench.one_table(size, prepared, args.table)
                    else:
                        log("  single table skipped: table_restore.py is not in the code yet")
            finally:
                bench.forget(prepared)
        log("")
        for size, notes in bench.setup_notes.items():
            for note in notes:
                log(f"{size:g} GB: {note}")
        log(f"machine: {machine_facts()}")
        if bench.runs:
            log("\n" + bench.table())
        if bench.tables:
            log("\n" + bench.table_of_tables())
        log("\nTargets (issue 14):\n" + bench.verdicts())
        log(f"\ntime taken: {time.monotonic() - began:.0f} s")
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted: stopping what this bench started")
        return 130
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
