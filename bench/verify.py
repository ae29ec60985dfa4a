"""Verify throughput on a realistic backup: l2c's check_object against `gunzip -t`.

    python bench/verify.py                      # ~1 GB and ~0.25 GB objects (~15 minutes)
    python bench/verify.py --sizes 0.25         # one size
    python bench/verify.py --sizes 0.05 --repeat 1   # a quick smoke run
    python bench/verify.py --workdir /tmp/vb    # keep the objects there; later runs reuse them
    python bench/verify.py --breakdown          # also time each step of check_object alone

For each size it makes one backup object the way l2c-backup makes them: pg_dump-like SQL
text (COPY data of a shop: names, addresses, notes drawn from a 60,000-phrase pool over a
Zipf-like vocabulary, numbers, timestamps, uuids, jsonb; gzip -6 shrinks it ~3x, not the
~35x of repetitive filler) cut into 4 MiB blocks, one gzip member each, by
l2c_backup.compress.gzip_members(level=6), sized to about `size` GB *compressed*, with
its manifest (the fields backup.py writes, schema-validated, member sizes included). It is stored in a directory
and in the local OSS server (`l2c-backup oss-server`, its own process), then measured,
one after the other on the same bytes, warm in the page cache:

  (a) gunzip -t FILE                 the baseline: inflate + CRC32 of every member
  (b) check_object -> directory      l2c verify's check (gzip + SHA-256 + CRC64 + manifest)
                                     as it runs: whole members (the manifest's member sizes)
                                     through the fast engine, reading, hashing and inflating
                                     on threads (l2c_backup/reading.py)
  (c) check_object -> local OSS      the same over HTTP from the local OSS server
  (d), (e)                           the stream path, -> dir / local OSS: the same reader
                                     inflating the object as one zlib stream, as for a
                                     manifest without member sizes (check_object(...,
                                     whole_members=False)): the prototype (d)/(e) of before

Each (b)/(c) run is a fresh `bench/verify.py --run-variant` subprocess, so its peak RSS
(VmHWM: ru_maxrss of a child starts at its forking parent's size) is its own; (a)'s is
polled from /proc. Rates are MB/s (10^6 bytes) of compressed input and of SQL output, over
check_object's own time for (b)/(c) (the process wall, imports included, is shown too).
The OSS server's CPU is not the verify's, but it shares the 2 cores: it is shown beside.
Variants run interleaved, `--repeat` times each, each after waiting for a quiet machine
(no `bench/backup.py` running, other work under 0.2 CPU); "others cpu s" is what the rest
of the machine used meanwhile, and a variant whose fastest run was noisy (others above 0.1
CPU) is run again, twice at most. The fastest run counts; every run's time is in the notes.
--breakdown adds, for (b) and (c), the rate of each step alone, on one thread, over the
same stream (read; read + zlib stream; read + whole members through the engine; read +
SHA-256; read + CRC64).
Targets printed under the table: (b) at least 2x the rate of (a), (c) at least 1.5x;
peak RSS the same at every size. The objects are built once per work directory (a 1 GB
one takes ~4 minutes on 2 cores); everything started here is stopped on exit.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from procstat import Children, OssServer, cpu_of, exit_on_signals, proc_cpu, system_busy, vm_hwm_mb

MB = 1e6
GB = 1e9
MIB = 1 << 20
TARGET_RATE_RATIO = {"b": 2.0, "c": 1.5}  # vs (a), issue 13
FLAT_RSS_MB = 10  # peak RSS differing by less than this across sizes counts as flat
NOISY_CORES = 0.1  # a run during which others used more than this many CPUs is run again
BUCKET = "l2c-backups"
PREFIX = "db-backups/"
FORMAT_VERSION = 2  # bump when the objects change: cached ones are rebuilt (2: member sizes)

LABELS = {"a": "(a) gunzip -t", "b": "(b) check_object -> dir", "c": "(c) check_object -> local OSS",
          "d": "(d) stream path -> dir", "e": "(e) stream path -> local OSS"}


# -- realistic SQL text -------------------------------------------------------------------

ENGLISH = """the a to and of for in on with is was it be at as by this that from or have not are
please customer order delivery package box address phone call back after before today tomorrow
morning evening weekend door floor building office reception leave neighbour ring bell twice
working gate code fragile handle care glass bottle keep upright cold chain frozen warm gift wrap
card message birthday anniversary wedding invoice company tax number receipt paper email copy
refund return exchange size colour wrong missing damaged late early courier driver route
warehouse stock backorder partial split shipment tracking label printed scanned sorted loaded
dispatched arrived signed photo proof contact support ticket escalated resolved pending confirm
confirmed cancelled changed moved new old second third first last time window between noon pm am
hours minutes days week month year discount coupon voucher points member loyalty upgrade express
standard economy free shipping fee charge paid cash bank transfer alipay wechat declined retry
approved hold review fraud check verified identity passport student teacher nurse shop restaurant
hotel hospital school university apartment flat unit block tower street road avenue lane district
city province village north south east west near opposite next behind inside outside upstairs
downstairs lift stairs parking lot basement garden balcony kitchen dog cat beware quiet baby
sleeping knock softly do use side entrance main lobby security guard desk signature required id
shown collect pickup point locker station store branch open closed holiday festival spring autumn
rain snow storm traffic delay apologies thanks thank you kindly sorry urgent asap priority vip
repeat buyer wholesale bulk pallet carton bag envelope small medium large heavy light extra spare
battery charger cable adapter case screen laptop headphones tea coffee rice noodles oil sauce
fruit apples oranges mangoes milk yoghurt bread cake chocolate wine beer water shoes shirt dress
jacket scarf hat socks toys books pens notebook printer ink desk chair lamp sofa bed pillow towel
soap shampoo medicine we i he she they my your our their will would could should can may might
must has had did does got get sent send received receive asked ask said says told tell wants want
need needs because but if when where which who what how why there here still already again also
only just very too much many more most some any no yes all each every other another same
different about into over under up down out off then than so such well good bad great best
better problem issue question answer reply waiting wait arrive arriving checked checking looks
seems item items product products quality price cost total amount account password login app
website link update updated status system error page mobile number note notes request
requested""".split()
SYLLABLES = ("ka ro mi zen tal por vex lin qua dor sha ber nix tor fel gan ul ae ko ri pa su te "
             "no ma chi lo ven dra kel mon ser tri bo ha ne gu yo wen li ast ter ion ful ity ous "
             "ble ment ing er ly ed").split()
CHINESE = ("请 放在 门口 谢谢 快递 电话 联系 下午 上午 周末 送货 地址 发票 公司 礼物 包装 小心 轻放 "
           "易碎 退货 换货 尺寸 颜色 已付款 保安 前台 楼下 客户 订单 商品 质量 问题 已经 还没 收到 "
           "发货 物流 单号 查询 麻烦 尽快 处理 一下 可以 不是 我们 你们 他们 今天 明天 昨天 时间 "
           "退款 申请 审核 通过 失败 成功 优惠券 积分 会员 价格 便宜 太贵 满意 不满意 好评 差评 "
           "客服 回复 等待 确认 取消 修改 重新 问一下 没有 需要 希望 非常 比较 一直 然后 因为 所以").split()
CITIES = ("Hangzhou Shanghai Beijing Shenzhen Guangzhou Chengdu Wuhan Nanjing Xi'an Suzhou Tianjin "
          "Chongqing Qingdao Xiamen Ningbo Kunming Dalian Hefei Changsha Zhengzhou Berlin Munich "
          "Hamburg Paris Lyon London Manchester Chicago Seattle Austin Toronto Vancouver Tokyo "
          "Osaka Seoul Busan Singapore Sydney Melbourne Madrid Barcelona Milan Rome Amsterdam "
          "Warsaw Prague Vienna").split()
STATUSES = ("delivered",) * 6 + ("shipped", "shipped", "paid", "pending", "cancelled", "refunded")
EVENT_KINDS = ("page_view",) * 5 + ("search", "search", "add_to_cart", "checkout", "login", "logout")
CHANNELS = ("email", "email", "chat", "chat", "chat", "phone", "app")


class SqlText:
    """pg_dump-like plain SQL of a shop database, as 1 MiB-ish byte chunks.

    Words come from ~6,900 (common English first, then made-up words and some Chinese),
    picked with random()^3 so a few are frequent and most are rare; 60,000 phrases of 3-11
    words (~3 MB, far beyond gzip's 32 KB window) are the text fields' building blocks.
    Seeded: the same size gives the same bytes."""

    def __init__(self, seed=31):
        rnd = self.rnd = random.Random(seed)
        made_up = ["".join(rnd.choice(SYLLABLES) for _ in range(2 + n % 3)) for n in range(6000)]
        words = ENGLISH + made_up
        nw = len(words)
        self.phrases = [" ".join(words[int(rnd.random() ** 3 * nw)] for _ in range(3 + n % 9))
                        for n in range(60000)]
        self.phrases_zh = ["".join(CHINESE[int(rnd.random() ** 1.5 * len(CHINESE))]
                                   for _ in range(2 + n % 6)) for n in range(5000)]
        self.names = [w.capitalize() for w in made_up[:3000]]
        self.streets = [f"{rnd.choice(words).capitalize()} "
                        f"{rnd.choice(['Street', 'Road', 'Avenue', 'Lane', 'Way', 'Court', '路', '街'])}"
                        for _ in range(8000)]
        self.agents = [f"Mozilla/5.0 ({rnd.choice(['Windows NT 10.0; Win64; x64', 'Macintosh; Intel Mac OS X 10_15_7', 'X11; Linux x86_64', 'iPhone; CPU iPhone OS 17_4 like Mac OS X', 'Linux; Android 14; Pixel 8'])}) "
                       f"AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{100 + n % 27}.0.{rnd.randrange(4000, 6000)}.{rnd.randrange(200)}"
                       for n in range(400)]
        self.paths = [f"/{rnd.choice(['api/v2', 'shop', 'account', 'help', 'search', 'cart'])}/"
                      f"{words[int(rnd.random() ** 2 * nw)]}/{rnd.choice(words)}" for _ in range(5000)]
        self.days = [datetime.fromordinal(datetime(2018, 1, 1).toordinal() + d).strftime("%Y-%m-%d")
                     for d in range(2400)]
        self.ids = {"customers": 0, "orders": 0, "messages": 0, "events": 0}

    # one COPY line per call; `r` is a bound random() for speed
    def _ts(self, r):
        s = int(r() * 86400)
        return f"{self.days[int(r() * 2400)]} {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{int(r() * 1e6):06d}+00"

    def _text(self, r, lo, hi):
        ph, zh = self.phrases, self.phrases_zh
        parts = [ph[int(r() * 60000)] if r() > 0.08 else zh[int(r() * 5000)]
                 for _ in range(lo + int(r() * (hi - lo + 1)))]
        return (". ".join(parts)).capitalize()

    def customer(self, r):
        i = self.ids["customers"] = self.ids["customers"] + 1
        first, last = self.names[int(r() ** 2 * 3000)], self.names[int(r() * 3000)]
        phone = f"+86 {100 + int(r() * 900)} {int(r() * 1e8):08d}" if r() < 0.8 else "\\N"
        bio = self._text(r, 1, 3) if r() < 0.5 else "\\N"
        return (f"{i}\t{first} {last}\t{first.lower()}.{last.lower()}{i % 1000}@"
                f"{('gmail.com', 'qq.com', '163.com', 'outlook.com', 'example.cn')[int(r() * 5)]}\t"
                f"{phone}\t{('CN', 'US', 'DE', 'FR', 'JP', 'GB')[int(r() * 6)]}\t{CITIES[int(r() * len(CITIES))]}\t"
                f"{1 + int(r() * 2000)} {self.streets[int(r() * 8000)]}\t{self._ts(r)}\t"
                f"{r() ** 2 * 50000:.2f}\t{{\"newsletter\": {'true' if r() < 0.3 else 'false'}, "
                f"\"segment\": \"{('retail', 'vip', 'wholesale')[int(r() ** 2 * 3)]}\"}}\t{bio}\n")

    def order(self, r):
        i = self.ids["orders"] = self.ids["orders"] + 1
        items = ", ".join(
            f'{{"qty": {1 + int(r() ** 3 * 10)}, "sku": "SKU-{1 + int(r() ** 2 * 5000):06d}", '
            f'"name": "{self.phrases[int(r() * 60000)]}", "unit_price": {1 + r() ** 2 * 500:.2f}}}'
            for _ in range(1 + int(r() * 4)))
        sub = 5 + r() ** 2 * 2000
        shipped = self._ts(r) if r() < 0.8 else "\\N"
        note = self._text(r, 1, 2) if r() < 0.6 else "\\N"
        return (f"{i}\t{1 + int(r() * (i // 10 + 1))}\t{STATUSES[int(r() * 12)]}\t{self._ts(r)}\t{shipped}\t"
                f"{('CNY', 'CNY', 'USD', 'EUR', 'JPY')[int(r() * 5)]}\t{sub:.2f}\t{sub * 0.13:.2f}\t"
                f"{sub * 1.13:.2f}\tSF{int(r() * 1e12):012d}\t{1 + int(r() * 2000)} "
                f"{self.streets[int(r() * 8000)]}, {CITIES[int(r() * len(CITIES))]}\t{note}\t[{items}]\n")

    def message(self, r):
        i = self.ids["messages"] = self.ids["messages"] + 1
        return (f"{i}\t{1 + int(r() * (self.ids['orders'] + 1))}\t{self._ts(r)}\t{CHANNELS[int(r() * 7)]}\t"
                f"{'t' if r() < 0.55 else 'f'}\tRe: {self.phrases[int(r() * 60000)]}\t{self._text(r, 2, 6)}\n")

    def event(self, r):
        i = self.ids["events"] = self.ids["events"] + 1
        u = f"{self.rnd.getrandbits(128):032x}"
        cust = 1 + int(r() * (self.ids["customers"] + 1)) if r() < 0.7 else "\\N"
        return (f"{i}\t{self._ts(r)}\t{EVENT_KINDS[int(r() * 11)]}\t{cust}\t"
                f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}\t"
                f"{int(r() * 223) + 1}.{int(r() * 256)}.{int(r() * 256)}.{int(r() * 256)}\t"
                f"{int(r() ** 3 * 30000)}\t{{\"ms\": {int(r() * 3000)}, \"ua\": \"{self.agents[int(r() * 400)]}\", "
                f"\"page\": \"{self.paths[int(r() * 5000)]}\", \"ref\": \"{self.paths[int(r() * 5000)]}\"}}\n")

    TABLES = (  # name, columns, share of the COPY data
        ("customers", "id, full_name, email, phone, country, city, address, signed_up_at, "
                      "credit_limit, profile, bio", 0.10),
        ("orders", "id, customer_id, status, ordered_at, shipped_at, currency, subtotal, tax, "
                   "total, tracking_code, ship_to, note, lines", 0.35),
        ("messages", "id, order_id, sent_at, channel, from_customer, subject, body", 0.25),
        ("events", "id, occurred_at, kind, customer_id, session_id, ip, duration_ms, payload", 0.30),
    )

    HEAD = ("--\n-- PostgreSQL database dump\n--\n\n"
            "-- Dumped from database version 16.4 (Debian 16.4-1.pgdg120+1)\n"
            "-- Dumped by pg_dump version 16.4 (Debian 16.4-1.pgdg120+1)\n\n"
            "SET statement_timeout = 0;\nSET lock_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\n"
            "SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n"
            "SELECT pg_catalog.set_config('search_path', '', false);\nSET check_function_bodies = false;\n"
            "SET xmloption = content;\nSET client_min_messages = warning;\nSET row_security = off;\n\n"
            "--\n-- Name: app; Type: SCHEMA; Schema: -; Owner: bench\n--\n\nCREATE SCHEMA app;\n\n")
    TAIL = ("\n--\n-- PostgreSQL database dump complete\n--\n\n")

    def chunks(self, done, chunk_size=MIB):
        """The dump as byte chunks. `done(table_share)` says when to stop: called with the
        fraction of the total a table should take, it returns whether the data so far is
        big enough to move on (the caller watches the compressed size)."""
        r = self.rnd.random
        yield self.HEAD.encode()
        for name, columns, _ in self.TABLES:
            yield (f"--\n-- Name: {name}; Type: TABLE; Schema: app; Owner: bench\n--\n\n"
                   f"CREATE TABLE app.{name} (\n    id bigint NOT NULL\n    -- ...\n);\n\n").encode()
        cumulative = 0.0
        for name, columns, share in self.TABLES:
            cumulative += share
            make = getattr(self, name[:-1])
            yield (f"--\n-- Data for Name: {name}; Type: TABLE DATA; Schema: app; Owner: bench\n--\n\n"
                   f"COPY app.{name} ({columns}) FROM stdin;\n").encode()
            while not done(cumulative):
                lines, size = [], 0
                while size < chunk_size:
                    line = make(r)
                    lines.append(line)
                    size += len(line)
                yield "".join(lines).encode()
            yield b"\\.\n\n\n"
        for name, _, _ in self.TABLES:
            yield (f"--\n-- Name: {name} {name}_pkey; Type: CONSTRAINT; Schema: app; Owner: bench\n--\n\n"
                   f"ALTER TABLE ONLY app.{name}\n    ADD CONSTRAINT {name}_pkey PRIMARY KEY (id);\n\n\n").encode()
        yield self.TAIL.encode()


# -- the objects ----------------------------------------------------------------------------

def object_key(size_gb):
    """A manual backup's key, one per size (the stamp's seconds tell them apart)."""
    from l2c_backup import names
    when = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=round(size_gb * 1000))
    return names.backup_key(PREFIX, "manual", when)


def manifest_for(storage, key, stored, sha256, sql_bytes, member_sizes, started_at, seconds, rows):
    """A manifest with the fields backup._manifest writes (validated by manifest.dumps)."""
    from l2c_backup import __version__, manifest
    from l2c_backup.backup import BLOCK_SIZE
    return manifest.dumps({
        "format": manifest.FORMAT, "kind": "manual", "content": "database", "key": key,
        "storage": storage.url, "database": "bench_verify",
        "object": {"size": stored.size, "sha256": sha256, "crc64ecma": stored.crc64,
                   "etag": stored.etag, "version_id": stored.version_id, "parts": stored.parts,
                   "part_size": stored.extra.get("part_size", 0)},
        "sql_bytes": sql_bytes,
        "compression": {"format": "gzip", "level": 6, "members": len(member_sizes),
                        "block_size": BLOCK_SIZE, "member_sizes": member_sizes},
        "started_at": started_at.isoformat(), "finished_at": datetime.now(timezone.utc).isoformat(),
        "duration_seconds": round(seconds, 3),
        "server": {"host": "localhost", "port": 5432, "version": "16.4", "version_num": 160004},
        "pg_dump_version": "16.4", "database_size": 0, "table_rows": rows,
        "encryption": {"server_side": None, "kms_key_id": None}, "request_id": "bench-verify",
        "tool": {"name": "l2c-backup", "version": __version__},
    })


def build_object(root, size_gb, log):
    """Makes the ~size_gb GB (compressed) backup under directory `root`, as a backup does:
    SQL -> gzip_members(level 6, 4 MiB blocks) -> DirectoryStorage.put_stream, then the
    manifest. Returns its description (cached in `root`: a second call reuses it)."""
    from l2c_backup import names
    from l2c_backup.backup import BLOCK_SIZE
    from l2c_backup.compress import gzip_members
    from l2c_backup.storage.directory import DirectoryStorage
    key = object_key(size_gb)
    info_path = Path(root) / f"object-{size_gb:g}.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("format_version") == FORMAT_VERSION and Path(info["path"]).exists() \
                and Path(info["path"]).stat().st_size == info["size"]:
            log(f"  reusing {info['path']} ({info['size'] / MB:,.0f} MB)")
            return info
    storage = DirectoryStorage(root, PREFIX)
    target = int(size_gb * GB)
    text = SqlText()
    state = {"compressed": 0, "sql": 0, "members": 0}
    sizes = []
    sha = hashlib.sha256()

    def done(share):
        return state["compressed"] >= share * target

    def counted(chunks):
        for chunk in chunks:
            state["sql"] += len(chunk)
            yield chunk

    def metered(members):
        for member in members:
            sha.update(member)
            sizes.append(len(member))
            state["compressed"] += len(member)
            state["members"] += 1
            if state["members"] % 50 == 0:
                log(f"    {state['compressed'] / MB:,.0f} MB compressed of ~{target / MB:,.0f} "
                    f"({state['sql'] / max(state['compressed'], 1):.2f}x)")
            yield member

    started_at, started = datetime.now(timezone.utc), time.monotonic()
    log(f"  building a ~{size_gb:g} GB backup in {root} (SQL -> gzip_members level 6, 4 MiB blocks)")
    members = gzip_members(counted(text.chunks(done)), 6, None, BLOCK_SIZE)
    stored = storage.put_stream(key, metered(members), target)
    seconds = time.monotonic() - started
    doc = manifest_for(storage, key, stored, sha.hexdigest(), state["sql"], sizes,
                       started_at, seconds, {f"app.{k}": v for k, v in text.ids.items()})
    storage.put_bytes(names.manifest_key(key), doc)
    info = {"format_version": FORMAT_VERSION, "size_gb": size_gb, "key": key,
            "path": str(Path(root) / key), "size": stored.size, "sql_bytes": state["sql"],
            "members": state["members"], "member_sizes": sizes, "sha256": sha.hexdigest(),
            "crc64": stored.crc64,
            "build_seconds": round(seconds, 1)}
    info_path.write_text(json.dumps(info, indent=2))
    log(f"  built {stored.size / MB:,.0f} MB ({state['sql'] / MB:,.0f} MB of SQL, "
        f"{state['sql'] / stored.size:.2f}x, {state['members']} members) in {seconds:.0f} s")
    return info


def upload_object(oss_env, info, log):
    """Copies the directory object and a manifest of its own into the local OSS server
    (a multipart upload, as a backup makes), unless it is there already."""
    from l2c_backup import names
    from l2c_backup.storage import read_chunks
    storage = oss_storage(oss_env)
    started_at, started = datetime.now(timezone.utc), time.monotonic()
    stored = storage.head(info["key"])
    if stored is not None and stored.crc64 == info["crc64"]:
        log(f"  reusing oss://{BUCKET}/{info['key']} (its manifest written again)")
    else:
        stored = storage.put_stream(info["key"], read_chunks(open(info["path"], "rb"), 8 * MIB),
                                    info["size"])
        log(f"  uploaded to oss://{BUCKET}/{info['key']} in {time.monotonic() - started:.0f} s "
            f"(CRC64 {stored.crc64 == info['crc64'] and 'matches' or 'DIFFERS'})")
    doc = manifest_for(storage, info["key"], stored, info["sha256"], info["sql_bytes"],
                       info["member_sizes"], started_at, time.monotonic() - started, {})
    storage.put_bytes(names.manifest_key(info["key"]), doc)


def oss_storage(oss_env):
    from l2c_backup.storage import open_storage
    from l2c_backup.storage.oss import OSSSettings
    return open_storage(f"oss://{BUCKET}/{PREFIX}", OSSSettings(
        oss_env["endpoint"], oss_env["access_key_id"], oss_env["access_key_secret"]))


# -- processes ------------------------------------------------------------------------------

@dataclass
class Result:
    variant: str
    size_gb: float
    compressed: int = 0
    sql_bytes: int = 0
    wall: float = 0.0  # the timed work: gunzip's process, or check_object
    process_wall: float = 0.0
    cpu: float = 0.0  # of the timed work
    process_cpu: float = 0.0
    rss_mb: float = 0.0
    server_cpu: float | None = None
    others_cpu: float = 0.0
    notes: list = field(default_factory=list)


def other_bench_running():
    out = subprocess.run(["pgrep", "-f", "bench/backup.py"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def wait_for_quiet(log, max_wait, busy_cores=0.2):
    """Waits (up to max_wait s) until no bench/backup.py runs and other work uses under
    `busy_cores` CPUs over 3 s: on 2 cores anything else would be timed as ours."""
    started = time.monotonic()
    said = False
    while True:
        others = other_bench_running()
        load = 0.0
        if not others:
            b0 = system_busy()
            time.sleep(3)
            load = (system_busy() - b0) / 3
            if load < busy_cores:
                if said:
                    log(f"    quiet after {time.monotonic() - started:.0f} s")
                return
        if time.monotonic() - started > max_wait:
            log(f"    still busy after {max_wait:.0f} s ({'bench/backup.py running' if others else f'{load:.1f} CPUs in use'}); measuring anyway")
            return
        if not said:
            log(f"    waiting for a quiet machine ({'bench/backup.py is running' if others else f'{load:.1f} CPUs in use by others'})")
            said = True
        time.sleep(60 if others else 5)


def warm_page_cache(paths):
    """Reads the files once, so no variant pays for the disk (every one reads from memory)."""
    for path in paths:
        path = Path(path)
        if path.is_file() and path.stat().st_size > MIB:
            with open(path, "rb") as f:
                while f.read(8 * MIB):
                    pass


# -- the variants -----------------------------------------------------------------------------

def run_gunzip(children, info):
    result = Result(LABELS["a"], info["size_gb"], info["size"], info["sql_bytes"])
    started = time.monotonic()
    proc = children.start(["gunzip", "-t", info["path"]], stderr=subprocess.PIPE)
    peak = [0.0]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], vm_hwm_mb(proc.pid))
            stop.wait(0.05)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    err = proc.stderr.read()
    proc.stderr.close()
    code, usage = children.reap(proc)
    result.wall = result.process_wall = time.monotonic() - started
    stop.set()
    poller.join()
    if code != 0:
        raise RuntimeError(f"gunzip -t exited {code}: {err.decode(errors='replace')[-500:]}")
    result.cpu = result.process_cpu = cpu_of(usage)
    result.rss_mb = peak[0]
    return result


def run_runner(children, label, target, key, oss_env, workdir, breakdown=False, stream=False):
    """A fresh `bench/verify.py --run-variant` subprocess: (its JSON, wall, rusage)."""
    env = dict(os.environ, L2C_BENCH_OSS=json.dumps(oss_env or {}))
    argv = [sys.executable, __file__, "--run-variant", target, key]
    if breakdown:
        argv.append("--breakdown")
    if stream:
        argv.append("--stream")
    errlog = Path(workdir) / f"runner-{label[1]}.stderr"
    started = time.monotonic()
    with open(errlog, "wb") as err:
        proc = children.start(argv, stdout=subprocess.PIPE, stderr=err, env=env)
        out = proc.stdout.read()
        proc.stdout.close()
        code, usage = children.reap(proc)
    wall = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"{label}: the runner exited {code}: {errlog.read_text(errors='replace')[-2000:]}")
    return json.loads(out), wall, usage


def run_check(children, label, info, target, oss_env, workdir, stream=False):
    """check_object in a fresh `--run-variant` subprocess; returns its Result."""
    result = Result(label, info["size_gb"], info["size"], info["sql_bytes"])
    inner, result.process_wall, usage = run_runner(children, label, target, info["key"],
                                                   oss_env, workdir, stream=stream)
    verdict = inner["verdict"]
    if verdict["reason"] != "ok":
        raise RuntimeError(f"{label}: check_object says {verdict['reason']}: {verdict['detail']}")
    if verdict["inflate"].startswith("whole members") == stream:
        raise RuntimeError(f"{label}: read by {verdict['inflate']}, not the path this row measures")
    if verdict["bytes"] != info["size"] or verdict["sql_bytes"] != info["sql_bytes"]:
        raise RuntimeError(f"{label}: read {verdict['bytes']} / {verdict['sql_bytes']} bytes, "
                           f"expected {info['size']} / {info['sql_bytes']}")
    result.wall = inner["seconds"]
    result.cpu = inner["cpu"]
    result.process_cpu = cpu_of(usage)
    result.rss_mb = inner["peak_rss_kb"] / 1024
    result.notes.append(f"{verdict['inflate']}; peak RSS {inner['rss_before_mb']:.0f} MB before "
                        "check_object (imports)")
    return result


def run_variant(target, key, breakdown, stream):
    """--run-variant: check_object once in this fresh process (or, with --breakdown, each
    of its steps alone; with --stream, the stream path); prints JSON."""
    from l2c_backup import verify
    from l2c_backup.storage import open_storage
    oss_env = json.loads(os.environ.get("L2C_BENCH_OSS") or "{}")
    storage = oss_storage(oss_env) if target == "oss" else open_storage(target)
    if breakdown:
        print(json.dumps(steps_alone(storage, key)))
        return 0
    before_mb = vm_hwm_mb()
    cpu0 = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
    verdict = verify.check_object(storage, key, manifest_wait_seconds=5, whole_members=not stream)
    cpu1 = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
    out = {"verdict": {"reason": verdict.reason, "detail": verdict.detail, "bytes": verdict.bytes,
                       "sql_bytes": verdict.sql_bytes, "members": verdict.members,
                       "inflate": verdict.extra.get("inflate", "")},
           "seconds": verdict.seconds, "cpu": cpu1 - cpu0, "peak_rss_kb": vm_hwm_mb() * 1024,
           "rss_before_mb": before_mb}
    print(json.dumps(out))
    return 0


def steps_alone(storage, key):
    """Seconds each piece of check_object takes on its own, on one thread, over the same
    stream, the read included (storage.open as check_object calls it): where the time goes."""
    from oss2.utils import Crc64

    from l2c_backup import manifest, names, reading
    doc = manifest.loads(b"".join(storage.open(names.manifest_key(key))))
    sizes, cap = doc["compression"]["member_sizes"], reading.member_cap(doc)

    def timed(consume):
        started = time.monotonic()
        for data in storage.open(key, reading.READ_SIZE):
            consume(data)
        return time.monotonic() - started

    def whole_members():
        cut = reading._Members(sizes)

        def consume(data):
            for number, member in cut.feed(data):
                reading.inflate(member, number, cap)
        return consume
    stream, sha, crc = reading.GzipStreamCheck(), hashlib.sha256(), Crc64(0)
    return {"read": timed(lambda data: None), "read+zlib stream": timed(stream.feed),
            "read+whole members": timed(whole_members()), "read+sha256": timed(sha.update),
            "read+crc64": timed(crc.update)}


def measure_object(children, oss, oss_env, dir_root, workdir, info, variants, repeat, breakdown,
                   max_wait, log, reruns=2):
    """Every variant on one object, `repeat` rounds interleaved (a b c, a b c, ...), then up
    to `reruns` more runs of a variant whose fastest run was noisy (others used more than
    NOISY_CORES meanwhile). The fastest run of each counts; all are listed in its notes."""
    runs = {v: [] for v in variants}

    def once(v):
        wait_for_quiet(log, max_wait)
        busy0, server0 = system_busy(), proc_cpu(oss.proc.pid, children=False)
        if v == "a":
            r = run_gunzip(children, info)
        else:
            r = run_check(children, LABELS[v], info, str(dir_root) if v in "bd" else "oss",
                          oss_env, workdir, stream=v in "de")
        server = proc_cpu(oss.proc.pid, children=False) - server0
        if v in "ce":
            r.server_cpu = server
        r.others_cpu = max(0.0, system_busy() - busy0 - r.process_cpu - server)
        runs[v].append(r)
        log(f"  run {len(runs[v])} {r.variant:<36} {r.wall:6.2f} s {r.compressed / MB / r.wall:5.0f} "
            f"MB/s gz  cpu {r.cpu:5.1f} s  RSS {r.rss_mb:4.0f} MB  others {r.others_cpu:.1f} cpu s"
            + (f"  OSS server {server:.1f} cpu s" if v in "ce" else ""))

    def best(v):
        return min(runs[v], key=lambda r: r.wall)

    for _ in range(repeat):
        for v in variants:
            once(v)
    for v in variants:
        while best(v).others_cpu > NOISY_CORES * best(v).wall and len(runs[v]) < repeat + reruns:
            once(v)
    results = []
    for v in variants:
        r = best(v)
        r.notes.insert(0, "runs " + ", ".join(f"{x.wall:.2f}" for x in runs[v]) + " s")
        if v in "bc" and breakdown:
            wait_for_quiet(log, max_wait)
            steps, _, _ = run_runner(children, LABELS[v], str(dir_root) if v == "b" else "oss",
                                     info["key"], oss_env, workdir, True)
            r.notes.append("steps alone: " + ", ".join(
                f"{name} {info['size'] / MB / s:,.0f}" for name, s in steps.items()) + " MB/s")
            log(f"  {LABELS[v]}: {r.notes[-1]}")
        results.append(r)
    return results


# -- the report -------------------------------------------------------------------------------

def table(results):
    lines = ["| variant | object | wall s | MB/s compressed | MB/s SQL | rate vs (a) | cpu s "
             "| peak RSS MB | process wall s / cpu s | OSS server cpu s | others cpu s | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    base = {r.size_gb: r.wall for r in results if r.variant == LABELS["a"]}
    for r in results:
        ratio = f"{base[r.size_gb] / r.wall:.2f}" if r.size_gb in base else "-"
        server = "-" if r.server_cpu is None else f"{r.server_cpu:.1f}"
        obj = f"{r.compressed / MB:,.0f} MB gz / {r.sql_bytes / MB:,.0f} MB SQL"
        lines.append(f"| {r.variant} | {obj} | {r.wall:.2f} | {r.compressed / MB / r.wall:,.0f} | "
                     f"{r.sql_bytes / MB / r.wall:,.0f} | {ratio} | {r.cpu:.1f} | {r.rss_mb:.0f} | "
                     f"{r.process_wall:.2f} / {r.process_cpu:.1f} | {server} | {r.others_cpu:.1f} | {'; '.join(r.notes)} |")
    return "\n".join(lines)


def verdicts(results):
    from l2c_backup.deflate_engine import ENGINE
    out = [f"- inflate engine: {ENGINE}"]
    by = {(r.size_gb, r.variant[:3]): r for r in results}
    for size in sorted({r.size_gb for r in results}, reverse=True):
        a = by.get((size, "(a)"))
        for key in "bcde":
            r = by.get((size, f"({key})"))
            if a and r:
                ratio = a.wall / r.wall
                cpu = f"; cpu {r.cpu:.1f} s vs gunzip's {a.cpu:.1f} s"
                if key in TARGET_RATE_RATIO:
                    out.append(f"- {size:g} GB: ({key}) rate = {ratio:.2f}x of gunzip -t (target >= "
                               f"{TARGET_RATE_RATIO[key]:g}x): "
                               + ("met" if ratio >= TARGET_RATE_RATIO[key] else "MISSED") + cpu)
                else:
                    out.append(f"- {size:g} GB: ({key}) stream path rate = {ratio:.2f}x of gunzip -t" + cpu)
        for whole, stream in (("b", "d"), ("c", "e")):
            w, st = by.get((size, f"({whole})")), by.get((size, f"({stream})"))
            if w and st:
                out.append(f"- {size:g} GB: ({whole}) whole members = {st.wall / w.wall:.2f}x the "
                           f"rate of ({stream}) the stream path")
    for key in "bcde":
        rss = [(r.size_gb, r.rss_mb) for r in results if r.variant.startswith(f"({key})")]
        if len(rss) > 1:
            spread = max(m for _, m in rss) - min(m for _, m in rss)
            out.append(f"- ({key}) peak RSS " + ", ".join(f"{m:.0f} MB at {s:g} GB" for s, m in rss)
                       + f": spread {spread:.0f} MB " + ("(flat)" if spread < FLAT_RSS_MB else "(NOT flat)"))
        elif rss:
            out.append(f"- ({key}) peak RSS {rss[0][1]:.0f} MB at {rss[0][0]:g} GB (one size: run "
                       "two to see it flat)")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,0.25", help="compressed object sizes in GB, "
                        "comma-separated (default 1,0.25; 0.05 for a smoke run)")
    parser.add_argument("--variants", default="abcde", help="which rows to run (default abcde; "
                        "d and e time the stream path, as for manifests without member sizes)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant, interleaved; "
                        "the fastest counts (default 3)")
    parser.add_argument("--workdir", help="keep the objects (and run logs) in this directory, "
                        "never removed: a later run with the same --workdir reuses the objects "
                        "(default: a temporary directory removed at exit)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--breakdown", action="store_true", help="after each (b)/(c) run, time "
                        "read, inflate, SHA-256 and CRC64 each alone over the same stream")
    parser.add_argument("--max-wait", type=float, default=2400, help="seconds to wait before "
                        "each run for bench/backup.py and other work to finish (default 2400)")
    parser.add_argument("--run-variant", nargs=2, metavar=("TARGET", "KEY"), help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_variant:
        return run_variant(*args.run_variant, args.breakdown, args.stream)

    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    variants = [v for v in "abcde" if v in args.variants]

    exit_on_signals()  # every finally below runs

    def log(msg):
        print(msg, flush=True)

    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="l2c-bench-verify-"))
    children = Children()
    results = []
    try:
        log(f"bench/verify.py: {os.cpu_count()} CPUs, work dir {workdir}")
        dir_root = workdir / "dir-target"
        with OssServer(children, workdir / "oss-data", workdir / "oss-server.log", BUCKET, keep_data=True) as oss:
            oss_env = {k: oss.details[k] for k in ("endpoint", "access_key_id", "access_key_secret")}
            objects = []
            for size in sizes:
                log(f"\n== {size:g} GB object")
                info = build_object(dir_root, size, log)
                if "c" in variants or "e" in variants:
                    upload_object(oss_env, info, log)
                objects.append(info)
            for info in objects:
                log(f"\n== measuring the {info['size'] / MB:,.0f} MB object "
                    f"({info['sql_bytes'] / MB:,.0f} MB of SQL, {info['members']} members)")
                warm_page_cache([info["path"], *(workdir / "oss-data").rglob("*")])
                results += measure_object(children, oss, oss_env, dir_root, workdir, info,
                                          variants, args.repeat, args.breakdown, args.max_wait, log)
        log("\n" + table(results))
        log("\n" + verdicts(results))
        return 0
    except KeyboardInterrupt:
        log("\ninterrupted: stopping what this bench started")
        return 130
    finally:
        children.stop_all()
        if args.keep or args.workdir:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
