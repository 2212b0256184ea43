#!/usr/bin/env python3
"""Measurement rounds and report of the gateway load benchmark.

Run by bench/gateway.sh once the mock upstream, the floor proxy and the two
gateways (ledger durability `sync` and `batched`) are up; standard library
only. It drives
the load generator (oha, pinned to core 0 like the mock), reads the
gateways' CPU time and memory from /proc, times streams itself, prints the
summary and writes it into the `## Gateway` section of BENCHMARKS.md
(between the generated-block markers; text after them is kept).

Rounds are interleaved: every repetition runs direct, floor, sync, batched in
turn (the order rotates each repetition), so noise from other work on the
machine hits every target alike.

The floor (bench/floor-proxy) is a pass-through proxy on the gateway's own
stack that parses and decides nothing. A proxy's CPU per request falls as its
load rises (wake-ups and syscalls are shared by more requests), so besides its
own closed-loop round each repetition also runs the floor paced at each
gateway's closed-loop rate of that repetition: the gateway's own work per
request is its CPU per request minus the floor's at the same rate.
"""

import argparse
import datetime
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_NAMES = ("direct", "floor", "sync", "batched")
PROXIES = ("floor", "sync", "batched")  # pinned to core 1, measured from /proc
GATEWAYS = ("sync", "batched")
BEGIN = "<!-- bench/gateway.sh: generated block begins -->"
END = "<!-- bench/gateway.sh: generated block ends -->"

# Targets, for comparison (never adjusted to fit the figures).
T_CPU_MS = 0.1
T_RPS = 10_000
T_P50_MS = 0.2
T_P99_MS = 1.0
T_TTFT_MS = 0.5
T_RSS_MB = 64


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return int(fields[11]) + int(fields[12])


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return None


def ctx_and_faults(pid):
    """Context switches summed over the live threads, and the process's minor faults."""
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except FileNotFoundError:
            pass
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    minflt = int(text[text.rindex(")") + 2 :].split()[7])  # field 10
    return switches, minflt


def core_busy():
    """Per-core (busy, total) jiffies for cpu0 and cpu1 from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out[int(m.group(1))] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def busy_pct(before, after, core):
    b = after[core][0] - before[core][0]
    t = after[core][1] - before[core][1]
    return 100.0 * b / t if t else 0.0


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.pids = {"sync": args.sync_pid, "batched": args.batched_pid, "floor": args.floor_pid,
                     "mock": args.mock_pid}
        self.urls = {
            "direct": args.direct_url.rstrip("/") + "/chat/completions",
            "floor": args.floor_url.rstrip("/") + "/chat/completions",
            "sync": args.sync_url.rstrip("/") + "/chat/completions",
            "batched": args.batched_url.rstrip("/") + "/chat/completions",
        }
        self.key = args.key
        self.sent = {g: args.probes for g in GATEWAYS}  # requests sent to each gateway
        self.results = {"rounds": []}

    # ---- requests ------------------------------------------------------
    def body(self, stream):
        doc = {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "content": "Hello! How do I reset the password of my account?"}
            ],
            "max_tokens": 32,
        }
        if stream:
            doc["stream"] = True
            doc["stream_options"] = {"include_usage": True}
        return json.dumps(doc, separators=(",", ":"))

    def headers(self):
        # Sent to the mock too, so both paths carry the same request bytes.
        return {
            "Authorization": f"Bearer {self.key}",
            "Content-Type": "application/json",
            "x-tollgate-tag-ticket": "T-1",
        }

    def oha(self, target, extra, label):
        path = os.path.join(self.out, f"{label}.json")
        cmd = ["taskset", "-c", "0", self.args.oha, "--no-tui", "--output-format", "json",
               "-m", "POST", "-d", self.body(False)]
        for k, v in self.headers().items():
            cmd += ["-H", f"{k}: {v}"]
        cmd += extra + [self.urls[target]]
        with open(path, "w") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.DEVNULL, check=True)
        with open(path) as f:
            doc = json.load(f)
        codes = {str(k): v for k, v in doc.get("statusCodeDistribution", {}).items()}
        ok = codes.get("200", 0)
        total = sum(codes.values())
        errors = sum(doc.get("errorDistribution", {}).values())
        if target in GATEWAYS:
            self.sent[target] += total
        return doc, ok, total - ok + errors

    # ---- phases --------------------------------------------------------
    def order(self, rep):
        names = list(TARGET_NAMES)
        k = rep % len(names)
        return names[k:] + names[:k]

    def idle_cpu(self, seconds=5.0):
        before = {g: cpu_ticks(self.pids[g]) for g in GATEWAYS}
        time.sleep(seconds)
        after = {g: cpu_ticks(self.pids[g]) for g in GATEWAYS}
        return {g: (after[g] - before[g]) / CLK_TCK / seconds * 1000 for g in GATEWAYS}  # ms/s

    def measured(self, target, label, extra, kind, rep):
        pid = self.pids.get(target)
        c0 = core_busy()
        g0 = cpu_ticks(pid) if pid else None
        x0 = ctx_and_faults(pid) if pid else None
        m0 = cpu_ticks(self.pids["mock"])
        t0 = time.monotonic()
        doc, ok, bad = self.oha(target, extra, label)
        wall = time.monotonic() - t0
        g1 = cpu_ticks(pid) if pid else None
        x1 = ctx_and_faults(pid) if pid else None
        m1 = cpu_ticks(self.pids["mock"])
        c1 = core_busy()
        lp = doc.get("latencyPercentiles", {})
        row = {
            "kind": kind,
            "rep": rep,
            "target": target,
            "ok": ok,
            "bad": bad,
            "rps": doc["summary"].get("requestsPerSec"),
            "p50_ms": (lp.get("p50") or 0) * 1000,
            "p99_ms": (lp.get("p99") or 0) * 1000,
            "wall_s": wall,
            "mock_cpu_ms_per_req": (m1 - m0) / CLK_TCK * 1000 / max(ok + bad, 1),
            "core0_busy_pct": busy_pct(c0, c1, 0),
            "core1_busy_pct": busy_pct(c0, c1, 1),
        }
        if pid:
            cpu_s = (g1 - g0) / CLK_TCK
            row["gw_cpu_ms_per_req"] = cpu_s * 1000 / max(ok + bad, 1)
            row["gw_core_pct"] = 100.0 * cpu_s / wall
            row["ctx_per_req"] = (x1[0] - x0[0]) / max(ok + bad, 1)
            row["minflt_per_req"] = (x1[1] - x0[1]) / max(ok + bad, 1)
        self.results["rounds"].append(row)
        print(
            f"  {kind:10} rep {rep} {target:8} ok={ok:6} bad={bad:4} rps={row['rps']:9.0f} "
            f"p50={row['p50_ms']:7.3f}ms p99={row['p99_ms']:7.3f}ms"
            + (f" gw_cpu/req={row['gw_cpu_ms_per_req']:.4f}ms gw_core={row['gw_core_pct']:.0f}%"
               if pid else "")
            + f" core0={row['core0_busy_pct']:.0f}% core1={row['core1_busy_pct']:.0f}%",
            flush=True,
        )
        return row

    def throughput(self):
        a = self.args
        print(f"== closed loop: oha -c {a.concurrency}, calibrated -n for ~{a.tp_seconds}s", flush=True)
        counts = {}
        for t in TARGET_NAMES:  # warm-up, also sizes the fixed request counts
            doc, ok, bad = self.oha(t, ["-c", str(a.concurrency), "-z", f"{a.warmup_seconds}s", "-w"],
                                    f"warmup-{t}")
            rps = doc["summary"].get("requestsPerSec") or 1000
            counts[t] = max(2000, int(rps * a.tp_seconds) // 1000 * 1000)
            print(f"  warm-up {t:8} {rps:9.0f} req/s -> -n {counts[t]}", flush=True)
        self.results["tp_counts"] = counts
        for rep in range(a.reps):
            rates = {}
            for t in self.order(rep):
                row = self.measured(t, f"tp-{t}-{rep}", ["-c", str(a.concurrency), "-n", str(counts[t])],
                                    "throughput", rep)
                rates[t] = row["rps"]
            for g in GATEWAYS:  # the floor at this gateway's rate, for its own-work figure
                rate = max(1, round(rates[g] or 1))
                row = self.measured("floor", f"paced-floor-{g}-{rep}",
                                    ["-c", str(a.concurrency), "-q", str(rate), "-z", f"{a.tp_seconds}s",
                                     "--latency-correction"], f"paced-{g}", rep)

    def latency(self):
        a = self.args
        print(f"== open loop: oha -q {a.rate} -z {a.lat_seconds}s --latency-correction", flush=True)
        for rep in range(a.reps):
            for t in self.order(rep):
                self.measured(t, f"lat-{t}-{rep}",
                              ["-c", "16", "-q", str(a.rate), "-z", f"{a.lat_seconds}s",
                               "--latency-correction", "-w"],
                              "latency", rep)

    def ttft(self):
        """Time from sending a streaming request to the first SSE `data:` event,
        one request at a time over a kept-alive connection per target,
        rotating targets request by request."""
        a = self.args
        print(f"== streams: time to first event, {a.ttft_n} requests per target", flush=True)
        conns = {}
        for t in TARGET_NAMES:
            u = urllib.parse.urlsplit(self.urls[t])
            conns[t] = (http.client.HTTPConnection(u.hostname, u.port, timeout=30), u.path)
        body = self.body(True).encode()
        hdrs = self.headers()
        samples = {t: [] for t in TARGET_NAMES}
        totals = {t: [] for t in TARGET_NAMES}
        bad = {t: 0 for t in TARGET_NAMES}
        for i in range(a.ttft_warmup + a.ttft_n):
            for t in self.order(i):
                conn, path = conns[t]
                t0 = time.perf_counter_ns()
                conn.request("POST", path, body, hdrs)
                resp = conn.getresponse()
                buf = b""
                first = None
                while first is None:
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    buf += chunk
                    if b"data:" in buf:
                        first = time.perf_counter_ns()
                rest = resp.read()
                end = time.perf_counter_ns()
                if t in GATEWAYS:
                    self.sent[t] += 1
                ok = resp.status == 200 and first is not None and b"[DONE]" in buf + rest
                if not ok:
                    bad[t] += 1
                    continue
                if i >= a.ttft_warmup:
                    samples[t].append((first - t0) / 1e6)
                    totals[t].append((end - t0) / 1e6)
        for conn, _ in conns.values():
            conn.close()
        out = {}
        for t in TARGET_NAMES:
            s = sorted(samples[t])
            out[t] = {
                "n": len(s),
                "bad": bad[t],
                "p50_ms": pct(s, 50),
                "p99_ms": pct(s, 99),
                "total_p50_ms": pct(sorted(totals[t]), 50),
            }
            print(f"  {t:8} n={len(s)} bad={bad[t]} ttft p50={out[t]['p50_ms']:.3f}ms "
                  f"p99={out[t]['p99_ms']:.3f}ms whole stream p50={out[t]['total_p50_ms']:.3f}ms",
                  flush=True)
        # Paired differences: request i via a proxy minus request i direct.
        for g in PROXIES:
            n = min(len(samples[g]), len(samples["direct"]))
            d = sorted(samples[g][k] - samples["direct"][k] for k in range(n))
            out[g]["added_median_ms"] = statistics.median(d) if d else None
            out[g]["added_p99_of_diffs_ms"] = pct(d, 99)
            out[g]["added_p50_diff_of_pcts_ms"] = out[g]["p50_ms"] - out["direct"]["p50_ms"]
            out[g]["added_p99_diff_of_pcts_ms"] = out[g]["p99_ms"] - out["direct"]["p99_ms"]
        self.results["ttft"] = out

    def ledger_check(self):
        """Asks each gateway how many requests its ledger recorded."""
        out = {}
        for g in GATEWAYS:
            u = urllib.parse.urlsplit(self.urls[g])
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
            conn.request("GET", "/v1/usage", headers={"Authorization": f"Bearer {self.key}"})
            resp = conn.getresponse()
            doc = json.loads(resp.read() or b"{}")
            conn.close()
            out[g] = {"recorded": doc.get("requests"), "sent": self.sent[g],
                      "spend": doc.get("spend"), "units": doc.get("units")}
            print(f"  ledger {g:8} recorded {out[g]['recorded']} of {self.sent[g]} requests sent; "
                  f"spend {out[g]['spend']} units {out[g]['units']}", flush=True)
        self.results["ledger"] = out

    def run(self):
        started = time.monotonic()
        self.results["started"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.results["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
        self.results["rss_start"] = {g: proc_status(self.pids[g], "VmRSS") for g in PROXIES}
        self.results["threads_start"] = {g: len(os.listdir(f"/proc/{self.pids[g]}/task")) for g in GATEWAYS}
        print("== idle gateway CPU (5 s)", flush=True)
        self.results["idle_cpu_ms_per_s"] = self.idle_cpu()
        print("  " + ", ".join(f"{g}: {v:.1f} ms/s" for g, v in self.results["idle_cpu_ms_per_s"].items()),
              flush=True)
        self.throughput()
        self.latency()
        self.ttft()
        time.sleep(0.5)  # let batched mode flush before asking
        self.ledger_check()
        self.results["rss"] = {
            g: {"hwm_kb": proc_status(self.pids[g], "VmHWM"), "rss_kb": proc_status(self.pids[g], "VmRSS")}
            for g in PROXIES
        }
        self.results["mock_rss"] = {"hwm_kb": proc_status(self.pids["mock"], "VmHWM")}
        self.results["warnings"] = {g: log_warnings(os.path.join(self.out, f"gateway-{g}.log"))
                                    for g in GATEWAYS}
        self.results["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        self.results["measure_seconds"] = time.monotonic() - started
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.results, f, indent=1)
        return self.results


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_warnings(path):
    """WARN/ERROR lines of a gateway log: their count and the messages."""
    counts = {}
    if not os.path.exists(path):
        return {"total": 0, "messages": {}}
    with open(path, errors="replace") as f:
        for line in f:
            line = ANSI.sub("", line)
            m = re.search(r" (WARN|ERROR) .*?: ([^:]*?)(?:  | \w+=|$)", line)
            if m:
                msg = f"{m.group(1)} {m.group(2).strip()}"
                err = re.search(r"error=(.*)$", line)
                if err:
                    msg += f" ({err.group(1).strip()[:80]})"
                counts[msg] = counts.get(msg, 0) + 1
    return {"total": sum(counts.values()), "messages": counts}


def pct(sorted_values, p):
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# ---- report -------------------------------------------------------------
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rng(values):
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)


def summarize(res):
    rounds = res["rounds"]

    def rows(kind, target):
        return sorted((r for r in rounds if r["kind"] == kind and r["target"] == target),
                      key=lambda r: r["rep"])

    s = {}
    for t in TARGET_NAMES:
        tp, lat = rows("throughput", t), rows("latency", t)
        # The floor's paced rounds count towards its errors too.
        paced = [r for r in rounds if r["kind"].startswith("paced-") and r["target"] == t]
        s[t] = {
            "rps": med([r["rps"] for r in tp]),
            "rps_range": rng([r["rps"] for r in tp]),
            "p50": med([r["p50_ms"] for r in lat]),
            "p99": med([r["p99_ms"] for r in lat]),
            "bad": sum(r["bad"] for r in tp + lat + paced),
            "ok": sum(r["ok"] for r in tp + lat + paced),
            "core0": med([r["core0_busy_pct"] for r in tp]),
            "core1": med([r["core1_busy_pct"] for r in tp]),
            "mock_cpu": med([r["mock_cpu_ms_per_req"] for r in tp]),
        }
        if t in PROXIES:
            s[t]["cpu_tp"] = med([r["gw_cpu_ms_per_req"] for r in tp])
            s[t]["cpu_tp_range"] = rng([r["gw_cpu_ms_per_req"] for r in tp])
            s[t]["cpu_lat"] = med([r["gw_cpu_ms_per_req"] for r in lat])
            s[t]["gw_core"] = med([r["gw_core_pct"] for r in tp])
            s[t]["ctx"] = med([r.get("ctx_per_req") for r in tp])
            s[t]["ctx_lat"] = med([r.get("ctx_per_req") for r in lat])
            s[t]["minflt"] = med([r.get("minflt_per_req") for r in tp])
            direct_lat = {r["rep"]: r for r in rows("latency", "direct")}
            add50 = [r["p50_ms"] - direct_lat[r["rep"]]["p50_ms"] for r in lat if r["rep"] in direct_lat]
            add99 = [r["p99_ms"] - direct_lat[r["rep"]]["p99_ms"] for r in lat if r["rep"] in direct_lat]
            s[t]["add50"], s[t]["add50_range"] = med(add50), rng(add50)
            s[t]["add99"], s[t]["add99_range"] = med(add99), rng(add99)
            s[t]["ttft_add"] = res["ttft"][t]["added_median_ms"]
            s[t]["ttft_add50"] = res["ttft"][t]["added_p50_diff_of_pcts_ms"]
            s[t]["ttft_add_p99"] = res["ttft"][t]["added_p99_diff_of_pcts_ms"]
            s[t]["hwm_mb"] = res["rss"][t]["hwm_kb"] / 1024
            start_kb = (res.get("rss_start") or {}).get(t)
            s[t]["rss_start_mb"] = start_kb / 1024 if start_kb else None
        if t in GATEWAYS:
            s[t]["idle"] = res["idle_cpu_ms_per_s"][t]
            paced = rows(f"paced-{t}", "floor")
            s[t]["floor_cpu_at_rate"] = med([r["gw_cpu_ms_per_req"] for r in paced])
            own = []
            for r in tp:
                same = [p["gw_cpu_ms_per_req"] for p in paced if p["rep"] == r["rep"]]
                if same:
                    own.append(r["gw_cpu_ms_per_req"] - same[0])
            s[t]["own_cpu"], s[t]["own_cpu_range"] = med(own), rng(own)
    return s


def verdict(ok):
    return "met" if ok else "**not met**"


def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def fr(r, digits=3):
    return f"{fmt(r[0], digits)}…{fmt(r[1], digits)}"


def render(res, args):
    s = summarize(res)
    sy, ba, di, fl = s["sync"], s["batched"], s["direct"], s["floor"]
    tt = res["ttft"]
    rate, reps = args.rate, args.reps
    lines = []
    a = lines.append
    a(BEGIN)
    a("")
    a("Load benchmark of the whole data path: a client (oha, or a Python loop for streams) →")
    a("Tollgate (support-desk plugin bound: route, meter and price per request; a usage")
    a("record written to the ledger for every request) → the mock upstream, compared with")
    a("the same requests sent straight to the mock, and through a **floor proxy**")
    a("(`bench/floor-proxy`: a pass-through proxy on the gateway's own stack, axum + reqwest +")
    a("Tokio + jemalloc, that parses and decides nothing), which shows what any proxy hop costs")
    a("on this machine. Script `bench/gateway.sh`, config template `bench/gateway.toml.in`,")
    a("rounds and report `bench/gateway_bench.py`. Not in CI.")
    a("")
    a("```sh")
    a(args.command)
    a("```")
    a("")
    a(f"Machine: {args.machine}. **Shared with other engineers' builds** (load average "
      f"{' '.join(res['loadavg_start'])} at the start, {' '.join(res['loadavg_end'])} at the end); "
      "their processes are not pinned, so they compete for both cores.")
    a("The gateways and the floor proxy run on core 1 (`taskset -c 1`; Tokio sees one CPU, so one")
    a("worker thread, plus the ledger's and wasmtime's own threads on the same core), one of them")
    a("loaded at a time; oha, the mock (`mock-upstream`, no added latency) and the stream timer")
    a("share core 0. Both gateways (`sync`, `batched`: fresh data dirs) run side by side; every")
    a("repetition runs direct, floor, sync, batched in turn (rotating the order), then the floor")
    a("paced at each gateway's closed-loop rate of that repetition (a proxy's CPU per request")
    a("falls as its load rises, so the gateway's own work is measured against the floor at the")
    a(f"gateway's own rate), {reps} repetitions, figures are medians over")
    a("them (ranges in brackets). Request: one short user message, `max_tokens` 32 (the mock")
    a("answers 32 words), header `x-tollgate-tag-ticket: T-1` (the plugin meters a ticket and")
    a(f"an answer). Run of {res['started']}, commit {args.commit}.")
    a("")
    a("| measure | direct | floor proxy | gateway `sync` | gateway `batched` | target | verdict |")
    a("|---|---|---|---|---|---|---|")
    a(f"| CPU per request, closed loop (utime+stime / requests) | – | "
      f"{fmt(fl['cpu_tp'])} ms [{fr(fl['cpu_tp_range'])}] | "
      f"{fmt(sy['cpu_tp'])} ms [{fr(sy['cpu_tp_range'])}] | {fmt(ba['cpu_tp'])} ms [{fr(ba['cpu_tp_range'])}] "
      f"| ≤ {T_CPU_MS} ms | sync {verdict(sy['cpu_tp'] <= T_CPU_MS)}, batched {verdict(ba['cpu_tp'] <= T_CPU_MS)} |")
    a(f"| floor proxy CPU per request paced at this gateway's closed-loop rate (`-q` that rate) | – | – | "
      f"{fmt(sy['floor_cpu_at_rate'])} ms | {fmt(ba['floor_cpu_at_rate'])} ms | | |")
    a(f"| the gateway's own CPU per request (gateway − floor at the same rate, per repetition) | – | – | "
      f"{fmt(sy['own_cpu'])} ms [{fr(sy['own_cpu_range'])}] | {fmt(ba['own_cpu'])} ms [{fr(ba['own_cpu_range'])}] "
      f"| | |")
    a(f"| CPU per request at {rate} req/s (includes idle work) | – | {fmt(fl['cpu_lat'])} ms | {fmt(sy['cpu_lat'])} ms | "
      f"{fmt(ba['cpu_lat'])} ms | | |")
    a(f"| gateway CPU when idle | – | – | {fmt(sy['idle'], 1)} ms/s | {fmt(ba['idle'], 1)} ms/s | | |")
    a(f"| max throughput, closed loop (`-c {args.concurrency}`) | {fmt(di['rps'], 0)} req/s "
      f"[{fr(di['rps_range'], 0)}] | {fmt(fl['rps'], 0)} req/s [{fr(fl['rps_range'], 0)}] | "
      f"{fmt(sy['rps'], 0)} req/s [{fr(sy['rps_range'], 0)}] | "
      f"{fmt(ba['rps'], 0)} req/s [{fr(ba['rps_range'], 0)}] | ≥ {T_RPS:,} req/s on one core | "
      f"sync {verdict(sy['rps'] >= T_RPS)}, batched {verdict(ba['rps'] >= T_RPS)} |")
    a(f"| core 1 busy by the proxy during the closed loop (its CPU time / wall time) | – | {fmt(fl['gw_core'], 0)} % | "
      f"{fmt(sy['gw_core'], 0)} % | {fmt(ba['gw_core'], 0)} % | | |")
    a(f"| core 0 busy during the closed loop (oha + mock + others) | {fmt(di['core0'], 0)} % | "
      f"{fmt(fl['core0'], 0)} % | {fmt(sy['core0'], 0)} % | {fmt(ba['core0'], 0)} % | | |")
    a(f"| latency p50 at {rate} req/s, open loop | {fmt(di['p50'])} ms | {fmt(fl['p50'])} ms | {fmt(sy['p50'])} ms | "
      f"{fmt(ba['p50'])} ms | | |")
    a(f"| latency p99 at {rate} req/s, open loop | {fmt(di['p99'])} ms | {fmt(fl['p99'])} ms | {fmt(sy['p99'])} ms | "
      f"{fmt(ba['p99'])} ms | | |")
    a(f"| **added** latency p50 (proxy − direct, same repetition) | – | {fmt(fl['add50'])} ms "
      f"[{fr(fl['add50_range'])}] | {fmt(sy['add50'])} ms "
      f"[{fr(sy['add50_range'])}] | {fmt(ba['add50'])} ms [{fr(ba['add50_range'])}] | ≤ {T_P50_MS} ms (batched) "
      f"| batched {verdict(ba['add50'] <= T_P50_MS)}; sync {fmt(sy['add50'])} ms (may add one flush) |")
    a(f"| **added** latency p99 | – | {fmt(fl['add99'])} ms [{fr(fl['add99_range'])}] | "
      f"{fmt(sy['add99'])} ms [{fr(sy['add99_range'])}] | "
      f"{fmt(ba['add99'])} ms [{fr(ba['add99_range'])}] | ≤ {T_P99_MS} ms (batched) "
      f"| batched {verdict(ba['add99'] <= T_P99_MS)}; sync {fmt(sy['add99'])} ms (may add one flush) |")
    a(f"| time to first SSE event, p50 / p99 ({tt['direct']['n']} streams each) | "
      f"{fmt(tt['direct']['p50_ms'])} / {fmt(tt['direct']['p99_ms'])} ms | "
      f"{fmt(tt['floor']['p50_ms'])} / {fmt(tt['floor']['p99_ms'])} ms | "
      f"{fmt(tt['sync']['p50_ms'])} / {fmt(tt['sync']['p99_ms'])} ms | "
      f"{fmt(tt['batched']['p50_ms'])} / {fmt(tt['batched']['p99_ms'])} ms | | |")
    def ttft_ok(g):  # judged on the larger of the two medians
        return max(g["ttft_add"], g["ttft_add50"]) <= T_TTFT_MS

    a(f"| **added** time to first token: p50 − p50; median of paired differences; p99 − p99 | – | "
      f"{fmt(fl['ttft_add50'])}; {fmt(fl['ttft_add'])}; {fmt(fl['ttft_add_p99'])} ms | "
      f"{fmt(sy['ttft_add50'])}; {fmt(sy['ttft_add'])}; {fmt(sy['ttft_add_p99'])} ms | "
      f"{fmt(ba['ttft_add50'])}; {fmt(ba['ttft_add'])}; {fmt(ba['ttft_add_p99'])} ms | ≤ {T_TTFT_MS} ms "
      f"| sync {verdict(ttft_ok(sy))}, batched {verdict(ttft_ok(ba))} |")
    a(f"| peak resident memory (VmHWM at the end; VmRSS right after start) | – | "
      f"{fmt(fl['hwm_mb'], 1)} MB ({fmt(fl['rss_start_mb'], 1)} MB at start) | "
      f"{fmt(sy['hwm_mb'], 1)} MB ({fmt(sy['rss_start_mb'], 1)} MB at start) | "
      f"{fmt(ba['hwm_mb'], 1)} MB ({fmt(ba['rss_start_mb'], 1)} MB at start) | ≤ {T_RSS_MB} MB | "
      f"sync {verdict(sy['hwm_mb'] <= T_RSS_MB)}, batched {verdict(ba['hwm_mb'] <= T_RSS_MB)} |")
    a(f"| context switches per request (all threads), closed loop; at {rate} req/s | – | "
      f"{fmt(fl['ctx'], 1)}; {fmt(fl['ctx_lat'], 1)} | "
      f"{fmt(sy['ctx'], 1)}; {fmt(sy['ctx_lat'], 1)} | {fmt(ba['ctx'], 1)}; {fmt(ba['ctx_lat'], 1)} | | |")
    a(f"| minor page faults per request, closed loop | – | {fmt(fl['minflt'], 1)} | {fmt(sy['minflt'], 1)} | "
      f"{fmt(ba['minflt'], 1)} | | |")
    a(f"| mock upstream CPU per request (for scale) | {fmt(di['mock_cpu'])} ms | {fmt(fl['mock_cpu'])} ms | "
      f"{fmt(sy['mock_cpu'])} ms | {fmt(ba['mock_cpu'])} ms | | |")
    a(f"| non-200 answers or transport errors / requests measured | {di['bad']} / {di['ok'] + di['bad']} | "
      f"{fl['bad']} / {fl['ok'] + fl['bad']} | "
      f"{sy['bad']} / {sy['ok'] + sy['bad']} | {ba['bad']} / {ba['ok'] + ba['bad']} | 0 | |")
    warn = res.get("warnings", {})

    def wtext(g):
        w = warn.get(g, {"total": 0, "messages": {}})
        if not w["total"]:
            return "0"
        top = sorted(w["messages"].items(), key=lambda kv: -kv[1])[:2]
        return f"{w['total']}: " + "; ".join(f"{n}× {m}" for m, n in top)

    a(f"| gateway log lines at WARN/ERROR during the run | – | – | {wtext('sync')} | {wtext('batched')} | 0 | |")
    led = res["ledger"]
    def refused(g):
        return sum(n for m, n in warn.get(g, {"messages": {}})["messages"].items()
                   if "route failed; refusing" in m)

    a(f"| usage records in the ledger (`GET /v1/usage`) / requests sent, warm-ups included "
      f"(a request refused at routing gets no record, by design) | – | – | "
      f"{led['sync']['recorded']} / {led['sync']['sent']} ({refused('sync')} refused) | "
      f"{led['batched']['recorded']} / {led['batched']['sent']} ({refused('batched')} refused) | "
      f"sent − refused | |")
    a("")
    a("How each figure is taken: CPU per request is the gateway process's utime+stime")
    a("(`/proc/PID/stat`, all threads, 10 ms ticks) over a fixed number of requests (sized from a")
    a(f"warm-up round to last ~{args.tp_seconds} s) divided by that number. Max throughput is oha's")
    a(f"requests/s over those closed-loop rounds. Latency is oha `-q {rate} -z {args.lat_seconds}s")
    a("--latency-correction` (open loop, measured from each request's scheduled start); \"added\" is")
    a("the gateway's percentile minus the direct percentile of the same repetition. Time to first")
    a("token is timed by `bench/gateway_bench.py`: one `\"stream\": true` request at a time on a")
    a("kept-alive connection, from sending to the first SSE `data:` event; targets rotate request")
    a("by request; the verdict uses the larger of p50 − p50 and the median of the per-request")
    a("differences. Context switches are summed over the gateway's threads (`/proc/PID/task`);")
    a("kernel loopback work is split between the processes as the kernel accounts it.")
    a("")
    a(END)
    return "\n".join(lines)


def write_section(path, block):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    m = re.search(r"^## Gateway[ \t]*\n", text, flags=re.M)
    if m:
        nxt = re.search(r"^## ", text[m.end():], flags=re.M)
        end = m.end() + nxt.start() if nxt else len(text)
        section = text[m.start():end]
        if BEGIN in section and END in section:
            i, j = section.index(BEGIN), section.index(END) + len(END)
            section = section[:i] + block + section[j:]
        else:
            section = section.rstrip("\n") + "\n\n" + block + "\n"
        if not section.endswith("\n\n") and nxt:
            section = section.rstrip("\n") + "\n\n"
        text = text[: m.start()] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n## Gateway\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oha", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--direct-url", required=True)
    p.add_argument("--floor-url", required=True)
    p.add_argument("--sync-url", required=True)
    p.add_argument("--batched-url", required=True)
    p.add_argument("--mock-pid", type=int, required=True)
    p.add_argument("--floor-pid", type=int, required=True)
    p.add_argument("--sync-pid", type=int, required=True)
    p.add_argument("--batched-pid", type=int, required=True)
    p.add_argument("--probes", type=int, default=0, help="requests already sent to each gateway")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--warmup-seconds", type=int, default=3)
    p.add_argument("--tp-seconds", type=int, default=8)
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--lat-seconds", type=int, default=15)
    p.add_argument("--ttft-n", type=int, default=400)
    p.add_argument("--ttft-warmup", type=int, default=20)
    p.add_argument("--benchmarks", help="write the ## Gateway section of this file")
    p.add_argument("--command", default="bench/gateway.sh")
    p.add_argument("--machine", default="")
    p.add_argument("--commit", default="")
    p.add_argument("--report-only", action="store_true", help="re-render from OUT/results.json")
    args = p.parse_args()
    if args.report_only:
        with open(os.path.join(args.out, "results.json")) as f:
            res = json.load(f)
        missing = [t for t in PROXIES if t not in res.get("rss", {})]
        if missing:
            sys.exit(f"{args.out}/results.json has no {', '.join(missing)} results: it was written "
                     "by an older bench/gateway_bench.py (before the floor proxy); render it "
                     "with the gateway_bench.py of the commit that wrote it")
    else:
        res = Bench(args).run()
    block = render(res, args)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(block + "\n")
    print()
    print(block)
    if args.benchmarks:
        write_section(args.benchmarks, block)
        print(f"\nwrote the ## Gateway section of {args.benchmarks}")


if __name__ == "__main__":
    sys.exit(main())
