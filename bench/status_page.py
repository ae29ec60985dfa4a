"""What the status page adds to the hourly watchdog: time, OSS requests, page size.

    python bench/status_page.py                    # 3 databases, 90 days of history
    python bench/status_page.py --databases 10 --repeat 5

It seeds a local OSS server (in this process, real HTTP through oss2) with the history
tests/status_history.py makes (nightly dailies with a gap and a failed verification,
Sunday weeklies, a few manual ones) for each of `--databases` database folders, a DR
bucket holding the same, then prunes to PLAN's counts (30 / 12 / 10) so the history
holds the pruned backups' records as it would after 90 days. Then, in the same process,
best of `--repeat`:

    baseline  the watchdog before the page: survey the primary, check the RPO
              (status.survey + status.rpo_findings with the runs)
    (report)  what the page needs on top (the primary's survey is the baseline's): the
              DR bucket's survey, the history records (failures, drills, pruned
              backups), the mirror's report, the runs, the report
    (render)  status_page.render of that report
    (publish) writing the page to the bucket

Requests are counted by the server (every request it answered). The objects are small
stand-ins (1:1000 of the sizes their manifests describe): the page never reads a dump,
so only the number of objects matters, not their bytes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "functions"), str(HERE.parent / "scripts"), str(HERE.parent / "tests")]

from l2c_backup import config, names, status, status_page  # noqa: E402
from l2c_backup.prune import prune  # noqa: E402
from l2c_backup.storage import open_storage  # noqa: E402
from l2c_local import resolve  # noqa: E402
from l2c_local.oss import Fault, LocalOSS  # noqa: E402

import status_history  # noqa: E402


def counted(server, work):
    """(seconds, requests the server answered, result) of work()."""
    seen = server.inject(Fault(skip=10**9, times=None))
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    server.clear_faults()
    return seconds, seen.seen, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    resolve.install()
    os.environ.update(resolve.child_env())
    with LocalOSS(buckets=["l2c-backups", "l2c-backups-dr"]) as server:
        env = {"OSS_ENDPOINT": server.endpoint, "OSS_BACKUP_BUCKET": "l2c-backups",
               "OSS_ACCESS_KEY_ID": server.access_key_id,
               "OSS_ACCESS_KEY_SECRET": server.access_key_secret,
               "OSS_DR_BUCKET": "l2c-backups-dr", "BACKUP_DATABASES": "",
               "DATABASE_URL": "postgresql://backup:pw@db.example.internal:5432/l2c"}
        os.environ.update(env)
        now = time.time()
        seeded = time.perf_counter()
        for storage_env in (env, dict(env, OSS_BACKUP_BUCKET="l2c-backups-dr")):
            storage = open_storage(*config.storage_target(storage_env))
            databases = [f"db{i}" for i in range(args.databases)]
            for db in databases:
                status_history.seed(_Folder(storage, db), now)
            prune(storage, names.KINDS, {"daily": 30, "weekly": 12, "manual": 10}, now=now)
        primary = open_storage(*config.storage_target(env))
        objects = sum(1 for _ in primary.list(primary.prefix))
        print(f"seeded {args.databases} databases, {objects} objects in the primary "
              f"({time.perf_counter() - seeded:.1f} s)")

        def baseline():
            backups = status.survey(primary)
            return status.rpo_findings(backups, ("daily", "weekly"), now,
                                       runs=status.newest_runs(primary, ("daily", "weekly")))

        surveyed = status.survey(primary)  # the watchdog's, shared with the page

        def report():
            locs = status.locations(config.environment(), primary_backups=surveyed)
            return status.full_report(config.environment(), primary, locs, now)

        rows = {}
        for _ in range(args.repeat):
            for name, work in (("baseline", baseline), ("report", report)):
                result = counted(server, work)
                rows[name] = min(rows.get(name, result), result, key=lambda r: r[0])
            made = rows["report"][2]
            scrub = status_page.private_scrub(config.environment())
            result = counted(server, lambda: status_page.render(made, scrub))
            rows["render"] = min(rows.get("render", result), result, key=lambda r: r[0])
            result = counted(server, lambda: status_page.publish(primary, made, scrub))
            rows["publish"] = min(rows.get("publish", result), result, key=lambda r: r[0])
        page = rows["render"][2]
        base = rows["baseline"][0]
        print(f"\n{'step':<34}{'seconds':>9}{'requests':>10}{'vs baseline':>13}")
        for name, label in (("baseline", "baseline: survey + RPO check"),
                            ("report", "(report) full report, DR + history"),
                            ("render", "(render) status_page.render"),
                            ("publish", "(publish) put status/index.html")):
            seconds, requests, _ = rows[name]
            extra = "" if name == "baseline" else f"{seconds / base * 100:+.0f}%"
            print(f"{label:<34}{seconds:>9.3f}{requests:>10}{extra:>13}")
        print(f"\npage: {len(page.encode()):,} bytes, {page.count('<rect')} SVG rects, "
              f"{len(made['timelines'])} timelines")


class _Folder:
    """A storage whose backups land in one database's folder (backup_key's `database`)."""

    def __init__(self, storage, database):
        self._storage, self._database, self.prefix = storage, database, storage.prefix

    def put_bytes(self, key, data, **kwargs):
        return self._storage.put_bytes(self._moved(key), data, **kwargs)

    def set_tags(self, key, tags):
        return self._storage.set_tags(self._moved(key), tags)

    def _moved(self, key):
        for kind in names.KINDS:
            folder = f"{self.prefix}{kind}/"
            if key.startswith(folder):
                return f"{folder}{self._database}/{key[len(folder):]}"
        return key


if __name__ == "__main__":
    main()
