"""A realistic database of a chosen size, for backup benchmarks.

    python bench/realistic_db.py --size-gb 1            # throwaway cluster, report, stop
    python bench/realistic_db.py --size-gb 1 --keep     # ... and keep it until Ctrl-C
    python bench/realistic_db.py --size-gb 0.2 --database-url postgresql://u:p@host:5433/db

pgbench's tables are mostly blank padding that gzip shrinks ~35x, which makes compression
look free. This builds a shop-like schema (customers, orders, support messages, web
events) with text, numeric, timestamp, inet, uuid and jsonb columns whose text reads like
notes people write: words drawn with a Zipf-like skew from a vocabulary of a few thousand
(common English words plus made-up ones, some Chinese), grouped into a pool of 60,000
phrases, and each text field joins a few phrases picked at random. The pools are far
larger than gzip's 32 KB window, so a dump compresses like a real one: gzip -6 shrinks
it about 3x (the sample at the end measures it).

Everything is generated set-based in SQL (generate_series joined to the pools; per-row
subqueries would be ~10x slower) in batches of rows run on `--workers` connections at
once; every batch seeds random() from its number, so the same size gives the same data.
Indexes are built after the load, then VACUUM ANALYZE sets hint bits and the visibility
map, so the first pg_dump of the result does not pay for them.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

GIB = 1 << 30
ORDERS_PER_BATCH = 40_000  # ~45 MB of tables per batch
TABLES = ("app.customers", "app.orders", "app.messages", "app.events")

# Per order in a batch: 0.1 customer, 0.6 message, 1 event. A btree entry on a bigint or
# timestamptz costs ~22 bytes at the default fill factor; 5.3 entries per order (the
# primary keys plus three secondary indexes) -> what the indexes add to each batch.
INDEX_BYTES_PER_ORDER = 5.3 * 22

SESSION = """
SET client_min_messages = warning;
SET TimeZone = 'UTC';
SET max_parallel_workers_per_gather = 0;  -- random() stays in this backend, setseed holds
SET jit = off;
SET work_mem = '64MB';
SET synchronous_commit = off;
"""

# -- the pools ------------------------------------------------------------------------------

POOLS_SQL = SESSION + r"""
SELECT setseed(0.31);
DROP SCHEMA IF EXISTS bench_pool CASCADE;
CREATE SCHEMA bench_pool;

-- Vocabulary: common English words first (the skewed pick below favours low numbers, so
-- they are the frequent ones), then 6,000 made-up words of 2-4 syllables: the long tail a
-- real text has (names, products, typos), which keeps gzip from finding long matches.
CREATE TABLE bench_pool.word AS
WITH english AS (
  SELECT i::int, w FROM unnest(string_to_array(
  'the a to and of for in on with is was it be at as by this that from or have not are '
  'please customer order delivery package box address phone call back after before today '
  'tomorrow morning evening weekend door floor building office reception leave neighbour '
  'ring bell twice working gate code fragile handle care glass bottle keep upright cold '
  'chain frozen warm gift wrap card message birthday anniversary wedding invoice company '
  'tax number receipt paper email copy refund return exchange size colour wrong missing '
  'damaged late early courier driver route warehouse stock backorder partial split '
  'shipment tracking label printed scanned sorted loaded dispatched arrived signed photo '
  'proof contact support ticket escalated resolved pending confirm confirmed cancelled '
  'changed moved new old second third first last time window between noon pm am hours '
  'minutes days week month year discount coupon voucher points member loyalty upgrade '
  'express standard economy free shipping fee charge paid cash bank transfer alipay '
  'wechat declined retry approved hold review fraud check verified identity passport '
  'student teacher nurse shop restaurant hotel hospital school university apartment flat '
  'unit block tower street road avenue lane district city province village north south '
  'east west near opposite next behind inside outside upstairs downstairs lift stairs '
  'parking lot basement garden balcony kitchen dog cat beware quiet baby sleeping knock '
  'softly do use side entrance main lobby security guard desk signature required id shown '
  'collect pickup point locker station store branch open closed holiday festival spring '
  'autumn rain snow storm traffic delay apologies thanks thank you kindly sorry urgent '
  'asap priority vip repeat buyer wholesale bulk pallet carton bag envelope small medium '
  'large heavy light extra spare battery charger cable adapter case screen laptop '
  'headphones tea coffee rice noodles oil sauce fruit apples oranges mangoes milk yoghurt '
  'bread cake chocolate wine beer water shoes shirt dress jacket scarf hat socks toys '
  'books pens notebook printer ink desk chair lamp sofa bed pillow towel soap shampoo '
  'medicine we i he she they my your our their will would could should can may might '
  'must has had did does got get sent send received receive asked ask said says told '
  'tell wants want need needs because but if when where which who what how why there '
  'here still already again also only just very too much many more most some any no '
  'yes all each every other another same different about into over under up down out '
  'off then than so such well good bad great best better problem issue question answer '
  'reply waiting wait arrive arriving checked checking looks seems item items product '
  'products quality price cost total amount account password login app website link '
  'update updated status system error page mobile number note notes request requested',
  ' ')) WITH ORDINALITY AS u(w, i)
), syllable AS (
  SELECT string_to_array('ka ro mi zen tal por vex lin qua dor sha ber nix tor fel gan '
    'ul ae ko ri pa su te no ma chi lo ven dra kel mon ser tri bo ha ne gu yo wen li '
    'ast ter ion ful ity ous ble ment ing er ly ed', ' ') AS s
), made_up AS (
  SELECT n, string_agg(s[1 + floor(random() * array_length(s, 1))::int], '' ORDER BY k) AS w
  FROM syllable, generate_series(1, 6000) n, generate_series(1, 2 + n % 3) k
  GROUP BY n
)
SELECT i, w FROM english
UNION ALL
SELECT (SELECT count(*) FROM english) + n, w FROM made_up;

CREATE TABLE bench_pool.word_zh AS
SELECT i::int, w FROM unnest(string_to_array(
  '请 放在 门口 谢谢 快递 电话 联系 下午 上午 周末 送货 地址 发票 公司 礼物 包装 小心 轻放 '
  '易碎 退货 换货 尺寸 颜色 已付款 保安 前台 楼下 客户 订单 商品 质量 问题 已经 还没 收到 '
  '发货 物流 单号 查询 麻烦 尽快 处理 一下 可以 不是 我们 你们 他们 今天 明天 昨天 时间 '
  '退款 申请 审核 通过 失败 成功 优惠券 积分 会员 价格 便宜 太贵 满意 不满意 好评 差评 '
  '客服 回复 等待 确认 取消 修改 重新 问一下 没有 需要 希望 非常 比较 一直 然后 因为 所以',
  ' ')) WITH ORDINALITY AS u(w, i);

-- The volatile select lists keep these subqueries from being flattened, so random()
-- runs once per generated row.
CREATE TABLE bench_pool.phrase AS
SELECT p.n AS i, string_agg(w.w, ' ' ORDER BY p.k) AS text
FROM (SELECT n, k, 1 + floor(random() ^ 3 * (SELECT count(*) FROM bench_pool.word))::int AS pick
      FROM generate_series(1, 60000) n, generate_series(1, 3 + n % 9) k) p
JOIN bench_pool.word w ON w.i = p.pick
GROUP BY p.n;

CREATE TABLE bench_pool.phrase_zh AS
SELECT p.n AS i, string_agg(w.w, '' ORDER BY p.k) AS text
FROM (SELECT n, k, 1 + floor(random() ^ 1.5 * (SELECT count(*) FROM bench_pool.word_zh))::int AS pick
      FROM generate_series(1, 5000) n, generate_series(1, 2 + n % 6) k) p
JOIN bench_pool.word_zh w ON w.i = p.pick
GROUP BY p.n;

CREATE TABLE bench_pool.street AS
SELECT n AS i, initcap(w.w) || ' ' || (ARRAY['Street', 'Road', 'Avenue', 'Lane', 'Way',
       'Boulevard', 'Court', 'Place', '路', '街'])[1 + n % 10] AS text
FROM (SELECT n, 1 + floor(random() * (SELECT count(*) FROM bench_pool.word))::int AS pick
      FROM generate_series(1, 8000) n) p
JOIN bench_pool.word w ON w.i = p.pick;

CREATE TABLE bench_pool.city AS
SELECT i::int, c AS text FROM unnest(string_to_array(
  'Hangzhou|Shanghai|Beijing|Shenzhen|Guangzhou|Chengdu|Wuhan|Nanjing|Xi''an|Suzhou|'
  'Tianjin|Chongqing|Qingdao|Xiamen|Ningbo|Kunming|Dalian|Hefei|Changsha|Zhengzhou|'
  'Berlin|Munich|Hamburg|Paris|Lyon|London|Manchester|New York|Chicago|Seattle|'
  'San Francisco|Austin|Toronto|Vancouver|Tokyo|Osaka|Seoul|Busan|Singapore|Sydney|'
  'Melbourne|Sao Paulo|Madrid|Barcelona|Milan|Rome|Amsterdam|Warsaw|Prague|Vienna',
  '|')) WITH ORDINALITY AS u(c, i);

CREATE TABLE bench_pool.lines AS
SELECT p.n AS i, jsonb_agg(jsonb_build_object('sku', p.sku, 'name', ph.text, 'qty', p.qty,
                                              'unit_price', p.price) ORDER BY p.k) AS lines
FROM (SELECT n, k,
             'SKU-' || lpad((1 + floor(random() ^ 2 * 5000)::int)::text, 6, '0') AS sku,
             1 + floor(random() * 60000)::int AS name_pick,
             1 + floor(random() ^ 3 * 10)::int AS qty,
             round((1 + random() ^ 2 * 500)::numeric, 2) AS price
      FROM generate_series(1, 30000) n, generate_series(1, 1 + n % 4) k) p
JOIN bench_pool.phrase ph ON ph.i = p.name_pick
GROUP BY p.n;

CREATE TABLE bench_pool.agent AS
SELECT n AS i, 'Mozilla/5.0 (' || (ARRAY['Windows NT 10.0; Win64; x64', 'Macintosh; Intel Mac OS X 10_15_7',
       'X11; Linux x86_64', 'iPhone; CPU iPhone OS 17_4 like Mac OS X',
       'Linux; Android 14; Pixel 8'])[1 + n % 5]
       || ') AppleWebKit/537.36 (KHTML, like Gecko) '
       || (ARRAY['Chrome/', 'Version/17.4 Mobile/15E148 Safari/', 'Firefox/', 'EdgA/'])[1 + n % 4]
       || (100 + n % 27) || '.0.' || (4000 + floor(random() * 2000)::int) || '.'
       || floor(random() * 200)::int AS text
FROM generate_series(1, 400) n;

CREATE TABLE bench_pool.path AS
SELECT n AS i, '/' || (ARRAY['api/v2', 'shop', 'account', 'help', 'search', 'cart'])[1 + n % 6]
       || '/' || a.w || '/' || b.w AS text
FROM (SELECT n, 1 + floor(random() ^ 2 * (SELECT count(*) FROM bench_pool.word))::int AS a,
             1 + floor(random() * (SELECT count(*) FROM bench_pool.word))::int AS b
      FROM generate_series(1, 5000) n) p
JOIN bench_pool.word a ON a.i = p.a
JOIN bench_pool.word b ON b.i = p.b;

ANALYZE bench_pool.word, bench_pool.word_zh, bench_pool.phrase, bench_pool.phrase_zh,
        bench_pool.street, bench_pool.city, bench_pool.lines, bench_pool.agent, bench_pool.path;
"""

SCHEMA_SQL = """
CREATE SCHEMA app;
COMMENT ON SCHEMA app IS 'benchmark shop (bench/realistic_db.py)';
CREATE TABLE app.customers (
    id bigint NOT NULL,
    full_name text NOT NULL,
    email text NOT NULL,
    phone text,
    country char(2) NOT NULL,
    city text NOT NULL,
    address text,
    signed_up_at timestamptz NOT NULL,
    credit_limit numeric(12, 2) NOT NULL,
    profile jsonb NOT NULL,
    bio text
);
CREATE TABLE app.orders (
    id bigint NOT NULL,
    customer_id bigint NOT NULL,
    status text NOT NULL,
    ordered_at timestamptz NOT NULL,
    shipped_at timestamptz,
    currency char(3) NOT NULL,
    subtotal numeric(12, 2) NOT NULL,
    tax numeric(12, 2) NOT NULL,
    total numeric(12, 2) NOT NULL,
    tracking_code text,
    ship_to text,
    note text,
    lines jsonb NOT NULL
);
CREATE TABLE app.messages (
    id bigint NOT NULL,
    order_id bigint NOT NULL,
    sent_at timestamptz NOT NULL,
    channel text NOT NULL,
    from_customer boolean NOT NULL,
    subject text NOT NULL,
    body text NOT NULL
);
CREATE TABLE app.events (
    id bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    kind text NOT NULL,
    customer_id bigint,
    session_id uuid NOT NULL,
    ip inet,
    duration_ms integer NOT NULL,
    payload jsonb NOT NULL
);
"""

# One batch: `n` orders (ids lo..hi), n/10 customers, 6n/10 messages, n events.
BATCH_SQL = SESSION + """
SELECT setseed({seed});
INSERT INTO app.customers
SELECT g,
       CASE WHEN zh THEN (string_to_array('王 李 张 刘 陈 杨 黄 赵 吴 周 徐 孙 马 朱 胡 郭 何 高 林 罗', ' '))
                             [1 + floor(random() * 20)::int]
                         || (string_to_array('伟 芳 娜 秀英 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 秀兰 霞', ' '))
                             [1 + floor(random() * 20)::int]
            ELSE first || ' ' || last END,
       lower(first) || '.' || lower(last) || g % 1000 || '@'
           || (ARRAY['gmail.com', 'qq.com', '163.com', 'outlook.com', 'example.cn', 'yahoo.co.jp'])
              [1 + floor(random() * 6)::int],
       CASE WHEN random() < 0.8 THEN '+' || (ARRAY['86', '49', '33', '1', '81', '44'])[1 + g % 6] || ' '
           || (100 + floor(random() * 900)::int) || ' ' || lpad(floor(random() * 100000000)::int::text, 8, '0') END,
       CASE WHEN zh THEN 'CN' ELSE (ARRAY['US', 'DE', 'FR', 'JP', 'GB', 'BR', 'KR', 'IT'])[1 + g % 8] END,
       city.text,
       (1 + floor(random() * 2000)::int) || ' ' || street.text || coalesce(', Unit ' || unit, ''),
       timestamptz '2018-01-01 00:00:00+00' + random() * interval '2000 days',
       round((random() ^ 2 * 50000)::numeric, 2),
       jsonb_build_object('tier', (ARRAY['bronze', 'silver', 'gold', 'platinum'])[1 + g % 4],
                          'newsletter', random() < 0.4,
                          'langs', CASE WHEN zh THEN '["zh", "en"]'::jsonb ELSE '["en"]' END,
                          'points', floor(random() * 20000)::int,
                          'referrer', CASE WHEN random() < 0.3 THEN 'ref-' || floor(random() * 9999)::int END),
       CASE WHEN random() < 0.4 THEN bio.text END
FROM (SELECT g, random() < 0.3 AS zh,
             (string_to_array('James Mary Wei Anna Lucas Sofia Chen Emma Noah Olivia Liam Mia Hiro '
                              'Yuki Omar Leila Ivan Nina Pedro Ana Jun Mei Ravi Priya Tom Sara', ' '))
                 [1 + floor(random() * 26)::int] AS first,
             (string_to_array('Smith Müller Garcia Rossi Dubois Kowalski Novak Tanaka Kim Nguyen Silva '
                              'Jensen Ivanova OBrien Schmidt Martin Haddad Costa Berg Okafor Wang Li', ' '))
                 [1 + floor(random() * 22)::int] AS last,
             CASE WHEN random() < 0.3 THEN floor(random() * 3000)::int END AS unit,
             1 + floor(random() * 50)::int AS city_pick,
             1 + floor(random() * 8000)::int AS street_pick,
             1 + floor(random() * 60000)::int AS bio_pick
      FROM generate_series({c_lo}, {c_hi}) g) c
JOIN bench_pool.city ON city.i = c.city_pick
JOIN bench_pool.street ON street.i = c.street_pick
JOIN bench_pool.phrase bio ON bio.i = c.bio_pick;

INSERT INTO app.orders
SELECT g, customer_id, status, ordered_at,
       CASE WHEN status IN ('shipped', 'delivered', 'refunded')
            THEN ordered_at + random() * interval '4 days' END,
       currency, subtotal, round(subtotal * 0.13, 2), round(subtotal * 1.13, 2),
       CASE WHEN status IN ('shipped', 'delivered', 'refunded')
            THEN (ARRAY['SF', 'YT', 'ZTO', 'JD', 'DHL', 'UPS'])[1 + g % 6]
                 || upper(substr(md5(random()::text), 1, 12)) END,
       (1 + floor(random() * 2000)::int) || ' ' || street.text || ', ' || city.text,
       CASE WHEN has_note THEN upper(left(a.text, 1)) || substr(a.text, 2) || '. ' || b.text || coalesce(', ' || c.text, '')
                               || coalesce(' ' || zh.text, '') END,
       l.lines
FROM (SELECT g,
             1 + floor(random() ^ 1.3 * {c_hi})::bigint AS customer_id,
             (ARRAY['pending', 'paid', 'shipped', 'delivered', 'delivered', 'delivered',
                    'refunded', 'cancelled'])[1 + floor(random() * 8)::int] AS status,
             timestamptz '2021-01-01 00:00:00+00' + g * interval '37 seconds'
                 + random() * interval '30 seconds' AS ordered_at,
             (ARRAY['CNY', 'CNY', 'CNY', 'USD', 'EUR', 'JPY'])[1 + floor(random() * 6)::int] AS currency,
             round((5 + random() ^ 2 * 3000)::numeric, 2) AS subtotal,
             random() < 0.7 AS has_note,
             1 + floor(random() * 60000)::int AS a,
             1 + floor(random() * 60000)::int AS b,
             CASE WHEN random() < 0.5 THEN 1 + floor(random() * 60000)::int END AS c,
             CASE WHEN random() < 0.15 THEN 1 + floor(random() * 5000)::int END AS zh,
             1 + floor(random() * 30000)::int AS l,
             1 + floor(random() * 8000)::int AS street_pick,
             1 + floor(random() * 50)::int AS city_pick
      FROM generate_series({lo}, {hi}) g) o
JOIN bench_pool.phrase a ON a.i = o.a
JOIN bench_pool.phrase b ON b.i = o.b
LEFT JOIN bench_pool.phrase c ON c.i = o.c
LEFT JOIN bench_pool.phrase_zh zh ON zh.i = o.zh
JOIN bench_pool.lines l ON l.i = o.l
JOIN bench_pool.street ON street.i = o.street_pick
JOIN bench_pool.city ON city.i = o.city_pick;

INSERT INTO app.messages
SELECT g, order_id, timestamptz '2021-01-01 00:00:00+00' + order_id * interval '37 seconds'
           + random() * interval '10 days',
       (ARRAY['email', 'chat', 'chat', 'phone', 'app'])[1 + g % 5],
       from_customer,
       CASE WHEN from_customer THEN 'Re: order ' || order_id || ' ' || s.text
            ELSE 'Your order ' || order_id || ': ' || s.text END,
       CASE WHEN from_customer THEN 'Hi, ' ELSE 'Dear customer, ' END
           || a.text || '. ' || upper(left(b.text, 1)) || substr(b.text, 2) || ', ' || c.text || '. '
           || coalesce(upper(left(d.text, 1)) || substr(d.text, 2) || '. ', '') || coalesce(zh.text || '。', '')
           || CASE WHEN from_customer THEN 'Thanks' ELSE 'Kind regards, support team' END
FROM (SELECT g, {lo} + floor(random() * {n})::bigint AS order_id, random() < 0.55 AS from_customer,
             1 + floor(random() * 60000)::int AS s,
             1 + floor(random() * 60000)::int AS a,
             1 + floor(random() * 60000)::int AS b,
             1 + floor(random() * 60000)::int AS c,
             CASE WHEN random() < 0.6 THEN 1 + floor(random() * 60000)::int END AS d,
             CASE WHEN random() < 0.2 THEN 1 + floor(random() * 5000)::int END AS zh
      FROM generate_series({m_lo}, {m_hi}) g) m
JOIN bench_pool.phrase s ON s.i = m.s
JOIN bench_pool.phrase a ON a.i = m.a
JOIN bench_pool.phrase b ON b.i = m.b
JOIN bench_pool.phrase c ON c.i = m.c
LEFT JOIN bench_pool.phrase d ON d.i = m.d
LEFT JOIN bench_pool.phrase_zh zh ON zh.i = m.zh;

INSERT INTO app.events
SELECT g, timestamptz '2021-01-01 00:00:00+00' + g * interval '37 seconds' + random() * interval '37 seconds',
       kind,
       CASE WHEN random() < 0.7 THEN 1 + floor(random() * {c_hi})::bigint END,
       md5(floor(g / 8)::text || {seed})::uuid,
       CASE WHEN random() < 0.95 THEN ((ARRAY['10', '172', '192', '58', '117'])[1 + g % 5] || '.'
           || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.'
           || floor(random() * 256)::int)::inet END,
       floor(random() ^ 3 * 3000)::int,
       jsonb_build_object('path', path.text, 'method', CASE WHEN kind = 'click' THEN 'GET' ELSE 'POST' END,
                          'status', (ARRAY[200, 200, 200, 200, 201, 304, 404, 500])[1 + floor(random() * 8)::int],
                          'agent', agent.text,
                          'query', CASE WHEN kind = 'search' THEN q.text END,
                          'ab', jsonb_build_object('checkout_v2', random() < 0.5, 'bucket', g % 16))
FROM (SELECT g, (ARRAY['click', 'click', 'view', 'view', 'search', 'add_to_cart', 'checkout',
                       'login'])[1 + floor(random() * 8)::int] AS kind,
             1 + floor(random() ^ 2 * 5000)::int AS path_pick,
             1 + floor(random() ^ 2 * 400)::int AS agent_pick,
             1 + floor(random() * 60000)::int AS q_pick
      FROM generate_series({lo}, {hi}) g) e
JOIN bench_pool.path ON path.i = e.path_pick
JOIN bench_pool.agent ON agent.i = e.agent_pick
JOIN bench_pool.phrase q ON q.i = e.q_pick;
"""

INDEX_SQL = (
    # Per worker, tables that do not share a lock.
    ["ALTER TABLE app.orders ADD PRIMARY KEY (id);",
     "CREATE INDEX orders_customer_idx ON app.orders (customer_id);",
     "ALTER TABLE app.customers ADD PRIMARY KEY (id);"],
    ["ALTER TABLE app.events ADD PRIMARY KEY (id);",
     "CREATE INDEX events_occurred_idx ON app.events (occurred_at);",
     "ALTER TABLE app.messages ADD PRIMARY KEY (id);",
     "CREATE INDEX messages_order_idx ON app.messages (order_id);"],
)

# An optional fifth table of ~1% of the dump, for restoring one small table out of a big
# backup (bench/restore_jobs.py: build(refunds=True)). Off by default, so the other benches
# build the same data as before; its rows come last in each batch, after the other tables'
# random() draws. Ids reuse the customers' range (n/10 per batch).
REFUNDS_TABLE = "app.refunds"
REFUNDS_SCHEMA_SQL = """
CREATE TABLE app.refunds (
    id bigint NOT NULL,
    order_id bigint NOT NULL,
    requested_at timestamptz NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL,
    reason text NOT NULL
);
"""
REFUNDS_BATCH_SQL = """
INSERT INTO app.refunds
SELECT g, order_id, timestamptz '2021-01-01 00:00:00+00' + order_id * interval '37 seconds'
           + random() * interval '20 days',
       round((1 + random() ^ 2 * 800)::numeric, 2),
       (ARRAY['requested', 'approved', 'approved', 'paid', 'declined'])[1 + floor(random() * 5)::int],
       upper(left(a.text, 1)) || substr(a.text, 2) || coalesce('. ' || b.text, '')
FROM (SELECT g, {lo} + floor(random() * {n})::bigint AS order_id,
             1 + floor(random() * 60000)::int AS a,
             CASE WHEN random() < 0.3 THEN 1 + floor(random() * 60000)::int END AS b
      FROM generate_series({c_lo}, {c_hi}) g) r
JOIN bench_pool.phrase a ON a.i = r.a
LEFT JOIN bench_pool.phrase b ON b.i = r.b;
"""
REFUNDS_INDEX_SQL = ["ALTER TABLE app.refunds ADD PRIMARY KEY (id);",
                     "CREATE INDEX refunds_order_idx ON app.refunds (order_id);"]


class Psql:
    """Runs SQL through the real psql against one database."""

    def __init__(self, psql_path, env, dbname):
        self.psql_path, self.env, self.dbname = str(psql_path), env, dbname

    def run(self, sql, capture_bytes=False):
        result = subprocess.run(
            [self.psql_path, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
             "-d", self.dbname, "-f", "-"],
            input=sql.encode(), capture_output=True, env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.decode(errors='replace').strip()[-2000:]}")
        return result.stdout if capture_bytes else result.stdout.decode()

    def value(self, sql):
        return self.run(sql).strip()

    @classmethod
    def for_url(cls, url, psql_path=None):
        """psql on a postgresql:// URL: the password goes through PGPASSWORD, not argv."""
        from l2c_backup.database import DatabaseSettings
        from l2c_backup.dump import find_pg_tool, process_env
        settings = DatabaseSettings.from_url(url)
        return cls(psql_path or find_pg_tool("psql"), process_env(settings), settings.dbname)


def build(db: Psql, size_bytes: int, workers: int = 2, orders_per_batch: int = ORDERS_PER_BATCH,
          replace: bool = False, log=print, refunds: bool = False) -> dict:
    """Fills `db` with about `size_bytes` (pg_database_size, indexes included) of realistic
    data in schema `app` (plus app.refunds, ~1% of it, with `refunds`). Returns a report:
    sizes, rows, timings, the sample's gzip ratio."""
    started = time.monotonic()
    timings = {}
    exists = db.value("SELECT count(*) FROM pg_namespace WHERE nspname = 'app'") != "0"
    if exists:
        if not replace:
            raise RuntimeError(f"database {db.dbname} already has a schema app (use --replace)")
        db.run("DROP SCHEMA app CASCADE;")
    db.run(POOLS_SQL)
    db.run(SCHEMA_SQL + (REFUNDS_SCHEMA_SQL if refunds else ""))
    timings["pools_s"] = time.monotonic() - started
    base = int(db.value("SELECT pg_database_size(current_database())"))

    n = orders_per_batch
    stop = threading.Event()

    def batch(k):  # k counts from 0
        if stop.is_set():
            return
        lo, c_per, m_per = k * n + 1, n // 10, n * 6 // 10
        db.run((BATCH_SQL + (REFUNDS_BATCH_SQL if refunds else "")).format(
            seed=((k * 7919) % 100_000) / 100_000 - 0.5, lo=lo, hi=lo + n - 1, n=n,
            c_lo=k * c_per + 1, c_hi=(k + 1) * c_per, m_lo=k * m_per + 1, m_hi=(k + 1) * m_per))

    def run_batches(numbers):
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(batch, k) for k in numbers]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                stop.set()
                raise

    # The first round measures what a batch weighs; the plan follows from it.
    t = time.monotonic()
    first = max(1, workers)
    run_batches(range(first))
    heap = int(db.value("SELECT pg_database_size(current_database())")) - base
    per_batch = heap / first + INDEX_BYTES_PER_ORDER * n
    total = max(first, math.ceil((size_bytes - base) / per_batch))
    log(f"  {first} batches: {heap / 1e6:.0f} MB in {time.monotonic() - t:.1f}s; "
        f"planning {total} batches of {n:,} orders ({per_batch / 1e6:.0f} MB each with indexes)")

    def progress_batches(numbers):
        for chunk_start in range(0, len(numbers), 8 * workers):
            run_batches(numbers[chunk_start:chunk_start + 8 * workers])
            done = first + chunk_start + len(numbers[chunk_start:chunk_start + 8 * workers])
            log(f"  {done}/{total} batches, {time.monotonic() - t:.0f}s")

    progress_batches(list(range(first, total)))
    timings["load_s"] = time.monotonic() - t

    t = time.monotonic()
    index_sql = (INDEX_SQL[0] + REFUNDS_INDEX_SQL, *INDEX_SQL[1:]) if refunds else INDEX_SQL
    with ThreadPoolExecutor(len(index_sql)) as pool:
        list(pool.map(lambda stmts: db.run("SET maintenance_work_mem = '512MB';\n" + "\n".join(stmts)),
                      index_sql))
    db.run("DROP SCHEMA bench_pool CASCADE;")
    timings["index_s"] = time.monotonic() - t
    t = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda table: db.run(f"VACUUM (ANALYZE) {table};"),
                      TABLES + ((REFUNDS_TABLE,) if refunds else ())))
    db.run("CHECKPOINT;")
    timings["vacuum_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - started

    size = int(db.value("SELECT pg_database_size(current_database())"))
    rows = dict(line.split("\t") for line in db.run(
        "SELECT relname, reltuples::bigint FROM pg_class "
        "WHERE relnamespace = 'app'::regnamespace AND relkind = 'r' ORDER BY 1").splitlines())
    report = {"database": db.dbname, "size_bytes": size, "target_bytes": size_bytes,
              "batches": total, "rows": {k: int(v) for k, v in rows.items()},
              **{k: round(v, 1) for k, v in timings.items()}}
    report.update(sample_ratio(db))
    return report


def sample_ratio(db: Psql, sample_bytes: int = 48 << 20, level: int = 6) -> dict:
    """gzip -`level` ratio of a sample of the data as pg_dump writes it (COPY text), taken
    from every table in proportion to its size: whole pages (TABLESAMPLE SYSTEM), so rows
    sit next to each other as in a dump."""
    sizes = dict(line.split("\t") for line in db.run(
        "SELECT format('%I.%I', 'app', relname), pg_table_size(oid) FROM pg_class "
        "WHERE relnamespace = 'app'::regnamespace AND relkind = 'r'").splitlines())
    whole = sum(int(v) for v in sizes.values())
    percent = min(100.0, 100.0 * sample_bytes / max(whole, 1))
    sql = "".join(f"COPY (SELECT * FROM {t} TABLESAMPLE SYSTEM ({percent:.4f}) REPEATABLE (7)) "
                  f"TO STDOUT;\n" for t in sorted(sizes))
    raw = db.run(sql, capture_bytes=True)
    gz = subprocess.run(["gzip", f"-{level}", "-c"], input=raw, capture_output=True, check=True).stdout
    return {"sample_bytes": len(raw), "sample_gzip_bytes": len(gz),
            "sample_gzip_ratio": round(len(raw) / max(len(gz), 1), 2)}


def report_lines(report: dict) -> list[str]:
    rows = ", ".join(f"{k} {v:,}" for k, v in report["rows"].items())
    return [f"database {report['database']}: {report['size_bytes'] / 1e6:,.0f} MB "
            f"(target {report['target_bytes'] / 1e6:,.0f} MB) in {report['total_s']}s "
            f"(pools {report['pools_s']}s, load {report['load_s']}s, indexes {report['index_s']}s, "
            f"vacuum {report['vacuum_s']}s)",
            f"rows: {rows}",
            f"sample: {report['sample_bytes'] / 1e6:.1f} MB of COPY text -> gzip -6 "
            f"{report['sample_gzip_bytes'] / 1e6:.1f} MB, ratio {report['sample_gzip_ratio']}x"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0,
                        help="target pg_database_size in GiB, indexes included (default 1)")
    parser.add_argument("--database-url", metavar="URL",
                        help="fill this existing database instead of a throwaway cluster")
    parser.add_argument("--dbname", default="realistic", help="database created in the throwaway "
                        "cluster (default realistic)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="connections loading at once (default: CPUs)")
    parser.add_argument("--replace", action="store_true", help="drop an existing schema app first")
    parser.add_argument("--refunds", action="store_true",
                        help="add app.refunds, a small table of ~1%% of the data")
    parser.add_argument("--keep", action="store_true",
                        help="keep the throwaway cluster running until Ctrl-C")
    args = parser.parse_args(argv)
    size = int(args.size_gb * GIB)

    if args.database_url:
        host = urlsplit(args.database_url).hostname
        print(f"filling {unquote(urlsplit(args.database_url).path.lstrip('/'))} on {host}", flush=True)
        report = build(Psql.for_url(args.database_url), size, args.workers, replace=args.replace,
                       refunds=args.refunds)
        print("\n".join(report_lines(report)))
        return 0

    import signal
    from l2c_local.pgcluster import PgCluster
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwinds, so the cluster stops
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    with PgCluster() as pg:
        pg.create_database(args.dbname)
        report = build(Psql(pg.bin("psql"), pg.env(), args.dbname), size, args.workers,
                       refunds=args.refunds)
        print("\n".join(report_lines(report)), flush=True)
        if args.keep:
            print(f"kept running: {pg.url(args.dbname)}\nCtrl-C stops it and removes its files.",
                  flush=True)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
