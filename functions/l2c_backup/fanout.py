"""Many databases: one backup each, side by side, and a run record of every outcome.

Why: one FC instance that backs up database after database runs them one after another
inside one time budget, and compression keeps its cores busy with one dump at a time.
With BACKUP_DATABASES=all or a list, the backup function's timer invocation (the
dispatcher) starts one asynchronous invocation of its own function per database
instead: FC gives each its own instance and time budget, and a database that fails costs
the others nothing. Off FC, `l2c-backup backup` runs the databases in a bounded pool of
threads (BACKUP_CONCURRENCY / --concurrency, default 2: each backup already compresses on
every core, so more would only share the same cores; two overlap one database's waits on
the server and on OSS with another's compression, at about 150 MB of memory each).

This is a layer above run_backup(only=database): each database is backed up exactly as
a run of all of them would back it up, into the same key.

The run record, beside the backups under the prefix (no backup key: prune, verify and
the status survey leave it alone):

    <prefix>runs/<kind>/<run>/run.json               the dispatch: databases, when, by
                                                     whom, when their outcomes are due
    <prefix>runs/<kind>/<run>/db/<database>.json     one outcome per database: ok with its
                                                     key, bytes and seconds, or failed with
                                                     the one-line error (never a secret)
    <prefix>runs/<kind>/<run>/globals.json           the globals' outcome (BACKUP_GLOBALS)

<run> is the slot for daily and weekly (2026-11-27, 2026-W48): one run per slot; a
manual run adds the dispatcher's request id to its second. The watchdog and `status`
read the newest run of each kind (newest_run): which databases are expected, and which
were dispatched but never reported an outcome.

Nothing doubles. A timer delivered twice, or two dispatchers at once: the dispatcher
holds the claim on run.json (claims.py) while it looks and dispatches, and a run.json
already there means the slot was dispatched: nothing more is started. Every invocation
carries an async task id made of the slot and the database, which FC refuses a second
time (a dispatcher that died half-way and is delivered again starts only the rest). And
each database's backup is made once per slot in any case (claims.py, _choose_key), so an
invocation FC retries is a retry, not a second backup.

Globals: the dispatcher backs them up itself, after dispatching. `pg_dumpall
--globals-only` is a few KB and seconds: it needs no instance or budget of its own.
"""
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from urllib.parse import quote, unquote

from . import alerts, claims, history, invoke, logs, names, signals
from .backup import GLOBALS, databases_to_back_up, run_backup
from .errors import ConfigInvalid, L2CError
from .signals import Stopped
from .storage import ObjectLocked, open_storage

log = logging.getLogger(__name__)

RUNS = "runs/"
DEFAULT_CONCURRENCY = 2
OUTCOME_MARGIN_SECONDS = 15 * 60  # past the budget: queueing in FC, a cold start, clocks
KEEP_RUNS_AT_LEAST = 10
STOP_WAIT_SECONDS = 120  # at most, for the stopped threads' clean-up (aborts, deletes)


def wanted(config):
    """Fan out when the configuration names several databases (or all of them)."""
    return config.databases == ["all"] or len(config.databases) > 1


# -- the run record ---------------------------------------------------------------------------
def run_name(kind, when, request_id=""):
    """The slot's stamp for daily / weekly, the second plus a request id for manual."""
    stamp = names.stamp(kind, when)
    if kind != "manual":
        return stamp
    tail = re.sub(r"[^0-9A-Za-z]", "", request_id or uuid.uuid4().hex)[:12]
    return f"{stamp}-{tail}" if tail else stamp


def run_folder(prefix, kind, run):
    return f"{prefix}{RUNS}{kind}/{run}/"


def summary_key(prefix, kind, run):
    return run_folder(prefix, kind, run) + "run.json"


def outcome_key(prefix, kind, run, database):
    if database == GLOBALS:
        return run_folder(prefix, kind, run) + "globals.json"
    return run_folder(prefix, kind, run) + "db/" + quote(database, safe="") + ".json"


def one_line(err):
    message = " ".join(str(err.args[0] if err.args else err).split())
    return logs.redact(message)


def outcome_ok(done, request_id):
    """The record of a backup that worked (or had been made already: `skipped`)."""
    record = {"database": done["database"], "ok": True, "key": done["key"],
              "bytes": done["bytes"], "sql_bytes": done["sql_bytes"],
              "seconds": done["seconds"], "request_id": request_id,
              "finished_at": names.now().isoformat(timespec="seconds")}
    if done.get("skipped"):
        record["skipped"] = done["skipped"]
    return record


def outcome_failed(database, err, request_id):
    """The record of a backup that failed: its one line, never a secret."""
    return {"database": database, "ok": False, "error": one_line(err),
            "what_to_do": logs.redact(" ".join(getattr(err, "hint", "").split())),
            "error_type": type(err).__name__, "exit_code": getattr(err, "exit_code", 1),
            "request_id": request_id, "finished_at": names.now().isoformat(timespec="seconds")}


def record_outcome(storage, kind, run, record):
    """Writes one database's outcome beside its run. A backup that was skipped (made
    already, or being made by another run) never replaces an outcome that is there. A
    record that cannot be written is logged, never raised: the backup's own outcome
    (and its alert) stands."""
    key = outcome_key(storage.prefix, kind, run, record["database"])
    try:
        if record.get("skipped") and storage.head(key) is not None:
            return
        storage.put_bytes(key, json.dumps(record, sort_keys=True).encode())
    except Exception as exc:
        log.warning("could not record the outcome of %s in %s (%s); the watchdog reads the "
                    "backups themselves", record["database"], key, _reason(exc))


def _read_json(storage, key):
    try:
        with storage.open(key) as reading:
            document = json.loads(b"".join(reading))
    except (FileNotFoundError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def newest_run(storage, kind):
    """The newest run record of `kind`: its run.json with "outcomes" ({database: record})
    and "globals" added, or None when no run of several databases was recorded."""
    base = f"{storage.prefix}{RUNS}{kind}/"
    runs = {}
    for obj in storage.list(base):
        run, _, rest = obj.key[len(base):].partition("/")
        runs.setdefault(run, []).append((rest, obj.key))
    for run in sorted(runs, reverse=True):
        keys = dict(runs[run])
        if "run.json" not in keys:
            continue  # a dispatcher died before it wrote it: an older run tells more
        summary = _read_json(storage, keys["run.json"]) or {}
        summary["outcomes"] = {}
        for rest, key in runs[run]:
            if rest.startswith("db/") and rest.endswith(".json"):
                record = _read_json(storage, key)
                if record:
                    summary["outcomes"][unquote(rest[3:-5])] = record
        summary["globals_outcome"] = _read_json(storage, keys["globals.json"]) \
            if "globals.json" in keys else None
        summary.setdefault("run", run)
        return summary
    return None


def missing_outcomes(run, now):
    """[database] dispatched in `run` that have no outcome although it was due."""
    if not run or not run.get("outcomes_due"):
        return []
    try:
        due = datetime.fromisoformat(run["outcomes_due"]).timestamp()
    except (TypeError, ValueError):
        return []
    if now < due:
        return []
    return [db for db in run.get("databases", []) if db not in run.get("outcomes", {})]


def prune_runs(storage, kind, keep):
    """Removes the records of runs older than the newest `keep` of this kind (the
    backups' own retention count, at least KEEP_RUNS_AT_LEAST). Never raises."""
    keep = max(keep or 0, KEEP_RUNS_AT_LEAST)
    base = f"{storage.prefix}{RUNS}{kind}/"
    try:
        listed = list(storage.list(base))
        runs = sorted({o.key[len(base):].split("/", 1)[0] for o in listed}, reverse=True)
        old = set(runs[keep:])
        for obj in listed:
            if obj.key[len(base):].split("/", 1)[0] in old:
                with contextlib.suppress(ObjectLocked):
                    storage.delete(obj.key)
    except Exception as exc:
        log.warning("could not remove old run records under %s (%s)", base, _reason(exc))


# -- FC: the dispatcher and each database's invocation -------------------------------------
def this_function(context, environ=None):
    """(invoker, function) that invoke the running function again: its own service and
    function name from the context, its role's credentials, and the FC endpoint from
    FC_ENDPOINT or else the internal endpoint of its account and region (FC reserves
    FC_* variables: on FC the endpoint is derived). BACKUP_FANOUT_API picks the API:
    fc2 for the service s.yaml deploys, fc3 for template.yml's functions; unset, fc2
    when the context names a service."""
    from .fc import credentials_from
    environ = os.environ if environ is None else environ
    function = getattr(getattr(context, "function", None), "name", "") or environ.get("FC_FUNCTION_NAME", "")
    service = getattr(getattr(context, "service", None), "name", "") or ""
    api = (environ.get("BACKUP_FANOUT_API") or ("fc2" if service else "fc3")).lower()
    endpoint = environ.get("FC_ENDPOINT", "").strip()
    if not endpoint:
        account = getattr(context, "account_id", "") or environ.get("FC_ACCOUNT_ID", "")
        region = getattr(context, "region", "") or environ.get("FC_REGION", "")
        if not account or not region:
            raise ConfigInvalid("cannot tell the FC endpoint to start one backup per database: "
                                "the runtime named no account id or region",
                                "run on FC, or set FC_ENDPOINT")
        endpoint = f"https://{account}.{region}-internal.fc.aliyuncs.com"
    creds = credentials_from(context) or (
        environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID", ""), environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ""),
        environ.get("ALIBABA_CLOUD_SECURITY_TOKEN", ""))
    if not creds[0] or not creds[1]:
        raise ConfigInvalid("no credentials to start one backup per database: the function has "
                            "no role", "give the backup function its role (s.yaml / template.yml)")
    if api == "fc3" and not service and "-" in function:
        service, function = function.rsplit("-", 1)  # template.yml: <DeploymentName>-backup
    settings = invoke.FCSettings(endpoint, service, creds[0], creds[1], creds[2] or "", api)
    return invoke.invoker_for(settings), function


def task_id(kind, run, database):
    """FC's async task id for one database of one run: the same slot and database give
    the same id, which FC refuses a second time."""
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", database)[:40]
    digest = hashlib.sha256(database.encode()).hexdigest()[:8]
    return f"l2c_{kind}_{run}_{slug}_{digest}"[:128]


def dispatch(config, kind, invoker, function, request_id="", when=None, timeout_seconds=0):
    """The dispatcher: one asynchronous invocation of `function` per database, the run
    record, then the globals. Returns the summary; raises the first failure (to start
    an invocation, or of the globals) after trying everything, each alerted once."""
    when = when or names.now()
    storage = open_storage(config.target, config.oss)
    run = run_name(kind, when, request_id)
    key = summary_key(storage.prefix, kind, run)
    summary = {"kind": kind, "run": run, "target": storage.url, "request_id": request_id,
               "engine": "fc", "dispatched": [], "not_started": []}
    with logs.bound(request_id=request_id or None, kind=kind, run=run):
        claim, holder = claims.take(storage, key, claims.ttl_for(config.timeout_seconds), request_id)
        if claim is None:
            summary["skipped"] = claims.another_run(key, holder)
            log.info("%s; nothing to do", summary["skipped"])
            return summary
        failures = []
        try:
            if storage.head(key) is not None:
                summary["skipped"] = f"the {kind} run {run} was dispatched already ({key})"
                log.info("%s; nothing to do", summary["skipped"])
                return summary
            databases = databases_to_back_up(config)
            for database in databases:
                _start(storage, kind, run, database, invoker, function, when, request_id,
                       summary, failures)
            due = when + timedelta(seconds=(timeout_seconds or config.timeout_seconds
                                            or claims.FC_MAX_SECONDS) + OUTCOME_MARGIN_SECONDS)
            record = {"kind": kind, "run": run, "engine": "fc", "function": function,
                      "request_id": request_id, "databases": databases,
                      "dispatched_at": when.isoformat(timespec="seconds"),
                      "outcomes_due": due.isoformat(timespec="seconds"),
                      "budget_seconds": timeout_seconds or config.timeout_seconds,
                      "invocations": {d["database"]: d["request_id"] for d in summary["dispatched"]},
                      "globals": config.with_globals}
            storage.put_bytes(key, json.dumps(record, sort_keys=True).encode())
        finally:
            claims.release(storage, claim)
        if config.with_globals:
            summary["globals"] = _globals(config, storage, kind, run, when, request_id, failures)
        prune_runs(storage, kind, config.keep.get(kind))
    if failures:
        raise failures[0]
    return summary


def _start(storage, kind, run, database, invoker, function, when, request_id, summary, failures):
    event = json.dumps({"kind": kind, "database": database, "run": run,
                        "when": when.isoformat()}).encode()
    task = task_id(kind, run, database)
    try:
        started, _ = invoker.invoke_async(function, event, task)
    except L2CError as err:
        if str(getattr(err, "fc_code", "")).endswith("AlreadyExists"):
            log.info("the backup of %s in run %s was started already (async task %s)",
                     database, run, task)
            summary["dispatched"].append({"database": database, "task_id": task,
                                          "request_id": "", "already": True})
            return
        log.error("could not start the backup of %s: %s", database, err)
        alerts.send(alerts.Alert(err.severity, "backup not started", str(err),
                                 {"database": database, "kind": kind}))
        err.alerted = True
        failures.append(err)
        summary["not_started"].append({"database": database, "error": one_line(err)})
        record_outcome(storage, kind, run, outcome_failed(database, err, request_id))
        history.record_backup_failure(storage, kind, database, err, request_id)
        return
    log.info("started the backup of %s (request %s, async task %s)", database, started, task)
    summary["dispatched"].append({"database": database, "task_id": task, "request_id": started})


def _globals(config, storage, kind, run, when, request_id, failures):
    try:
        done = run_backup(config, kind, request_id, when=when, only=GLOBALS)["backups"][0]
    except L2CError as err:
        failures.append(err)
        history.record_failed_run(config, kind, GLOBALS, err, request_id)
        record = outcome_failed(GLOBALS, err, request_id)
        record_outcome(storage, kind, run, record)
        return record
    record = outcome_ok(done, request_id)
    record_outcome(storage, kind, run, record)
    return record


def run_one(config, kind, database, request_id="", run=None, when=None):
    """One database's invocation: run_backup for it alone, its outcome recorded beside
    the run that started it (when `run` is given)."""
    try:
        summary = run_backup(config, kind, request_id, when=when, only=database)
    except L2CError as err:
        history.record_failed_run(config, kind, database, err, request_id)
        if run:
            storage = open_storage(config.target, config.oss)
            record_outcome(storage, kind, run, outcome_failed(database, err, request_id))
        raise
    if run:
        storage = open_storage(config.target, config.oss)
        for done in summary["backups"]:
            record_outcome(storage, kind, run, outcome_ok(done, request_id))
    return summary


# -- off FC: a bounded pool of threads ---------------------------------------------------------
def run_local(config, kind, concurrency=DEFAULT_CONCURRENCY, request_id="", when=None):
    """Every database of `config` backed up by up to `concurrency` threads at once, then
    the globals; the run record as on FC. Returns (summary, failures): every outcome in
    the summary, the failures (each alerted once, by its own backup) in database order.

    Stopped (SIGTERM / SIGINT in the main thread) is raised in every thread still
    backing up and ends what it waits for (its pre-flight query is cancelled, its
    pg_dump stopped), so each undoes its own writes at once, as a run stopped alone
    would; then it propagates."""
    when = when or names.now()
    request_id = request_id or uuid.uuid4().hex
    started = time.monotonic()
    storage = open_storage(config.target, config.oss)
    databases = databases_to_back_up(config)
    run = run_name(kind, when, request_id)
    record = {"kind": kind, "run": run, "engine": "local", "request_id": request_id,
              "databases": databases, "dispatched_at": when.isoformat(timespec="seconds"),
              "concurrency": concurrency, "globals": config.with_globals}
    if config.timeout_seconds:
        record["outcomes_due"] = (when + timedelta(seconds=config.timeout_seconds
                                                   + OUTCOME_MARGIN_SECONDS)).isoformat(timespec="seconds")
    _put_quietly(storage, summary_key(storage.prefix, kind, run), record)
    results = _in_threads(
        lambda database: run_one(config, kind, database, request_id, run, when), databases,
        concurrency)
    backups, failed, failures = [], [], []
    for database, (summary, err) in zip(databases, results):
        if err is None:
            backups += summary["backups"]
        else:
            failed.append({"database": database, "error": one_line(err),
                           "error_type": type(err).__name__, "exit_code": err.exit_code})
            failures.append(err)
    if config.with_globals:
        outcome = _globals(config, storage, kind, run, when, request_id, failures)
        if outcome["ok"]:
            backups.append({k: outcome[k] for k in ("database", "key", "bytes", "sql_bytes", "seconds")}
                           | ({"skipped": outcome["skipped"]} if outcome.get("skipped") else {}))
        else:
            failed.append({k: outcome[k] for k in ("database", "error", "error_type", "exit_code")})
    prune_runs(storage, kind, config.keep.get(kind))
    return ({"kind": kind, "target": storage.url, "request_id": request_id, "run": run,
             "concurrency": concurrency, "seconds": round(time.monotonic() - started, 3),
             "backups": backups, "failed": failed}, failures)


def _in_threads(work, items, concurrency):
    """[(result, L2CError or None)] of work(item) for each item, up to `concurrency` at
    once. Another exception in a thread is raised here once all ended. Stopped here
    reaches every thread still working at once (signals.stop_thread: raised in it, and
    its wait on a lock, a query or pg_dump ended), starts nothing more, and is re-raised
    when they have cleaned up."""
    running = {}  # thread ident -> item
    stopped = []  # the Stopped, once it came
    lock = threading.Lock()

    def one(item):
        ident = threading.get_ident()
        with lock:
            if stopped:  # taken from the queue as the stop came
                raise Stopped(stopped[0].signum)
            running[ident] = item
        try:
            with logs.bound(database=item):
                return work(item), None
        except L2CError as err:
            return None, err
        finally:
            with lock:
                running.pop(ident, None)
                signals.forget_stop(ident)  # too late to matter: not in the pool's own code

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="l2c-backup")
    futures = []
    try:
        futures = [pool.submit(one, item) for item in items]
        return [f.result() for f in futures]
    except Stopped as stop:
        with lock:
            stopped.append(stop)
            for f in futures:
                f.cancel()  # those not started yet never start
            for ident in running:
                signals.stop_thread(ident, stop)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for f in futures:
            with contextlib.suppress(BaseException):
                f.result(timeout=max(deadline - time.monotonic(), 0.1))
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _put_quietly(storage, key, document):
    try:
        storage.put_bytes(key, json.dumps(document, sort_keys=True).encode())
    except Exception as exc:
        log.warning("could not record the run in %s (%s)", key, _reason(exc))


def _reason(exc):
    return str(exc).split("\n", 1)[0] or type(exc).__name__
