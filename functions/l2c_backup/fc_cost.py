"""What a backup costs on Function Compute, beside what its objects cost on OSS (status.py).

FC bills the time a function runs at the size it was given, not the CPU it used: since
2024-08-27 every function, FC 3.0 and the FC 2.0 model that s.yaml deploys alike, is
billed in compute units (CU), converted from its active vCPU-seconds, memory GB-seconds
and invocations. So a backup costs its wall seconds times the size in s.yaml/template.yml
(backup: 2048 MB, 2 vCPU), and a faster compressor is a cheaper backup.

Prices (CNY, read 2026-12-02; the bill prevails, each one a setting):
- CNY 0.00011 per CU, tier 1 (up to 200 million CU a month; a 20% discount, 0.000088,
  ran 2024-08-27 to 2026-08-27): 计费概述 (billing overview), Function Compute 3.0,
  https://help.aliyun.com/zh/functioncompute/fc-3-0/product-overview/billing-overview-of-fc
- CU per unit: active vCPU 1 per vCPU-second, memory 0.15 per GB-second, 75 per 10,000
  invocations (disk 0.05 per GB-second, but only past the free 512 MB the functions use):
  "Pay-as-you-go", Function Compute 3.0, last updated 2024-08-27,
  https://www.alibabacloud.com/help/en/functioncompute/fc-3-0/product-overview/pay-as-you-go-billing-method-1
  and the same table for FC 2.0,
  https://help.aliyun.com/en/functioncompute/fc-2-0/product-overview/pay-as-you-go-billing-method
- Left aside: the trial quota (a CU pack for the first three months), resource plans,
  the hourly rounding up to a whole CU per function (at most CNY 0.00011 an hour).
FC 2.0's former model (GB-seconds of execution and invocations only) is
PRICE_FC_VCPU_SECOND=0 with PRICE_FC_GB_SECOND at its GB-second price.
"""
from dataclasses import dataclass
from pathlib import Path

CU_PRICE = 0.00011  # CNY per CU, tier 1 (see above)
CU_PER = {"vcpu_second": 1.0, "gb_second": 0.15, "invocation": 75 / 10_000}
PRICES = {item: round(CU_PRICE * cu, 12) for item, cu in CU_PER.items()}  # CNY per unit
# PLAN §3: a daily backup at 02:00 and a weekly one on Sundays at 03:00 (s.yaml's timers).
RUNS_PER_MONTH = {"daily": 365.25 / 12, "weekly": 365.25 / 12 / 7}
RECENT_SECONDS = 30 * 86400  # status prices a kind by its backups of the last 30 days
MB_PER_GB = 1024  # FC sizes memory in MB


@dataclass(frozen=True)
class FunctionSize:
    memory_mb: int
    vcpu: float

    @property
    def memory_gb(self):
        return self.memory_mb / MB_PER_GB


BACKUP = FunctionSize(2048, 2.0)  # s.yaml / template.yml (tests/test_fc_cost.py holds them equal)


@dataclass(frozen=True)
class RunCost:
    seconds: float
    vcpu_seconds: float
    gb_seconds: float
    cny: float


def prices(environ):
    """CNY per vCPU-second, GB-second and invocation: PRICE_FC_VCPU_SECOND /
    PRICE_FC_GB_SECOND / PRICE_FC_INVOCATION, else the prices above."""
    from .config import setting
    return {item: setting(environ, f"PRICE_FC_{item.upper()}", price, float)
            for item, price in PRICES.items()}


def run_cost(seconds, size=BACKUP, prices=PRICES):
    """One invocation that ran `seconds` at `size`: FC bills the configured vCPU and
    memory for the whole run, busy or waiting."""
    vcpu_seconds, gb_seconds = size.vcpu * seconds, size.memory_gb * seconds
    cny = (vcpu_seconds * prices["vcpu_second"] + gb_seconds * prices["gb_second"]
           + prices["invocation"])
    return RunCost(seconds, vcpu_seconds, gb_seconds, cny)


def monthly(seconds_per_run, size=BACKUP, prices=PRICES):
    """CNY a month for PLAN's schedule when every backup takes `seconds_per_run`
    ({kind: seconds} or one figure for all kinds)."""
    if not isinstance(seconds_per_run, dict):
        seconds_per_run = dict.fromkeys(RUNS_PER_MONTH, seconds_per_run)
    cost = {kind: runs * run_cost(seconds_per_run[kind], size, prices).cny
            for kind, runs in RUNS_PER_MONTH.items() if seconds_per_run.get(kind) is not None}
    cost["total"] = sum(cost.values())
    return cost


def monthly_from_backups(backups, now, size=BACKUP, prices=PRICES):
    """CNY a month for PLAN's schedule at the durations the manifests recorded: per kind and
    database, the mean of its backups of the last 30 days (of all of them when none is that
    recent), times the runs a month. The manifest's duration is the backup itself, so the
    invocation's start-up and prune come on top (seconds)."""
    cost = dict.fromkeys(RUNS_PER_MONTH, 0.0)
    seconds = dict.fromkeys(RUNS_PER_MONTH, 0.0)
    groups = {}
    for b in backups:
        # a manifest written by hand may lack the number, or hold something else
        if b.kind in RUNS_PER_MONTH and isinstance(b.duration, (int, float)):
            groups.setdefault((b.kind, b.group), []).append(b)
    for (kind, _), runs in groups.items():
        recent = [b for b in runs if now - b.finished_at <= RECENT_SECONDS] or runs
        mean = sum(b.duration for b in recent) / len(recent)
        cost[kind] += RUNS_PER_MONTH[kind] * run_cost(mean, size, prices).cny
        seconds[kind] += RUNS_PER_MONTH[kind] * mean
    result = {k: round(v, 4) for k, v in cost.items()}
    result["total"] = round(sum(cost.values()), 4)
    result["seconds_per_month"] = {k: round(v, 1) for k, v in seconds.items()}
    result["memory_mb"], result["vcpu"] = size.memory_mb, size.vcpu
    return result


def sizes_in_templates(root, name="backup"):
    """{file: FunctionSize} of function `name` as s.yaml (FC 2.0: memorySize, and a vCPU per
    GB of memory, FC 2.0's ratio, where it sets no cpu) and template.yml (FC 3.0:
    MemorySize and Cpu) declare it; a file that is missing is left out."""
    import yaml  # only where the templates are (bench, tests): not an FC dependency
    root = Path(root)
    found = {}
    if (root / "s.yaml").is_file():
        fn = yaml.safe_load((root / "s.yaml").read_text())["services"][name]["props"]["function"]
        memory = int(fn["memorySize"])
        found["s.yaml"] = FunctionSize(memory, float(fn.get("cpu", memory / MB_PER_GB)))
    if (root / "template.yml").is_file():
        resources = yaml.safe_load((root / "template.yml").read_text())["Resources"]
        for resource in resources.values():
            props = resource.get("Properties", {})
            if (resource["Type"] == "ALIYUN::FC3::Function"
                    and props["FunctionName"]["Fn::Sub"].endswith(f"-{name}")):
                memory = int(props["MemorySize"])
                found["template.yml"] = FunctionSize(memory, float(props.get("Cpu", memory / MB_PER_GB)))
    return found
