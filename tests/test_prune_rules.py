"""Retention rules as invariants, over random sets of backups, kinds, verdicts (hypothesis)."""
from hypothesis import given, settings, strategies as st

from l2c_backup.prune import CLAIM_SUFFIX, INCOMPLETE_AFTER_SECONDS, Backup, Incomplete, plan, sidecar_owner

KINDS = ("daily", "weekly", "manual")


def make_backup(kind, day, group, verified):
    stamp = {"daily": f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}",
             "weekly": f"2026-W{1 + day % 52:02d}",
             "manual": f"2026-01-01T00-00-{day % 60:02d}-{day}"}[kind]
    folder = f"{group}/" if group else ""
    return Backup(f"db-backups/{kind}/{folder}backup_{stamp}.sql.gz", kind, group, stamp, verified)


backup_sets = st.lists(
    st.builds(make_backup, st.sampled_from(KINDS), st.integers(0, 300),
              st.sampled_from(["", "billing"]), st.booleans()),
    max_size=60, unique_by=lambda b: b.key)
keeps = st.fixed_dictionaries({k: st.integers(1, 12) for k in KINDS})


def groups(backups):
    out = {}
    for b in backups:
        out.setdefault((b.kind, b.group), []).append(b)
    return out


@settings(max_examples=300)
@given(backup_sets, keeps)
def test_never_more_deleted_than_the_rules_allow(backups, keep):
    decisions = {d.key: d for d in plan(backups, keep)}
    for (kind, _), members in groups(backups).items():
        deleted = [b for b in members if decisions[b.key].action == "delete"]
        kept = len(members) - len(deleted)
        assert kept >= min(keep[kind], len(members))
        newest = sorted(members, key=lambda b: b.stamp, reverse=True)[:keep[kind]]
        assert not any(decisions[b.key].action == "delete" for b in newest)


@settings(max_examples=300)
@given(backup_sets, keeps)
def test_the_newest_verified_backup_of_a_kind_is_always_kept(backups, keep):
    decisions = {d.key: d for d in plan(backups, keep)}
    for members in groups(backups).values():
        verified = sorted((b for b in members if b.verified), key=lambda b: b.stamp)
        if verified:
            assert decisions[verified[-1].key].action == "keep"
            assert any(decisions[b.key].action == "keep" for b in verified)


@settings(max_examples=200)
@given(backup_sets, keeps,
       st.lists(st.sampled_from([".manifest.json", ".verify.json", CLAIM_SUFFIX]), max_size=3),
       st.lists(st.text("abcxyz/._-", min_size=1, max_size=30), max_size=5))
def test_nothing_but_backups_and_their_sidecars_is_ever_touched(backups, keep, suffixes, strangers):
    sidecars = [b.key + s for b in backups for s in suffixes]
    orphans = ["db-backups/daily/backup_2020-01-01.sql.gz.manifest.json"]
    foreign = [f"db-backups/daily/{s}.manifest.json" for s in strangers] + ["db-backups/notes.txt.verify.json"]
    decisions = plan(backups, keep, sidecars + orphans + foreign)
    touched = {d.key for d in decisions if d.action == "delete"}
    touched |= {s for d in decisions if d.action == "delete" for s in d.sidecars}
    allowed = {b.key for b in backups} | set(sidecars) | set(orphans)
    assert touched <= allowed
    assert set(orphans) <= touched  # whose backup is gone: cleaned up
    for d in decisions:
        assert all(sidecar_owner(s) == d.key for s in d.sidecars)


@given(backup_sets, keeps)
def test_plans_are_deterministic_whatever_the_listing_order(backups, keep):
    first = plan(backups, keep)
    second = plan(list(reversed(backups)), keep)
    assert [(d.key, d.action, d.reason) for d in first] == [(d.key, d.action, d.reason) for d in second]


def test_an_old_verified_backup_outlives_unverified_newer_ones():
    backups = [make_backup("daily", day, "", verified=(day == 1)) for day in range(1, 6)]
    decisions = {d.key: d for d in plan(backups, {"daily": 2, "weekly": 1, "manual": 1})}
    kept = sorted(k for k, d in decisions.items() if d.action == "keep")
    assert kept == sorted([backups[0].key, backups[3].key, backups[4].key])
    assert decisions[backups[0].key].reason == "the newest verified daily backup"


@settings(max_examples=200)
@given(backup_sets, keeps, st.lists(st.tuples(st.integers(300, 400), st.integers(0, 3 * 86400)),
                                    max_size=5, unique_by=lambda t: t[0]))
def test_objects_without_manifest_never_count_toward_retention(backups, keep, leftovers):
    """Whatever their names or ages, objects without a manifest change no decision about
    the backups, and are deleted only once older than the safe age."""
    now = 1_900_000_000.0
    incomplete = [Incomplete(make_backup("daily", day, "", False).key, now - age)
                  for day, age in leftovers]
    incomplete = [i for i in incomplete if i.key not in {b.key for b in backups}]
    alone = [(d.key, d.action, d.reason) for d in plan(backups, keep)]
    mixed = plan(backups, keep, incomplete=incomplete, now=now)
    assert [(d.key, d.action, d.reason) for d in mixed if d.key not in {i.key for i in incomplete}] == alone
    for i in incomplete:
        (d,) = [d for d in mixed if d.key == i.key]
        assert d.action == ("delete" if now - i.last_modified >= INCOMPLETE_AFTER_SECONDS else "wait")
