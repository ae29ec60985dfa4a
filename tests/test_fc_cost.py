"""What a backup costs on FC (fc_cost.py): figures worked by hand from the published prices
(CNY 0.00011 per CU; 1 CU per vCPU-second, 0.15 per GB-second, 75 per 10,000
invocations), and the function's size as the real s.yaml and template.yml declare it."""
from pathlib import Path

import pytest

from l2c_backup import fc_cost
from l2c_backup.errors import ConfigInvalid
from l2c_backup.fc_cost import BACKUP, FunctionSize, monthly, monthly_from_backups, run_cost
from l2c_backup.status import BackupInfo

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400


def test_prices_per_unit_are_the_cu_price_times_each_conversion_factor():
    assert fc_cost.PRICES == {"vcpu_second": 0.00011, "gb_second": 0.0000165,
                              "invocation": 0.000000825}


def test_a_backup_pays_its_configured_vcpu_and_memory_for_its_whole_run():
    cost = run_cost(100, FunctionSize(2048, 2.0))
    assert (cost.vcpu_seconds, cost.gb_seconds) == (200, 200)
    # 200 x 0.00011 + 200 x 0.0000165 + one invocation 0.000000825
    assert cost.cny == pytest.approx(0.025300825, abs=1e-12)


def test_fc2s_former_model_is_memory_gb_seconds_and_invocations_only():
    prices = {"vcpu_second": 0.0, "gb_second": 0.0001, "invocation": 0.000001}  # made-up prices
    assert run_cost(10, FunctionSize(1024, 1.0), prices).cny == pytest.approx(0.001001, abs=1e-12)


def test_a_month_of_the_plans_schedule_is_30_4_daily_and_4_3_weekly_backups():
    cost = monthly(100)
    assert cost["daily"] == pytest.approx(30.4375 * 0.025300825)  # 365.25 / 12 days
    assert cost["weekly"] == pytest.approx(30.4375 / 7 * 0.025300825)
    assert cost["total"] == pytest.approx(0.88011, abs=1e-5)


def backup(kind, days_ago, duration, group="", now=1000 * DAY):
    return BackupInfo(f"{kind}-{group}-{days_ago}", kind, group, str(days_ago), 1, "ok",
                      now - days_ago * DAY, "", duration)


def test_status_prices_each_kind_at_the_mean_duration_of_its_recent_backups():
    now = 1000 * DAY
    backups = [backup("daily", 1, 90), backup("daily", 2, 110),
               backup("daily", 60, 1000),  # older than 30 days while recent ones exist: left out
               backup("daily", 3, None),  # a manifest without duration_seconds
               backup("weekly", 40, 300),  # no recent weekly: the older one is all there is
               backup("manual", 1, 5000)]  # on demand: not on the schedule
    cost = monthly_from_backups(backups, now)
    # daily: mean 100 s -> 30.4375 x 0.025300825; weekly: 300 s -> 600 vCPU-s and 600 GB-s,
    # 0.066 + 0.0099 + 0.000000825 = 0.075900825, x 4.348214
    assert cost["daily"] == pytest.approx(0.7701, abs=1e-4)
    assert cost["weekly"] == pytest.approx(0.3300, abs=1e-4)
    assert cost["total"] == pytest.approx(1.1001, abs=1e-4)
    assert cost["seconds_per_month"] == {"daily": pytest.approx(3043.8, abs=0.1),
                                         "weekly": pytest.approx(1304.5, abs=0.1)}
    assert (cost["memory_mb"], cost["vcpu"]) == (2048, 2.0)


def test_every_database_is_its_own_invocation_each_scheduled_day():
    now = 1000 * DAY
    one = monthly_from_backups([backup("daily", 1, 100, "shop")], now)
    two = monthly_from_backups([backup("daily", 1, 100, "shop"), backup("daily", 1, 50, "crm")], now)
    # crm adds 30.4375 x (100 x 0.00011 + 100 x 0.0000165 + 0.000000825)
    assert two["daily"] - one["daily"] == pytest.approx(30.4375 * 0.012650825, abs=1e-4)


def test_no_backup_with_a_duration_costs_nothing_rather_than_failing():
    cost = monthly_from_backups([backup("daily", 1, None), backup("daily", 2, "12 s")], 1000 * DAY)
    assert cost["total"] == 0


def test_prices_are_settings_and_a_bad_one_is_named():
    assert fc_cost.prices({}) == fc_cost.PRICES
    assert fc_cost.prices({"PRICE_FC_GB_SECOND": ""}) == fc_cost.PRICES  # empty = default
    assert fc_cost.prices({"PRICE_FC_VCPU_SECOND": "0"})["vcpu_second"] == 0.0
    with pytest.raises(ConfigInvalid, match="PRICE_FC_INVOCATION is invalid: it must be a price"):
        fc_cost.prices({"PRICE_FC_INVOCATION": "free"})


def test_the_backup_function_is_sized_as_s_yaml_and_template_yml_declare_it():
    sizes = fc_cost.sizes_in_templates(ROOT)
    assert sizes["s.yaml"].memory_mb == BACKUP.memory_mb == 2048
    assert sizes["template.yml"] == BACKUP == FunctionSize(2048, 2.0)
    assert sizes["s.yaml"] == BACKUP  # FC 2.0 sets no vCPU: one per GB of memory


def test_a_template_that_sets_no_vcpu_gets_one_per_gb_of_memory(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "services:\n  backup:\n    props:\n      function:\n        memorySize: 3072\n")
    assert fc_cost.sizes_in_templates(tmp_path) == {"s.yaml": FunctionSize(3072, 3.0)}
