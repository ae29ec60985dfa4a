"""The failure matrix (issue 12): every subcommand and FC handler against each failure an
operator meets, with one rule for all of them.

A failure ends in one line naming the thing (endpoint, bucket, key, host, role, variable)
and what to do, with the exit code of its error class, no traceback and no secret; a
person who would otherwise not hear of it gets one alert (the FC handlers; the CLI's
unattended commands backup, verify, prune, mirror and status). With every setting right
(and the optional ones empty, which means unset) each command succeeds and alerts nobody.

Everything is real: one PostgreSQL cluster and one local OSS server for the module; each
cell in a process of its own with its own environment, running `l2c-backup`'s main or an
FC handler as FC calls it (bytes of JSON, a context holding the role's credentials); those
processes are forked from one that imported the code once (tests/matrix_forkserver.py),
since imports are most of a short command's CPU. Dropped connections are injected by the
OSS server; alerts are counted as POSTs at a receiver (one webhook path per cell). The
cells run in parallel: the slow ones wait out retries.

The table of outcomes is written to <pytest's base temp>/failure_matrix.md and printed at
the end of the module (visible with -s).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alert_receiver import AlertReceiver
from l2c_backup import age, config
from l2c_backup.backup import run_backup
from l2c_backup.errors import (BackupNotFound, ConfigInvalid, DatabaseUnreachable, DumpFailed,
                               RestoreRefused, StorageFailed, UploadFailed)
from l2c_backup.mirror import mirror
from l2c_backup.storage import open_storage
from l2c_backup.verify import verify
from l2c_local import resolve
from l2c_local.oss import LocalOSS
from l2c_local.oss.faults import Fault
from l2c_local.pgcluster import free_port

TESTS = Path(__file__).resolve().parent

# Recognisable secrets: none of them may appear in any output or alert of any cell.
KEY_ID, SECRET = "LTAImatrixKey01", "Matrix-Right-S3cret-7Qp"
WRONG_SECRET = "Matrix-Wrong-S3cret-4Zk"
ROLE = ("STS.matrixRole01", "Matrix-Role-S3cret-2Wd", "Matrix-Sts-T0ken-9Hq")
WEAK_ROLE, WEAK_PASSWORD = "weakling", "Matrix-Weak-Pa55-8Lm"
AGE_SECRET, _ = age.generate()  # BACKUP_AGE_IDENTITY, inline, where a row reads it (issue 15)

BUCKET, DR_BUCKET, DROP_BUCKET, NO_BUCKET = "l2c-backups", "l2c-backups-dr", "l2c-drop", "l2c-no-such-bucket"
DATABASE = "l2c_matrix"
MISSING_KEY = "db-backups/daily/backup_2020-01-01.sql.gz"

CLI_ROWS = ("backup", "verify KEY", "verify --all", "prune", "restore --latest", "mirror", "status")
FC_ROWS = ("FC backup", "FC verify", "FC drill", "FC watchdog")
IDENTITY_ROWS = ("verify KEY", "verify --all", "restore --latest", "mirror", "status", "FC drill")
UNATTENDED = ("backup", "verify KEY", "verify --all", "prune", "mirror", "status")
COLUMNS = ("ok, settings empty", "OSS credentials", "OSS endpoint dead", "OSS bucket missing",
           "object key missing", "connection dropped", "DB refused", "DB no password",
           "DB role unprivileged", "setting bad")
# The variable each row gets wrong in "setting bad": one it reads.
BAD_SETTING = {"backup": ("GZIP_LEVEL", "fast"), "verify KEY": ("VERIFY_MANIFEST_WAIT_SECONDS", "soon"),
               "verify --all": ("VERIFY_MANIFEST_WAIT_SECONDS", "soon"), "prune": ("KEEP_DAILY", "ten"),
               "restore --latest": ("OSS_BACKUP_BUCKET", "Bad_Bucket"),
               "mirror": ("OSS_BACKUP_BUCKET", "Bad_Bucket"), "status": ("PRICE_IA", "cheap"),
               "FC backup": ("GZIP_LEVEL", "fast"), "FC verify": ("VERIFY_MANIFEST_WAIT_SECONDS", "soon"),
               "FC drill": ("RTO_SECONDS", "fast"), "FC watchdog": ("WATCHDOG_GRACE_HOURS", "two")}
EMPTY_SETTINGS = ("KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MANUAL", "PRICE_STANDARD", "PRICE_IA",
                  "PRICE_ARCHIVE", "PRICE_CRR_TRAFFIC", "WATCHDOG_GRACE_HOURS", "GZIP_LEVEL",
                  "VERIFY_MANIFEST_WAIT_SECONDS", "RTO_SECONDS", "OSS_REGION", "BACKUP_DATABASES",
                  "OSS_SERVER_SIDE_ENCRYPTION", "BACKUP_TIMEOUT_SECONDS", "DRILL_CHECKS")


@dataclass
class Cell:
    row: str
    column: str
    args: list = field(default_factory=list)  # CLI arguments, or [handler, event] for FC
    env: dict = field(default_factory=dict)  # changes to the row's environment
    role: tuple = ROLE
    exit_codes: tuple = (0,)  # the documented codes it may end with; (0,) = success
    named: tuple = ()  # what the line must name
    # what happened
    code: object = None
    line: str = ""
    stdout: str = ""
    stderr: str = ""
    alerts: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def id(self):
        return f"{self.row}|{self.column}"

    @property
    def path(self):
        return "/webhook/" + "".join(c if c.isalnum() else "-" for c in self.id)

    @property
    def fc(self):
        return self.row.startswith("FC ")


# -- the world the cells run in ------------------------------------------------------------

@dataclass
class World:
    oss: LocalOSS
    receiver: AlertReceiver
    cluster: object
    tmp: Path
    daily_key: str = ""
    closed_port: int = 0

    def db_url(self, dbname=DATABASE, user=None, password=None):
        user = user or self.cluster.superuser
        password = self.cluster.password if password is None else password
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}{self.cluster.host}:{self.cluster.port}/{dbname}"

    def base_env(self, cell):
        env = {"PATH": os.environ["PATH"], "HOME": str(self.tmp), "PGPASSFILE": str(self.tmp / "none"),
               "OSS_ENDPOINT": self.oss.endpoint, "OSS_BACKUP_BUCKET": BUCKET,
               "DATABASE_URL": self.db_url(), "ALERT_WEBHOOK_URL": self.receiver.url(cell.path),
               "ALERT_TIMEOUT_SECONDS": "2", "OSS_DR_BUCKET": DR_BUCKET}
        if cell.fc:
            env.update(DRILL_DATABASE_URL=self.db_url("postgres"), WATCHDOG_KINDS="daily")
        else:
            env.update(OSS_ACCESS_KEY_ID=KEY_ID, OSS_ACCESS_KEY_SECRET=SECRET,
                       MIRROR_DIR=str(self.tmp / "mirror"))
        if cell.row in IDENTITY_ROWS:
            env["BACKUP_AGE_IDENTITY"] = AGE_SECRET
        if cell.row in ("backup", "FC backup"):  # new backups out of the others' way
            env["OSS_BACKUP_PREFIX"] = "scratch-cli/" if cell.row == "backup" else "scratch-fc/"
        return resolve.child_env(env)

    def secrets(self):
        return {"OSS secret": SECRET, "wrong OSS secret": WRONG_SECRET, "role secret": ROLE[1],
                "STS token": ROLE[2], "database password": self.cluster.password,
                "weak role password": WEAK_PASSWORD, "age identity": AGE_SECRET,
                "age identity (lower case)": AGE_SECRET.lower(),
                "age identity's body": AGE_SECRET[len("AGE-SECRET-KEY-1"):],
                "age identity's body (lower case)": AGE_SECRET[len("AGE-SECRET-KEY-1"):].lower()}


@pytest.fixture(scope="module")
def world(pg_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    pg_cluster.psql(f"DROP DATABASE IF EXISTS {DATABASE}")
    pg_cluster.create_database(DATABASE)
    pg_cluster.psql("CREATE TABLE items (id int PRIMARY KEY, name text);"
                    "INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 2000) i",
                    dbname=DATABASE)
    pg_cluster.psql(f"DROP ROLE IF EXISTS {WEAK_ROLE}; "
                    f"CREATE ROLE {WEAK_ROLE} LOGIN NOCREATEDB PASSWORD '{WEAK_PASSWORD}'")
    with LocalOSS(buckets=[BUCKET, DR_BUCKET, DROP_BUCKET]) as oss:
        oss.add_credentials(KEY_ID, SECRET)
        oss.add_credentials(*ROLE)
        receiver = AlertReceiver().start()
        w = World(oss, receiver, pg_cluster, tmp, closed_port=free_port())
        # A daily and a weekly backup, verified, in the primary and the DR bucket and the
        # mirror: with every setting right, status finds the 3-2-1 rule met.
        settings = dict(OSS_ENDPOINT=oss.endpoint, OSS_ACCESS_KEY_ID=KEY_ID,
                        OSS_ACCESS_KEY_SECRET=SECRET, DATABASE_URL=w.db_url(), PATH=os.environ["PATH"])
        for bucket in (BUCKET, DR_BUCKET):
            cfg = config.load(dict(settings, OSS_BACKUP_BUCKET=bucket))
            for kind in ("daily", "weekly"):
                [done] = run_backup(cfg, kind)["backups"]
                storage = open_storage(cfg.target, cfg.oss)
                assert verify(storage, done["key"], 5).ok
                if kind == "daily":
                    w.daily_key = done["key"]
            if bucket == BUCKET:
                mirror(storage, str(tmp / "mirror"), 10)
        oss.inject(Fault(bucket=DROP_BUCKET, drop_request_after=0, times=None))
        try:
            yield w
        finally:
            receiver.stop()
            for column in COLUMNS:
                pg_cluster.psql(f"DROP DATABASE IF EXISTS {restore_db(column)} WITH (FORCE)")


# -- the cells -----------------------------------------------------------------------------

def applies(row, column):
    """Which failures each command meets at all."""
    if column == "object key missing":
        return row in ("verify KEY", "restore --latest", "FC verify")
    if column.startswith("DB "):
        return row in ("backup", "restore --latest", "FC backup", "FC drill")
    return True


def cell_ids():
    return [f"{row}|{column}" for row in CLI_ROWS + FC_ROWS for column in COLUMNS
            if applies(row, column)]


def restore_db(column):
    return "matrix_r_" + "".join(c if c.isalnum() else "_" for c in column.lower())


def cli_args(row, world, column):
    restore = ["--target-url", world.db_url("postgres"), "--create-db", restore_db(column)]
    return {"backup": ["backup", "--kind", "manual"],
            "verify KEY": ["verify", MISSING_KEY if column == "object key missing" else world.daily_key],
            "verify --all": ["verify", "--all"], "prune": ["prune"],
            "restore --latest": (["restore", MISSING_KEY] + restore if column == "object key missing"
                                 else ["restore", "--latest", "--kind", "daily"] + restore),
            "mirror": ["mirror", "--to", str(world.tmp / "mirrors" / restore_db(column))],
            "status": ["status"]}[row]


def fc_args(row, world, bucket=BUCKET, key=None):
    if row == "FC verify":
        event = {"events": [{"eventName": "ObjectCreated:PutObject", "eventSource": "acs:oss",
                             "region": "cn-hangzhou",
                             "oss": {"bucket": {"name": bucket}, "object": {"key": key or world.daily_key}}}]}
        return ["verify", json.dumps(event)]
    return {"FC backup": ["backup", '{"kind": "manual"}'], "FC drill": ["drill", '{"kind": "daily"}'],
            "FC watchdog": ["watchdog", "{}"]}[row]


# Where each row takes its database from, and which database it connects to there.
DB_SETTING = {"backup": ("DATABASE_URL", DATABASE), "FC backup": ("DATABASE_URL", DATABASE),
              "restore --latest": ("--target-url", "postgres"), "FC drill": ("DRILL_DATABASE_URL", "postgres")}


def build_cells(world):
    w = world
    cells = []
    for row in CLI_ROWS + FC_ROWS:
        fc = row.startswith("FC ")

        def cell(column, env=None, exit_codes=(0,), named=(), args=None, **kw):
            args = args or (fc_args(row, w) if fc else cli_args(row, w, column))
            cells.append(Cell(row, column, args, env or {}, exit_codes=exit_codes, named=named, **kw))

        def db_cell(column, url, exit_codes, named):
            setting, _ = DB_SETTING[row]
            if setting == "--target-url":
                args = cli_args(row, w, column)
                args[args.index("--target-url") + 1] = url
                cell(column, exit_codes=exit_codes, named=named, args=args)
            else:
                cell(column, {setting: url}, exit_codes, named)

        stored = (StorageFailed.exit_code,)
        if "backup" in row:  # the backup names its failure to write as UploadFailed
            stored = (UploadFailed.exit_code,)
        cell("ok, settings empty", dict.fromkeys(EMPTY_SETTINGS, ""))
        if fc:
            cell("OSS credentials", role=(ROLE[0], WRONG_SECRET, ROLE[2]), exit_codes=stored, named=(BUCKET,))
        else:
            cell("OSS credentials", {"OSS_ACCESS_KEY_SECRET": WRONG_SECRET}, stored, (BUCKET,))
        cell("OSS endpoint dead", {"OSS_ENDPOINT": f"http://127.0.0.1:{w.closed_port}"}, stored,
             (f"127.0.0.1:{w.closed_port}",))
        cell("OSS bucket missing", {"OSS_BACKUP_BUCKET": NO_BUCKET}, stored, (NO_BUCKET,),
             args=fc_args(row, w, NO_BUCKET) if row == "FC verify" else None)
        cell("connection dropped", {"OSS_BACKUP_BUCKET": DROP_BUCKET}, stored, (DROP_BUCKET,),
             args=fc_args(row, w, DROP_BUCKET) if row == "FC verify" else None)
        if applies(row, "object key missing"):
            cell("object key missing", exit_codes=(BackupNotFound.exit_code,), named=(MISSING_KEY,),
                 args=fc_args(row, w, key=MISSING_KEY) if fc else None)
        if applies(row, "DB refused"):
            setting, dbname = DB_SETTING[row]  # the messages name the setting to fix
            db_cell("DB refused", f"postgresql://{w.cluster.superuser}:{w.cluster.password}@127.0.0.1:"
                                  f"{w.closed_port}/{dbname}",
                    (DatabaseUnreachable.exit_code,), (f"127.0.0.1:{w.closed_port}", setting))
            db_cell("DB no password", w.db_url(dbname, password=""), (DatabaseUnreachable.exit_code,),
                    (f'user "{w.cluster.superuser}"', f"{w.cluster.host}:{w.cluster.port}", setting))
            db_cell("DB role unprivileged", w.db_url(dbname, user=WEAK_ROLE, password=WEAK_PASSWORD),
                    (DumpFailed.exit_code,) if "backup" in row else (RestoreRefused.exit_code,),
                    (WEAK_ROLE,))
        name, value = BAD_SETTING[row]
        cell("setting bad", {name: value}, (ConfigInvalid.exit_code,), (name,))
    assert sorted(c.id for c in cells) == sorted(cell_ids())
    return cells


class ForkServer:
    """tests/matrix_forkserver.py: each cell's command or handler in a process of its own,
    forked from one that imported the code once."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, str(TESTS / "matrix_forkserver.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=resolve.child_env())

    def run(self, request, timeout=600):
        """(exit status, stdout, stderr) of one child; killed after `timeout` seconds."""
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = int(self.proc.stdout.readline())
        rc = Path(request["stdout"] + ".rc")
        deadline = time.monotonic() + timeout
        while not rc.exists():
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                return "timeout", Path(request["stdout"]).read_text(), Path(request["stderr"]).read_text()
            time.sleep(0.1)
        return int(rc.read_text()), Path(request["stdout"]).read_text(), Path(request["stderr"]).read_text()

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_cell(world, server, cell):
    env = dict(world.base_env(cell), **cell.env)
    files = world.tmp / "cells" / "".join(c if c.isalnum() else "-" for c in cell.id)
    files.mkdir(parents=True)
    request = {"env": env, "stdout": str(files / "stdout"), "stderr": str(files / "stderr")}
    if cell.fc:
        handler, event = cell.args
        request.update(kind="fc", spec={"cell": cell.id, "handler": handler, "event": event,
                                        "role": list(cell.role)})
    else:
        request.update(kind="cli", argv=cell.args)
    started = time.monotonic()
    cell.code, cell.stdout, cell.stderr = server.run(request)
    cell.seconds = time.monotonic() - started
    return cell


def check(world, cell):
    """What is wrong with the cell's outcome (empty: it keeps every rule)."""
    p = []
    cell.alerts = [r.body for r in world.receiver.requests if r.path == cell.path]
    everything = cell.stdout + cell.stderr + json.dumps(cell.alerts, ensure_ascii=False)
    for what, secret in world.secrets().items():
        if secret in everything:
            p.append(f"shows the {what}")
    if "Traceback" in cell.stderr or "Traceback" in cell.stdout:
        p.append("a traceback")
    expect_failure = cell.exit_codes != (0,)
    if cell.fc:
        found = [l for l in cell.stdout.splitlines() if l.startswith("MATRIX-OUTCOME ")]
        outcome = json.loads(found[-1].split(" ", 1)[1]) if found else {"raised": "nothing", "message": cell.stderr[-300:]}
        logged = []
        for line in cell.stderr.splitlines():
            try:
                logged.append(json.loads(line))
            except ValueError:
                p.append(f"a log line that is not JSON: {line[:80]}")
        if expect_failure:
            cell.code = outcome.get("exit_code") if outcome.get("l2c") else outcome.get("raised", "returned")
            cell.line = " ".join(outcome.get("message", "").split())
            if not outcome.get("l2c"):
                p.append(f"raised {outcome.get('raised', 'nothing')}, not an L2CError")
            errors = [l["message"] for l in logged if l.get("level") == "error"]
            if not any(all(thing in line for thing in cell.named) for line in errors):
                p.append(f"no error log line naming {', '.join(cell.named)}")
        else:
            cell.code = 0 if "returned" in outcome else outcome.get("exit_code") or outcome.get("raised")
            cell.line = json.dumps(outcome.get("returned", outcome.get("message", "")))[:200]
    else:
        prefix = f"l2c-backup {cell.args[0]}:"
        lines = [l for l in cell.stderr.splitlines() if l.startswith(prefix)]
        cell.line = lines[-1] if lines else cell.stderr.strip().splitlines()[-1:][0] if cell.stderr.strip() else ""
        if expect_failure:
            if len(lines) != 1 or not cell.stderr.rstrip().endswith(lines[0]):
                p.append(f"{len(lines)} lines starting '{prefix}', not one at the end")
    if cell.code not in cell.exit_codes:
        p.append(f"exit {cell.code}, documented {'/'.join(map(str, cell.exit_codes))}")
    for thing in cell.named:
        if thing not in cell.line:
            p.append(f"does not name {thing}")
    if expect_failure and "what to do" not in cell.line:
        p.append("does not say what to do")
    alerted = len(cell.alerts)
    if not expect_failure and alerted:
        p.append(f"{alerted} alerts for a success")
    if expect_failure and (cell.fc or cell.row in UNATTENDED) and alerted != 1:
        p.append(f"{alerted} alerts, not one")
    return p


@pytest.fixture(scope="module")
def matrix(world, tmp_path_factory):
    cells = build_cells(world)
    server = ForkServer(world.tmp)
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda c: run_cell(world, server, c), cells))
    finally:
        server.stop()
    for cell in cells:
        cell.problems = check(world, cell)
    by_id = {cell.id: cell for cell in cells}
    yield by_id
    table = render(by_id)
    out = tmp_path_factory.getbasetemp() / "failure_matrix.md"
    out.write_text(table)
    print(f"\n\nfailure matrix ({out}):\n\n{table}")


def render(cells):
    """command x failure -> exit code (the error's exit code for a handler) and outcome."""
    lines = ["| command | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in CLI_ROWS + FC_ROWS:
        shown = []
        for column in COLUMNS:
            cell = cells.get(f"{row}|{column}")
            if cell is None:
                shown.append("-")
                continue
            mark = "ok" if not cell.problems else "FAIL: " + "; ".join(cell.problems)
            alert = f", {len(cell.alerts)} alert" if cell.alerts else ""
            shown.append(f"{cell.code} {mark}{alert}")
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    lines.append("")
    lines.append("Rows: `backup --kind manual`, `verify KEY`, `verify --all`, `prune`, `restore --latest "
                 "--kind daily --target-url URL --create-db NAME` (`restore KEY ...` for a missing key), "
                 "`mirror --to DIR`, `status` (DR bucket and mirror set); the FC handlers backup "
                 "`{\"kind\": \"manual\"}`, verify (an OSS event for the daily backup), drill "
                 "`{\"kind\": \"daily\"}`, watchdog. Columns: every setting right and the optional ones "
                 "empty; a wrong AccessKey secret; an endpoint nobody listens on; a bucket that does not "
                 "exist; a key that does not exist; every connection to the bucket dropped (the server's "
                 "fault injection); a database port nobody listens on; a URL without password against "
                 "SCRAM; a role without SELECT / CREATEDB; a malformed setting the command reads.")
    lines.append("")
    lines.append("Each cell: exit code (a handler: its L2CError's exit code; 0 = succeeded) and whether "
                 "every rule held (one line naming the thing and what to do, no traceback, no secret, "
                 "one alert where nobody would hear of it). The lines:")
    for cell in cells.values():
        lines.append(f"- {cell.id} ({cell.seconds:.0f} s): {cell.line}")
    for cell in cells.values():
        if cell.problems:
            lines += ["", f"### {cell.id}: stderr", "```", cell.stderr[-2500:], "```"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("cell_id", cell_ids())
def test_failure_matrix_cell(matrix, cell_id):
    cell = matrix[cell_id]
    assert cell.problems == [], f"{cell_id}: {cell.line}\n{cell.stderr[-3000:]}"
