-- Demo shop database for backup, verify and restore tests: three schemas, most column
-- types a real app uses, code objects pg_dump must carry (views, functions, triggers,
-- sequences, a large object), and 120,000 orders whose notes read like text, so a dump
-- compresses like a real one. setseed() makes every run produce the same data.

BEGIN;
SET LOCAL client_min_messages = warning;
SET LOCAL TimeZone = 'UTC';
-- random() is parallel-restricted, but keep it in this backend so setseed() holds.
SET LOCAL max_parallel_workers_per_gather = 0;
-- Seeding is one big batch: JIT compiling it costs more than it saves.
SET LOCAL jit = off;
SET LOCAL work_mem = '64MB';
SELECT setseed(0.42);

CREATE SCHEMA sales;
CREATE SCHEMA audit;
COMMENT ON SCHEMA sales IS '网店 orders and catalogue';

CREATE TYPE sales.order_status AS ENUM
    ('pending', 'paid', 'shipped', 'delivered', 'refunded', 'cancelled');
CREATE DOMAIN sales.amount AS numeric(14, 2) CHECK (VALUE >= 0);

-- Text is built set-based (per-row subqueries made seeding 10x slower): words, then
-- 20,000 phrases of 2-7 words drawn with a skew (random()^2) so common words repeat as in
-- real notes, then each order note joins 2-3 random phrases. The phrase pool is far
-- larger than gzip's 32 KB window, so notes compress like real text, not like a loop.
CREATE TEMP TABLE word ON COMMIT DROP AS
SELECT i::int, w FROM unnest(string_to_array(
  'the a to and of for in on with is was please customer order delivery package box '
  'address phone call back after before today tomorrow morning evening weekend door '
  'floor building office reception leave neighbour ring bell twice not working gate '
  'code fragile handle care glass bottle keep upright cold chain frozen warm gift wrap '
  'card message birthday anniversary wedding invoice company tax number receipt paper '
  'email copy refund return exchange size colour wrong missing damaged late early '
  'courier driver route warehouse stock backorder partial split shipment tracking '
  'label printed scanned sorted loaded dispatched arrived signed photo proof contact '
  'support ticket escalated resolved pending confirm confirmed cancelled changed moved '
  'new old second third first last time window between noon pm am hours minutes days '
  'week month year discount coupon voucher points member loyalty upgrade express '
  'standard economy free shipping fee charge paid cash bank transfer alipay wechat '
  'card declined retry approved hold review fraud check verified identity passport '
  'student teacher nurse shop restaurant hotel hospital school university apartment '
  'flat unit block tower street road avenue lane district city province village north '
  'south east west near opposite next behind inside outside upstairs downstairs lift '
  'stairs parking lot basement garden balcony kitchen dog cat beware quiet baby '
  'sleeping knock softly do not use side entrance main lobby security guard desk '
  'signature required id shown collect pickup point locker station store branch open '
  'closed holiday festival spring autumn rain snow storm traffic delay apologies '
  'thanks thank you kindly sorry urgent asap priority vip repeat buyer first-time '
  'wholesale bulk pallet carton bag envelope small medium large heavy light extra '
  'spare battery charger cable adapter phone case screen laptop headphones tea coffee '
  'rice noodles oil sauce fruit apples oranges mangoes milk yoghurt bread cake '
  'chocolate wine beer water shoes shirt dress jacket scarf hat socks toys books pens '
  'notebook printer ink desk chair lamp sofa bed pillow towel soap shampoo medicine',
  ' ')) WITH ORDINALITY AS u(w, i);

CREATE TEMP TABLE word_zh ON COMMIT DROP AS
SELECT i::int, w FROM unnest(string_to_array(
  '请 放在 门口 谢谢 快递 电话 联系 下午 上午 周末 送货 地址 发票 公司 '
  '礼物 包装 小心 轻放 易碎 退货 换货 尺寸 颜色 已付款 保安 前台 楼下',
  ' ')) WITH ORDINALITY AS u(w, i);

-- The volatile select lists keep these subqueries from being flattened, so random()
-- runs once per generated row.
CREATE TEMP TABLE phrase ON COMMIT DROP AS
SELECT p.n AS i, string_agg(word.w, ' ' ORDER BY p.k) AS text
FROM (SELECT n, k, 1 + floor(random() ^ 2 * (SELECT count(*) FROM word))::int AS pick
      FROM generate_series(1, 20000) n, generate_series(1, 2 + n % 6) k) p
JOIN word ON word.i = p.pick
GROUP BY p.n;

CREATE TEMP TABLE phrase_zh ON COMMIT DROP AS
SELECT p.n AS i, string_agg(word_zh.w, '' ORDER BY p.k) AS text
FROM (SELECT n, k, 1 + floor(random() * (SELECT count(*) FROM word_zh))::int AS pick
      FROM generate_series(1, 2000) n, generate_series(1, 2 + n % 4) k) p
JOIN word_zh ON word_zh.i = p.pick
GROUP BY p.n;

-- Order lines come from a pool too: building jsonb per order was a third of the seeding.
CREATE TEMP TABLE lines_pool ON COMMIT DROP AS
SELECT p.n AS i, jsonb_agg(jsonb_build_object('sku', p.sku, 'qty', p.qty, 'unit_price', p.price)
                           ORDER BY p.k) AS lines
FROM (SELECT n, k,
             'SKU-' || lpad((1 + floor(random() ^ 2 * 500)::int)::text, 5, '0') AS sku,
             1 + floor(random() ^ 3 * 10)::int AS qty,
             round((1 + random() * 300)::numeric, 2) AS price
      FROM generate_series(1, 20000) n, generate_series(1, 1 + n % 3) k) p
GROUP BY p.n;
ANALYZE word, word_zh, phrase, phrase_zh, lines_pool;  -- else the joins below spill to disk

-- ---------------------------------------------------------------------------- public
CREATE TABLE public.app_settings (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);
INSERT INTO public.app_settings (key, value) VALUES
    ('shop.name', '"L2C 示例商店"'),
    ('shop.currencies', '["CNY", "USD", "EUR"]'),
    ('shipping.free_over', '{"CNY": 199, "USD": 35, "EUR": 30}'),
    ('checkout.flags', '{"guest": true, "alipay": true, "wechat_pay": true, "cod": false}');

CREATE TABLE public.customers (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    full_name text NOT NULL,
    email text NOT NULL UNIQUE,
    country char(2) NOT NULL,
    signed_up_at timestamptz NOT NULL,
    last_login_ip inet,
    credit_limit numeric(12, 2) NOT NULL DEFAULT 0,
    tags text[] NOT NULL DEFAULT '{}',
    profile jsonb NOT NULL DEFAULT '{}',
    avatar bytea
);
COMMENT ON TABLE public.customers IS 'Shop customers; 3 in 10 have Chinese names';

INSERT INTO public.customers (full_name, email, country, signed_up_at, last_login_ip,
                              credit_limit, tags, profile, avatar)
SELECT name, email, country, signed_up_at, ip, credit_limit, tags, profile, avatar
FROM (
    SELECT g,
        CASE WHEN zh THEN
            (string_to_array('王 李 张 刘 陈 杨 黄 赵 吴 周 徐 孙 马 朱 胡 郭 何 高 林 罗', ' '))
                [1 + floor(random() * 20)::int]
            || (string_to_array('伟 芳 娜 秀英 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 秀兰 霞', ' '))
                [1 + floor(random() * 20)::int]
        ELSE
            (string_to_array('James Mary Wei Anna Lucas Sofia Chen Emma Noah Olivia Liam Mia '
                             'Hiro Yuki Omar Leila Ivan Nina Pedro Ana', ' '))
                [1 + floor(random() * 20)::int]
            || ' ' ||
            (string_to_array('Smith Müller García Rossi Dubois Kowalski Novak Tanaka Kim Nguyen '
                             'Silva Jensen Ivanova OBrien Schmidt Martin Haddad Costa Berg Okafor', ' '))
                [1 + floor(random() * 20)::int]
        END AS name,
        'user' || g || '.' || substr(md5(random()::text), 1, 6) || '@example.' ||
            (ARRAY['com', 'cn', 'de', 'jp', 'fr'])[1 + g % 5] AS email,
        CASE WHEN zh THEN 'CN' ELSE (ARRAY['US', 'DE', 'FR', 'JP', 'GB', 'BR', 'KR', 'IT'])
            [1 + floor(random() * 8)::int] END AS country,
        timestamptz '2019-01-01 00:00:00+00' + random() * interval '1800 days' AS signed_up_at,
        CASE WHEN random() < 0.9 THEN
            ('10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.'
             || floor(random() * 256)::int)::inet END AS ip,
        round((random() * 20000)::numeric, 2) AS credit_limit,
        -- "0 * g" ties the subquery to the row, so each customer draws its own tags.
        (ARRAY(SELECT t FROM unnest(ARRAY['vip', 'wholesale', 'newsletter', 'b2b', '回头客'])
               AS t WHERE random() < 0.25 + 0 * g)) AS tags,
        jsonb_build_object('tier', (ARRAY['bronze', 'silver', 'gold'])[1 + g % 3],
                           'newsletter', random() < 0.4,
                           'langs', CASE WHEN zh THEN '["zh", "en"]'::jsonb ELSE '["en"]' END,
                           'points', floor(random() * 5000)::int) AS profile,
        CASE WHEN g % 4 = 0 THEN decode(md5(g::text || random()) || md5(random()::text), 'hex')
        END AS avatar
    FROM (SELECT g, random() < 0.3 AS zh FROM generate_series(1, 3000) g) s
) c;

CREATE TABLE public.documents (
    id serial PRIMARY KEY,
    title text NOT NULL,
    content_type text NOT NULL,
    body_oid oid NOT NULL
);
-- Fixed large object OIDs (0 would let the server pick), so every seed is identical.
INSERT INTO public.documents (title, content_type, body_oid) VALUES
    ('服务条款 / Terms of service', 'text/plain',
     lo_from_bytea(900001, convert_to(
         repeat('本条款适用于所有订单。Orders are binding once paid. ', 40), 'UTF8'))),
    ('Warehouse floor plan', 'application/octet-stream',
     lo_from_bytea(900002, (SELECT string_agg(decode(md5(i::text || random()), 'hex'), ''::bytea)
                       FROM generate_series(1, 4096) i)));

CREATE FUNCTION public.slugify(title text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT trim(both '-' from regexp_replace(lower(title), '[^a-z0-9]+', '-', 'g'))
$$;

-- ----------------------------------------------------------------------------- sales
CREATE TABLE sales.products (
    id serial PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    title text NOT NULL,
    title_zh text,
    price sales.amount NOT NULL,
    weight_kg real,
    dims_mm integer[],
    attrs jsonb NOT NULL DEFAULT '{}',
    active boolean NOT NULL DEFAULT true
);
INSERT INTO sales.products (sku, title, title_zh, price, weight_kg, dims_mm, attrs, active)
SELECT 'SKU-' || lpad(g::text, 5, '0'),
       initcap(phrase.text) || ' ' || g,
       CASE WHEN g % 2 = 0 THEN phrase_zh.text END,
       round((1 + random() * 999)::numeric, 2),
       round((random() * 30)::numeric, 3)::real,
       ARRAY[floor(random() * 800)::int, floor(random() * 600)::int, floor(random() * 400)::int],
       jsonb_build_object('colour', (ARRAY['red', 'black', 'white', '蓝色', 'green'])[1 + g % 5],
                          'warranty_months', (ARRAY[0, 6, 12, 24])[1 + g % 4],
                          'fragile', g % 7 = 0),
       g % 17 <> 0
FROM generate_series(1, 500) g
JOIN phrase ON phrase.i = 1 + g * 37 % 20000
JOIN phrase_zh ON phrase_zh.i = 1 + g * 13 % 2000
ORDER BY g;

CREATE SEQUENCE sales.order_no_seq START 100000;
CREATE SEQUENCE sales.invoice_no_seq START 1 INCREMENT 1 CACHE 1;

CREATE TABLE sales.orders (
    id bigint PRIMARY KEY DEFAULT nextval('sales.order_no_seq'),
    customer_id integer NOT NULL,
    status sales.order_status NOT NULL DEFAULT 'pending',
    ordered_at timestamptz NOT NULL,
    delivered_in interval,
    currency char(3) NOT NULL DEFAULT 'CNY',
    total sales.amount NOT NULL,
    tracking_code text,
    note text,
    lines jsonb NOT NULL
);
ALTER SEQUENCE sales.order_no_seq OWNED BY sales.orders.id;

-- The big table. ORDER BY g hands out order ids in ordered_at order, the same every run.
INSERT INTO sales.orders (customer_id, status, ordered_at, delivered_in, currency, total,
                          tracking_code, note, lines)
SELECT customer_id, status, ordered_at, delivered_in, currency, total, tracking_code,
       CASE WHEN has_note THEN
           a.text || ', ' || b.text || coalesce('. ' || c.text, '')
               || coalesce(' ' || zh.text, '')
       END,
       l.lines
FROM (
    SELECT g,
        1 + floor(random() ^ 1.5 * 3000)::int AS customer_id,
        ('{pending,paid,shipped,delivered,refunded,cancelled}'::sales.order_status[])
            [1 + floor(random() * 6)::int] AS status,
        timestamptz '2022-01-01 00:00:00+00' + g * interval '7 minutes'
            + random() * interval '5 minutes' AS ordered_at,
        CASE WHEN random() < 0.7 THEN random() * interval '6 days' END AS delivered_in,
        (ARRAY['CNY', 'CNY', 'CNY', 'USD', 'EUR'])[1 + floor(random() * 5)::int] AS currency,
        round((5 + random() ^ 2 * 3000)::numeric, 2) AS total,
        CASE WHEN random() < 0.8 THEN (ARRAY['SF', 'YT', 'ZTO', 'JD', 'DHL'])[1 + g % 5]
            || upper(substr(md5(random()::text), 1, 12)) END AS tracking_code,
        random() < 0.85 AS has_note,
        1 + floor(random() * 20000)::int AS a,
        1 + floor(random() * 20000)::int AS b,
        CASE WHEN random() < 0.5 THEN 1 + floor(random() * 20000)::int END AS c,
        CASE WHEN g % 9 = 0 THEN 1 + floor(random() * 2000)::int END AS zh,
        1 + floor(random() * 20000)::int AS l
    FROM generate_series(1, 120000) g
) o
JOIN phrase a ON a.i = o.a
JOIN phrase b ON b.i = o.b
LEFT JOIN phrase c ON c.i = o.c
LEFT JOIN phrase_zh zh ON zh.i = o.zh
JOIN lines_pool l ON l.i = o.l
ORDER BY g;

ALTER TABLE sales.orders
    ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES public.customers (id);
CREATE INDEX orders_customer_idx ON sales.orders (customer_id, ordered_at);
CREATE INDEX products_attrs_idx ON sales.products USING gin (attrs);

CREATE TABLE sales.invoices (
    invoice_no bigint PRIMARY KEY DEFAULT nextval('sales.invoice_no_seq'),
    order_id bigint NOT NULL REFERENCES sales.orders (id),
    issued_on date NOT NULL,
    company_name text,
    tax_id text,
    amount sales.amount NOT NULL,
    pdf bytea
);
INSERT INTO sales.invoices (order_id, issued_on, company_name, tax_id, amount, pdf)
SELECT o.id, o.ordered_at::date + 1,
       CASE WHEN o.id % 3 = 0 THEN '上海示例贸易有限公司' ELSE 'Example Trading GmbH' END,
       '91310000' || upper(substr(md5(o.id::text), 1, 10)),
       o.total,
       decode('255044462d312e340a' || md5(o.id::text || random()), 'hex')  -- "%PDF-1.4\n" + bytes
FROM sales.orders o WHERE o.id % 40 = 0;

CREATE VIEW sales.order_summary AS
SELECT o.id, o.ordered_at, o.status, c.full_name, c.country, o.total, o.currency,
       jsonb_array_length(o.lines) AS line_count
FROM sales.orders o JOIN public.customers c ON c.id = o.customer_id;

CREATE MATERIALIZED VIEW sales.monthly_revenue AS
SELECT date_trunc('month', ordered_at) AS month, currency, count(*) AS orders, sum(total) AS revenue
FROM sales.orders WHERE status NOT IN ('refunded', 'cancelled')
GROUP BY 1, 2;

CREATE FUNCTION sales.customer_lifetime_value(customer integer) RETURNS numeric
LANGUAGE plpgsql STABLE AS $$
DECLARE
    result numeric;
BEGIN
    SELECT coalesce(sum(total), 0) INTO result FROM sales.orders
    WHERE customer_id = customer AND status NOT IN ('refunded', 'cancelled');
    RETURN result;
END
$$;

-- ----------------------------------------------------------------------------- audit
CREATE TABLE audit.events (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    op char(1) NOT NULL CHECK (op IN ('I', 'U', 'D')),
    row_id bigint,
    old_row jsonb,
    new_row jsonb,
    at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION audit.record_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.events (table_name, op, row_id, old_row, new_row)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, left(TG_OP, 1),
            CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END
$$;

-- Created after the bulk load, so only the changes below are audited.
CREATE TRIGGER orders_audit AFTER INSERT OR UPDATE OR DELETE ON sales.orders
    FOR EACH ROW EXECUTE FUNCTION audit.record_change();

UPDATE sales.orders SET status = 'refunded', note = coalesce(note, '') || ' 已退款'
WHERE id % 997 = 0;
DELETE FROM sales.orders WHERE id % 4999 = 1 AND id NOT IN (SELECT order_id FROM sales.invoices);
INSERT INTO sales.orders (customer_id, ordered_at, total, note, lines)
VALUES (1, '2024-06-18 12:00:00+08', 618.00, '618 大促 order, 请尽快发货',
        '[{"sku": "SKU-00001", "qty": 2, "unit_price": 309.00}]');

UPDATE audit.events SET at = '2024-06-18 12:00:00+08';  -- now() would differ per seed
SELECT setval('sales.invoice_no_seq', (SELECT max(invoice_no) FROM sales.invoices));
REFRESH MATERIALIZED VIEW sales.monthly_revenue;
COMMIT;
