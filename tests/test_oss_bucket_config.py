"""Bucket configurations on the local OSS server: what the deploy step writes and checks."""

import json

import oss2
import pytest
from oss2.models import (
    BucketLifecycle,
    LifecycleExpiration,
    LifecycleRule,
    ReplicationRule,
    ServerSideEncryptionRule,
    StorageTransition,
)

from oss_fixtures import bucket_for

POLICY = {
    "Version": "1",
    "Statement": [
        {
            "Effect": "Deny",
            "Action": ["oss:DeleteObject"],
            "Principal": ["*"],
            "Resource": ["acs:oss:*:*:l2c-backups/db-backups/*"],
        }
    ],
}


def backup_tiering_rule():
    return LifecycleRule(
        "tier-db-backups",
        "db-backups/",
        status=LifecycleRule.ENABLED,
        storage_transitions=[
            StorageTransition(days=30, storage_class=oss2.BUCKET_STORAGE_CLASS_IA),
            StorageTransition(days=90, storage_class=oss2.BUCKET_STORAGE_CLASS_ARCHIVE),
        ],
    )


def test_lifecycle_rule_with_ia_and_archive_transitions_reads_back_unchanged(bucket):
    bucket.put_bucket_lifecycle(BucketLifecycle([backup_tiering_rule()]))

    (rule,) = bucket.get_bucket_lifecycle().rules

    assert (rule.id, rule.prefix, rule.status) == ("tier-db-backups", "db-backups/", "Enabled")
    assert [(t.days, t.storage_class) for t in rule.storage_transitions] == [
        (30, "IA"),
        (90, "Archive"),
    ]


def test_lifecycle_with_several_rules_and_an_expiration_reads_back_unchanged(bucket):
    expire_manual = LifecycleRule(
        "expire-manual", "db-backups/manual/", expiration=LifecycleExpiration(days=365)
    )
    bucket.put_bucket_lifecycle(BucketLifecycle([backup_tiering_rule(), expire_manual]))

    rules = {rule.id: rule for rule in bucket.get_bucket_lifecycle().rules}

    assert sorted(rules) == ["expire-manual", "tier-db-backups"]
    assert rules["expire-manual"].expiration.days == 365
    assert rules["expire-manual"].prefix == "db-backups/manual/"


def test_put_bucket_lifecycle_replaces_the_previous_rules(bucket):
    bucket.put_bucket_lifecycle(BucketLifecycle([backup_tiering_rule()]))
    only = LifecycleRule("only", "tmp/", expiration=LifecycleExpiration(days=1))

    bucket.put_bucket_lifecycle(BucketLifecycle([only]))

    assert [rule.id for rule in bucket.get_bucket_lifecycle().rules] == ["only"]


def test_bucket_without_lifecycle_answers_no_such_lifecycle(bucket):
    with pytest.raises(oss2.exceptions.NoSuchLifecycle):
        bucket.get_bucket_lifecycle()


def test_deleted_lifecycle_answers_no_such_lifecycle(bucket):
    bucket.put_bucket_lifecycle(BucketLifecycle([backup_tiering_rule()]))

    bucket.delete_bucket_lifecycle()

    with pytest.raises(oss2.exceptions.NoSuchLifecycle):
        bucket.get_bucket_lifecycle()


def test_bucket_policy_json_reads_back_unchanged(bucket):
    bucket.put_bucket_policy(json.dumps(POLICY))

    assert json.loads(bucket.get_bucket_policy().policy) == POLICY


def test_bucket_without_policy_answers_no_such_bucket_policy(bucket):
    with pytest.raises(oss2.exceptions.NoSuchBucketPolicy):
        bucket.get_bucket_policy()


def test_deleted_bucket_policy_answers_no_such_bucket_policy(bucket):
    bucket.put_bucket_policy(json.dumps(POLICY))

    bucket.delete_bucket_policy()

    with pytest.raises(oss2.exceptions.NoSuchBucketPolicy):
        bucket.get_bucket_policy()


def test_bucket_encryption_aes256_reads_back(bucket):
    bucket.put_bucket_encryption(ServerSideEncryptionRule(sse_algorithm="AES256"))

    assert bucket.get_bucket_encryption().sse_algorithm == "AES256"


def test_bucket_without_encryption_answers_no_such_server_side_encryption_rule(bucket):
    with pytest.raises(oss2.exceptions.NoSuchServerSideEncryptionRule):
        bucket.get_bucket_encryption()


def test_bucket_default_encryption_marks_objects_put_without_the_header(bucket):
    bucket.put_bucket_encryption(ServerSideEncryptionRule(sse_algorithm="AES256"))

    bucket.put_object("db-backups/x.dump", b"x")

    assert bucket.head_object("db-backups/x.dump").headers["x-oss-server-side-encryption"] == "AES256"


def test_bucket_info_reports_the_versioning_status_and_encryption(bucket):
    bucket.put_bucket_encryption(ServerSideEncryptionRule(sse_algorithm="AES256"))
    bucket.put_bucket_versioning(oss2.models.BucketVersioningConfig(status="Enabled"))

    info = bucket.get_bucket_info()

    assert info.name == "l2c-backups"
    assert info.versioning_status == "Enabled"
    assert info.bucket_encryption_rule.sse_algorithm == "AES256"


def test_replication_rule_reads_back_with_its_target_bucket(oss_server, bucket):
    oss_server.create_bucket("l2c-backups-dr")
    bucket.put_bucket_replication(
        ReplicationRule(
            rule_id="to-dr",
            target_bucket_name="l2c-backups-dr",
            target_bucket_location="oss-" + oss_server.region,
            prefix_list=["db-backups/"],
            action_list=[ReplicationRule.PUT],
        )
    )

    (rule,) = bucket.get_bucket_replication().rule_list

    assert (rule.rule_id, rule.target_bucket_name) == ("to-dr", "l2c-backups-dr")
    assert rule.prefix_list == ["db-backups/"]
    assert rule.action_list == ["PUT"]


def test_configuration_of_a_missing_bucket_answers_no_such_bucket(oss_server):
    missing = bucket_for(oss_server, name="no-such-bucket")

    with pytest.raises(oss2.exceptions.NoSuchBucket):
        missing.put_bucket_lifecycle(BucketLifecycle([backup_tiering_rule()]))
