"""The status page: the report `status` computes (status.full_report), drawn as one
self-contained HTML page for people who want a glance, not a table.

One file and nothing else: no script, font, stylesheet or image is fetched (the page's
Content-Security-Policy forbids it, so a browser would refuse one added by mistake);
the timelines are inline SVG drawn here. It is a view, never a second computation: every
figure comes from the report.

The hourly watchdog writes it to `<prefix>status/index.html` as a private object, and
`l2c-backup status --url` prints a signed URL to it; `status --html FILE` writes it
anywhere. What it shows must be safe for whoever holds that link: every text passes
through one function (`_text`) that redacts registered secrets, hides the database's
host, port, user and password and the OSS endpoint (`private_scrub`, history.one_line)
and escapes HTML. Bucket names and object
keys are shown: they are what an operator restores from.

Labels are Chinese and English, like the alerts; times are UTC+8, as the team reads
backup names. It reads on a phone (one column, charts stretched to the width) and on a
laptop (cards side by side); with no backups yet every section says so plainly.
"""
import html
import logging
from datetime import datetime, timedelta, timezone

from . import bounded, history
from .alerts import _duration, _size
from .database import DatabaseSettings
from .errors import L2CError

log = logging.getLogger(__name__)

PAGE = "status/index.html"
CONTENT_TYPE = "text/html; charset=utf-8"
# A custom domain shows it inline; OSS's default domain downloads web pages regardless
# (the downloaded file opens the same: it is self-contained).
DISPOSITION = 'inline; filename="l2c-backup-status.html"'
UTC8 = timezone(timedelta(hours=8))
KIND_LABELS = {"daily": "每日 daily", "weekly": "每周 weekly", "manual": "手动 manual"}
LOCATION_LABELS = {"primary": "主 primary", "dr": "异地 DR", "mirror": "本地 mirror"}
CHART_W, CHART_H, BARS_BOTTOM = 900, 100, 74  # the SVG's own units; CSS stretches it


def page_key(prefix):
    return f"{prefix}{PAGE}"


def private_scrub(environ, oss=None):
    """What the page must never show, as history.one_line's `scrub`: the hosts, ports,
    users and passwords of DATABASE_URL and DRILL_DATABASE_URL (or the PG* variables),
    and the OSS endpoint of `oss` (OSSSettings)."""
    pairs = list(history.scrub_of(oss=oss)) if oss else []
    for name in ("DATABASE_URL", "DRILL_DATABASE_URL"):
        if name != "DATABASE_URL" and not environ.get(name):
            continue
        try:
            db = DatabaseSettings.from_url(environ.get(name) or None, environ, name)
        except L2CError:
            continue
        pairs += history.scrub_of(database=db)
        if db.password:
            pairs.append(db.password)
    return tuple(pairs)


class Page:
    def __init__(self, report, scrub=()):
        self.r = report
        self.scrub = tuple(scrub)
        self.now = datetime.fromisoformat(report["generated_at"]).timestamp()

    def _text(self, value):
        """Every text on the page: one line, secrets redacted, the database and endpoint
        hidden (history.one_line), HTML escaped."""
        return html.escape(history.one_line(value, self.scrub))

    def render(self):
        r = self.r
        body = "".join([self.header(), self.kinds(), self.timelines(), self.failures(),
                        self.copies(), self.drill(), self.cost(), self.footer()])
        return (
            '<!doctype html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">"
            '<meta name="generator" content="l2c-backup">'
            f"<title>L2C 备份状态 · Backup status · {self._text(_local(r['generated_at']))}</title>"
            f"<style>{STYLE}</style></head><body><main>{body}</main></body></html>\n")

    def header(self):
        r = self.r
        ok = r["compliant"]
        verdict = ("✔ 合规 · 3-2-1 compliant, every kind within its RPO" if ok
                   else "✘ 不合规 · Not compliant")
        problems = r["rpo_problems"] + [
            f"{loc['name']}: {loc['error']}" for loc in r["locations"] if loc["error"]]
        items = "".join(f"<li>{self._text(p)}</li>" for p in problems)
        return ('<header data-measure="header"><h1>L2C <b data-measure="title-zh">备份状态</b> '
                '<span>Backup status</span></h1>'
                f'<p id="verdict" class="verdict {"ok" if ok else "bad"}">{verdict}</p>'
                + (f'<ul class="problems">{items}</ul>' if items else "")
                + f'<p class="muted">生成于 Generated <time id="generated-at" datetime="'
                f'{self._text(r["generated_at"])}">{self._text(_local(r["generated_at"]))}</time>'
                f' · {self._text(r["locations"][0]["url"])}</p></header>')

    def kinds(self):
        cards = []
        for kind, k in self.r["kinds"].items():
            late = k.get("late")
            badge = '<span class="badge late">⚠ 逾期 late</span>' if late else ""
            if k["newest"] is None:
                facts = '<p class="empty">还没有备份 · No backups yet</p>'
            else:
                rpo = k["rpo_hours"]
                meter = ""
                if rpo:
                    share = min(k["age_hours"] / rpo, 1.5) / 1.5 * 100
                    meter = (f'<div class="meter" role="img" aria-label="age {k["age_hours"]:.1f} h of '
                             f'{rpo:.0f} h"><i class="{"over" if late else ""}" style="width:{share:.0f}%">'
                             f'</i><b style="left:{100 / 1.5:.0f}%"></b></div>')
                facts = (
                    f'<dl><dt>最新 Newest</dt><dd class="key">{self._text(k["newest"])}</dd>'
                    f'<dt>距今 Age</dt><dd class="age">{k["age_hours"]:.1f} h'
                    + (f' / RPO {rpo:.0f} h' if rpo else "") + f'</dd>'
                    f'<dt>校验 Verify</dt><dd>{_verdict(k["newest_verdict"])}</dd>'
                    f'<dt>保留 Kept</dt><dd class="kept">{k["count"]} / {k["keep"]}</dd>'
                    f'<dt>总大小 Total</dt><dd>{_size(k["bytes"])}</dd></dl>{meter}')
            cards.append(f'<article class="card kind{" late" if late else ""}" data-kind="{kind}" '
                         f'data-measure="kind-{kind}">'
                         f"<h2>{KIND_LABELS.get(kind, kind)} {badge}</h2>{facts}</article>")
        return f'<section id="kinds" class="grid" data-measure="kinds">{"".join(cards)}</section>'

    def timelines(self):
        days = self.r["window_days"]
        charts = [self.chart(t) for t in self.r["timelines"] if t["backups"] or t["gaps"]]
        if not charts:
            inner = f'<p class="empty">还没有数据 · No backups in the last {days} days yet</p>'
        else:
            start = self.now - days * 86400
            inner = "".join(charts) + (
                f'<p class="legend"><i class="ok"></i>已校验 verified <i class="failed"></i>校验失败 '
                f'failed <i class="unverified"></i>未校验 unverified <i class="late"></i>迟到 late '
                f'<i class="pruned"></i>已清理 pruned <i class="gap"></i>缺口 gap (&gt; RPO) '
                f'<i class="attempt"></i>失败的备份 failed '
                f'run · 柱高 bar = 大小 size, 下方 below = 耗时 duration · '
                f'{_day(start)} – {_day(self.now)}</p>')
        return (f'<section id="timelines" data-measure="timelines"><h2>备份时间线 · Backups, last '
                f"{days} days</h2>{inner}</section>")

    def chart(self, t):
        start, span = self.now - self.r["window_days"] * 86400, self.r["window_days"] * 86400

        def x(ts):
            return max(0.0, min(CHART_W, (ts - start) / span * CHART_W))

        big = max((b["bytes"] for b in t["backups"]), default=1) or 1
        slow = max((b["seconds"] or 0 for b in t["backups"]), default=0) or 1
        width = max(CHART_W / self.r["window_days"] * (0.6 if t["kind"] == "daily" else 2), 3)
        shapes = [f'<rect class="gap{" open" if g["open"] else ""}" x="{x(g["from"]):.1f}" y="0" '
                  f'width="{max(x(g["to"]) - x(g["from"]), 1):.1f}" height="{CHART_H}"><title>'
                  f'缺口 gap {_local_ts(g["from"])} – {"now" if g["open"] else _local_ts(g["to"])}'
                  f"</title></rect>" for g in t["gaps"]]
        for b in t["backups"]:
            height = 8 + (BARS_BOTTOM - 12) * b["bytes"] / big
            seconds = b["seconds"] or 0
            tip = self._text(f'{b["key"]} · {_local_ts(b["finished_at"])} · {_size(b["bytes"])} · '
                             f'{_duration(seconds) if b["seconds"] is not None else "-"} · '
                             f'{b["verdict"]}{" · late" if b["late"] else ""}'
                             f'{" · 已清理 pruned" if b["pruned"] else ""}')
            left = x(b["finished_at"]) - width / 2
            shapes.append(
                f'<rect class="backup {b["verdict"]}{" late" if b["late"] else ""}'
                f'{" pruned" if b["pruned"] else ""}" '
                f'x="{left:.1f}" y="{BARS_BOTTOM - height:.1f}" width="{width:.1f}" '
                f'height="{height:.1f}"><title>{tip}</title></rect>'
                f'<rect class="duration" x="{left:.1f}" y="{CHART_H - 2 - 18 * seconds / slow:.1f}" '
                f'width="{width:.1f}" height="{18 * seconds / slow + 1:.1f}"><title>{tip}</title></rect>')
        for f in self._failures_of(t):
            at = _ts(f["at"])
            if at >= start:
                shapes.append(f'<rect class="attempt" x="{x(at) - 2:.1f}" y="0" width="4" '
                              f'height="{CHART_H}"><title>{self._text(_local(f["at"]) + " " + f.get("error", ""))}'
                              "</title></rect>")
        label = KIND_LABELS.get(t["kind"], t["kind"]) + (f' · {t["database"]}' if t["database"] else "")
        return (f'<figure class="timeline" data-kind="{t["kind"]}" data-database="{self._text(t["database"])}">'
                f'<figcaption>{self._text(label)} <span class="muted">{len(t["backups"])} 个 backups'
                f'{", 最大 largest " + _size(big) if t["backups"] else ""}</span></figcaption>'
                f'<svg viewBox="0 0 {CHART_W} {CHART_H}" preserveAspectRatio="none" role="img" '
                f'aria-label="{self._text(label)}">'
                f'<rect class="frame" x="0" y="0" width="{CHART_W}" height="{CHART_H}"/>'
                f'{"".join(shapes)}</svg></figure>')

    def _failures_of(self, t):
        return [f for f in self.r["backup_failures"]
                if f.get("kind") == t["kind"] and (f.get("database") or "") == t["database"]]

    def failures(self):
        rows = [(f.get("at", ""), f.get("kind", ""), f.get("database", ""),
                 f'备份失败 backup failed: {f.get("error", "")} (exit {f.get("exit_code", "?")}): '
                 f'{f.get("message", "")}', "run") for f in self.r["backup_failures"]]
        rows += [(datetime.fromtimestamp(v["finished_at"], timezone.utc).isoformat(), v["kind"],
                  v["database"], f'校验失败 verify failed: {v["key"]}', "verify")
                 for v in self.r["failed_verifications"]]
        rows += [(d.get("at", ""), d.get("kind", ""), "", "演练失败 drill failed: "
                  + "; ".join(d.get("failures") or []), "drill")
                 for d in self.r["drills"] if not d.get("ok")]
        rows.sort(key=lambda row: row[0], reverse=True)
        items = "".join(
            f'<li class="failure {what}" data-kind="{self._text(kind)}"><time>{self._text(_local(at))}</time> '
            f'<b>{self._text(KIND_LABELS.get(kind, kind))}{" · " + self._text(db) if db else ""}</b> '
            f"{self._text(text)}</li>" for at, kind, db, text, what in rows)
        body = f'<ul id="failure-list">{items}</ul>' if items else \
            '<p class="empty">没有失败 · No failures</p>'
        return (f'<section id="failures" data-measure="failures"><h2>失败 · Failures, last '
                f'{self.r["window_days"]} days ({len(rows)})</h2>{body}</section>')

    def copies(self):
        where = [loc["name"] for loc in self.r["locations"]]
        cards = []
        for c in self.r["three_two_one"]:
            chips = "".join(
                f'<li class="{"yes" if n in c["copies"] else "no"}" data-location="{n}">'
                f'{LOCATION_LABELS.get(n, n)} {"✔" if n in c["copies"] else "✘ 缺 missing"}</li>'
                for n in where)
            whole = len(c["copies"]) >= 3 and len(c["media"]) >= 2 and c["offsite"]
            cards.append(
                f'<article class="card copy {"whole" if whole else "short"}" data-kind="{c["kind"]}">'
                f'<h3>{KIND_LABELS.get(c["kind"], c["kind"])} {"✔" if whole else "✘"}</h3>'
                f'<p class="key">{self._text(c["key"])}</p><ul class="chips">{chips}</ul>'
                f'<p class="muted">副本 copies {len(c["copies"])}/3 · 介质 media {len(c["media"])}/2 · '
                f'异地 off-site {"✔" if c["offsite"] else "✘"}</p></article>')
        body = (f'<div class="grid">{"".join(cards)}</div>' if cards
                else '<p class="empty">还没有备份 · No backups yet</p>')
        unread = "".join(f'<p class="bad">{LOCATION_LABELS.get(loc["name"], loc["name"])}: '
                         f'{self._text(loc["error"])}</p>' for loc in self.r["locations"] if loc["error"])
        return (f'<section id="copies" data-measure="copies"><h2>3-2-1 副本 · Copies of the newest '
                f"backups</h2>{body}{unread}</section>")

    def drill(self):
        d, rto = self.r["last_drill"], self.r["rto_seconds"]
        if not d:
            body = ('<p class="empty">还没有演练记录 · No drill recorded yet (the monthly drill '
                    f"restores the newest verified backup; RTO {rto / 3600:g} h)</p>")
        else:
            seconds, limit = d.get("restore_seconds"), d.get("rto_seconds") or rto
            share = min((seconds or 0) / limit, 1) * 100 if limit else 0
            body = (f'<p class="{"ok" if d.get("ok") else "bad"}" id="drill-verdict">'
                    f'{"✔ 通过 passed" if d.get("ok") else "✘ 失败 failed"} · '
                    f'{self._text(_local(d.get("at", "")))} · {self._text(d.get("key", "-"))}</p>'
                    f'<p>恢复用时 Restore time <b id="restore-time">'
                    f'{_duration(seconds) if seconds is not None else "-"}</b> / RTO {limit / 3600:g} h'
                    f'</p><div class="meter" role="img" aria-label="restore time against the RTO">'
                    f'<i class="{"" if d.get("ok") else "over"}" style="width:{share:.1f}%"></i></div>'
                    + "".join(f'<p class="bad">{self._text(f)}</p>' for f in d.get("failures") or []))
        return (f'<section id="drill" class="card" data-measure="drill"><h2>恢复演练 · Last restore '
                f"drill (RTO)</h2>{body}</section>")

    def cost(self):
        oss, fc = self.r["monthly_cost_cny"], self.r["monthly_fc_cost_cny"]
        return (f'<section id="cost" class="card" data-measure="cost"><h2>每月费用 · Monthly cost '
                f'(estimate)</h2><p class="big" id="cost-total">CNY {oss["total"] + fc["total"]:.2f}'
                f'</p><dl><dt>OSS 存储 storage</dt><dd id="cost-oss">CNY {oss["total"]:.2f} (标准 '
                f'standard {oss["standard"]:.2f}, 低频 IA {oss["ia"]:.2f}, 归档 archive '
                f'{oss["archive"]:.2f}, 跨区域复制 replication {oss["crr_traffic"]:.2f})</dd>'
                f'<dt>函数计算 FC</dt><dd id="cost-fc">CNY {fc["total"]:.2f} (每日 daily '
                f'{fc["daily"]:.2f}, 每周 weekly {fc["weekly"]:.2f})</dd></dl></section>')

    def footer(self):
        return ('<footer class="muted">l2c-backup status · 由 watchdog 每小时生成 written hourly '
                "by the watchdog · 不含密钥 no secrets, no database host · "
                f'<time>{self._text(self.r["generated_at"])}</time></footer>')


def render(report, scrub=()):
    """The page of a status report (status.full_report), as text; `scrub`: private_scrub."""
    return Page(report, scrub).render()


def publish(storage, report, scrub=()):
    """Writes the page to `<prefix>status/index.html`, private (put_bytes never grants
    public read), replacing the last one. Returns the key."""
    key = page_key(storage.prefix)
    storage.put_bytes(key, render(report, scrub).encode(), content_type=CONTENT_TYPE,
                      content_disposition=DISPOSITION)
    return key


def refresh(environ, storage, oss, backups, credentials=None, seconds=None):
    """The watchdog's page: the full report of `storage` (its survey `backups` already
    made; the DR bucket and the mirror's report added) published within `seconds`.
    Returns {"key"} or {"error": what kept it from being written}; never raises: a page
    not written in time is a warning, never the watchdog's failure (nor an invocation FC
    kills at its timeout, which would page the team): the RPO check matters more."""
    from .status import full_report, locations

    def work():
        locs = locations(environ, credentials=credentials, primary_backups=backups)
        return publish(storage, full_report(environ, storage, locs), private_scrub(environ, oss))

    outcome = bounded.within(work, seconds, "l2c-status-page")
    if outcome.done and outcome.error is None:
        return {"key": outcome.result}
    err = outcome.error
    reason = (f"not written within {seconds:.0f} s (the function's timeout)" if not outcome.done
              else str(err.args[0]) if isinstance(err, L2CError) and err.args
              else f"{type(err).__name__}: {err}")
    log.warning("the status page was not written: %s", reason)
    return {"error": reason}


def _ts(iso):
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _local_ts(ts):
    return datetime.fromtimestamp(ts, UTC8).strftime("%Y-%m-%d %H:%M")


def _local(iso):
    """An ISO time as the team reads it: UTC+8, to the minute."""
    return f"{_local_ts(_ts(iso))} UTC+8" if iso else "-"


def _day(ts):
    return datetime.fromtimestamp(ts, UTC8).strftime("%Y-%m-%d")


def _verdict(verdict):
    return {"ok": '<span class="ok">✔ 已校验 ok</span>', "failed": '<span class="bad">✘ 失败 failed</span>'
            }.get(verdict, f'<span class="muted">{html.escape(str(verdict))}</span>')


STYLE = """
:root{--ok:#15803d;--bad:#b91c1c;--late:#b45309;--muted:#6b7280;--line:#e5e7eb;--bg:#f8fafc;
--card:#fff;--fg:#111827;font-family:system-ui,-apple-system,"Segoe UI","PingFang SC",
"Microsoft YaHei","WenQuanYi Micro Hei","Noto Sans CJK SC",sans-serif}
@media (prefers-color-scheme:dark){:root{--bg:#0f172a;--card:#1e293b;--fg:#e5e7eb;--line:#334155}}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);line-height:1.45}
main{max-width:72rem;margin:0 auto;padding:1rem}h1{font-size:1.5rem;margin:.2rem 0}
h1 span,.muted{color:var(--muted);font-weight:normal}h1 b{font-weight:inherit}h2{font-size:1.05rem;margin:.2rem 0 .6rem}
section{margin:1.2rem 0}.grid{display:grid;gap:.8rem;grid-template-columns:repeat(auto-fit,minmax(min(100%,19rem),1fr))}
.card{background:var(--card);border:1px solid var(--line);border-radius:.6rem;padding:.8rem 1rem}
.kind.late{border-color:var(--late);box-shadow:0 0 0 2px var(--late) inset}
.badge{font-size:.8rem;padding:.1rem .45rem;border-radius:1rem;color:#fff;background:var(--late)}
dl{display:grid;grid-template-columns:auto 1fr;gap:.15rem .8rem;margin:0}dt{color:var(--muted)}
dd{margin:0;min-width:0;overflow-wrap:anywhere}.key{font-family:ui-monospace,monospace;font-size:.85em;overflow-wrap:anywhere}
.verdict{font-weight:600;font-size:1.1rem}.ok{color:var(--ok)}.bad{color:var(--bad)}
.problems{color:var(--bad);padding-left:1.2rem}.empty{color:var(--muted);font-style:italic}
.meter{position:relative;height:.5rem;background:var(--line);border-radius:.25rem;margin-top:.6rem}
.meter i{display:block;height:100%;background:var(--ok);border-radius:.25rem}.meter i.over{background:var(--bad)}
.meter b{position:absolute;top:-.2rem;bottom:-.2rem;width:2px;background:var(--fg)}
figure{margin:0 0 1rem;background:var(--card);border:1px solid var(--line);border-radius:.6rem;padding:.6rem}
figcaption{font-weight:600;margin-bottom:.3rem}svg{display:block;width:100%;height:6.5rem}
.frame{fill:none;stroke:var(--line);vector-effect:non-scaling-stroke}
.backup.ok{fill:var(--ok)}.backup.failed{fill:var(--bad)}.backup.unverified{fill:#9ca3af}
.backup.late{fill:var(--late)}.backup.pruned{opacity:.45}.duration{fill:#64748b}.gap{fill:rgba(185,28,28,.13)}
.gap.open{fill:rgba(185,28,28,.28)}.attempt{fill:var(--bad)}
.legend{font-size:.85rem;color:var(--muted)}.legend i{display:inline-block;width:.8rem;height:.8rem;
margin:0 .2rem 0 .6rem;vertical-align:-.1rem;border-radius:2px}.legend i.ok{background:var(--ok)}
.legend i.failed,.legend i.attempt{background:var(--bad)}.legend i.unverified{background:#9ca3af}
.legend i.late{background:var(--late)}.legend i.pruned{background:var(--ok);opacity:.45}.legend i.gap{background:rgba(185,28,28,.2)}
#failure-list{padding-left:1.1rem}#failure-list li{margin:.3rem 0;overflow-wrap:anywhere}
#failure-list time{color:var(--muted);font-size:.9em}
h3{font-size:1rem;margin:0 0 .3rem}.chips{list-style:none;padding:0;margin:.4rem 0;display:flex;flex-wrap:wrap;gap:.4rem}
.chips li{border:1px solid var(--line);border-radius:1rem;padding:.1rem .6rem}.chips .yes{color:var(--ok)}
.chips .no{color:var(--bad);border-color:var(--bad);font-weight:600}.copy.short{border-color:var(--bad)}
.big{font-size:1.8rem;font-weight:700;margin:.2rem 0}#drill,#cost{display:block}
footer{font-size:.8rem;margin:2rem 0 1rem}
@media (min-width:52rem){#drill,#cost{display:inline-block;width:calc(50% - .45rem);vertical-align:top}
#drill{margin-right:.8rem}}
"""
