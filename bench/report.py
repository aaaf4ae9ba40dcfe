#!/usr/bin/env python3
"""Turns bench/run.sh's raw runs (one JSON line per loadgen run) into bench/RESULTS.md.

Medians over rounds per scenario and target, ratios to the direct connection, and each proxy's
own CPU time per message / MB / handshake (the fair comparison on 2 cores, where the load
generator saturates first). The wss-* scenarios (issue 22) are the same scenarios with TLS
between the load generator and the proxy, reported the same way, plus which TLS parameters each
target negotiated. Standard library only.

  report.py --runs runs.jsonl --meta meta.json --out RESULTS.md [--check]
  report.py --one-line loadgen-output.json      (a short summary for the run log)
"""

import argparse
import json
import statistics
import sys

TARGETS = ["direct", "wsgate", "nginx", "haproxy"]
PROXIES = ["wsgate", "nginx", "haproxy"]
NOTES_MARKER = "<!-- notes below this line are kept when run.sh rewrites this file -->"


def load_runs(path):
    runs = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as error:
                sys.exit(f"report.py: {path}:{number}: not JSON: {error}")
    return runs


def dig(obj, *keys):
    for key in keys:
        if not isinstance(obj, dict) or obj.get(key) is None:
            return None
        obj = obj[key]
    return obj


def per_op(cpu_s, count, scale):
    """CPU seconds per operation, times `scale` (1e6 for microseconds)."""
    if cpu_s is None or not count:
        return None
    return cpu_s * scale / count


# Each metric: (scenario, label, how to get one run's value, unit kind, compare to direct?)
def metrics():
    def result(*keys):
        return lambda run: dig(run, "result", *keys)

    def cpu_per(count_key, scale):
        return lambda run: per_op(run.get("proxy_cpu_s"), dig(run, "result", count_key), scale)

    def calls_per(count_key, field="proxy_syscalls"):
        def get(run):
            # Counted in a separate pass after the measured run (`syscall_ops` operations);
            # older records counted during the measured run itself.
            calls = run.get(field)
            count = run.get("syscall_ops") or dig(run, "result", count_key)
            return None if calls is None or not count else calls / count
        return get

    def cpu_per_mb(run):
        total = dig(run, "result", "total_bytes")
        return per_op(run.get("proxy_cpu_s"), total / 1e6 if total else None, 1e3)

    def idle_per_conn(run):
        held, before = run.get("pss_held_late_kb") or run.get("pss_held_kb"), run.get("pss_before_kb")
        opened = dig(run, "result", "opened")
        if held is None or before is None or not opened:
            return None
        return (held - before) * 1024 / opened

    def idle_cpu(run):
        cpu, window = run.get("idle_cpu_s"), run.get("idle_window_s")
        if cpu is None or not window:
            return None
        return cpu * 1e3 / window

    def pss_before(run):
        before = run.get("pss_before_kb")
        return None if before is None else before / 1024

    def resumed_share(run):
        handshakes = dig(run, "result", "tls", "handshakes")
        resumed = dig(run, "result", "tls", "resumed")
        return None if not handshakes or resumed is None else resumed / handshakes

    ws = ws_metrics(result, cpu_per, calls_per, cpu_per_mb, idle_per_conn, idle_cpu, pss_before)
    wss = []
    for base in ("throughput", "bulk", "latency", "handshakes", "resumed", "idle"):
        source = "handshakes" if base == "resumed" else base
        for scenario, label, get, kind, vs_direct in ws:
            if scenario == source:
                wss.append((f"wss-{base}", wss_label(label), get, kind, vs_direct))
        if base in ("handshakes", "resumed"):
            wss.append((f"wss-{base}", "resumed TLS handshakes (share)", resumed_share, "share", False))
    return ws + wss


def wss_label(label):
    """A ws metric's label for its wss twin (the upgrade phase includes the TLS handshake)."""
    return label.replace("connect + upgrade", "connect + TLS + upgrade")


def ws_metrics(result, cpu_per, calls_per, cpu_per_mb, idle_per_conn, idle_cpu, pss_before):
    return [
        ("throughput", "messages/s (64 B, 100 conns × 16 in flight)", result("msgs_per_s"), "rate", True),
        ("throughput", "RTT p50 (µs)", result("rtt_us", "p50"), "us", False),
        ("throughput", "RTT p99 (µs)", result("rtt_us", "p99"), "us", False),
        ("throughput", "proxy CPU per message (µs)", cpu_per("total_messages", 1e6), "cpu", False),
        ("throughput", "proxy system calls per message (perf)", calls_per("total_messages"), "calls", False),
        ("throughput", "of which epoll_wait", calls_per("total_messages", "proxy_epoll_waits"), "calls", False),
        ("bulk", "MB/s echoed (64 KiB, 10 conns)", result("mb_per_s"), "rate", True),
        ("bulk", "RTT p99 (µs)", result("rtt_us", "p99"), "us", False),
        ("bulk", "proxy CPU per MB echoed (ms)", cpu_per_mb, "cpu", False),
        ("latency", "RTT p50 (µs)", result("rtt_us", "p50"), "lat", False),
        ("latency", "RTT p99 (µs)", result("rtt_us", "p99"), "lat", False),
        ("latency", "RTT p999 (µs)", result("rtt_us", "p999"), "lat", False),
        ("latency", "proxy CPU per message (µs)", cpu_per("total_messages", 1e6), "cpu", False),
        ("handshakes", "handshakes/s (connect, 1 echo, close; 8 workers)", result("per_s"), "rate", True),
        ("handshakes", "cycle p50 (µs)", result("cycle_us", "p50"), "us", False),
        ("handshakes", "cycle p99 (µs)", result("cycle_us", "p99"), "us", False),
        ("handshakes", "connect + upgrade p50 (µs)", result("upgrade_us", "p50"), "us", False),
        ("handshakes", "proxy CPU per handshake (µs)", cpu_per("total_cycles", 1e6), "cpu", False),
        ("handshakes", "proxy system calls per handshake (perf)", calls_per("total_cycles"), "calls", False),
        ("idle", "connections held", result("held_to_end"), "count", False),
        ("idle", "proxy PSS per idle connection (bytes)", idle_per_conn, "bytes", False),
        ("idle", "proxy PSS fresh, before connections (MiB)", pss_before, "mib", False),
        ("idle", "proxy CPU while idle (ms per s)", idle_cpu, "cpu", False),
    ]


SCENARIO_TITLES = {
    "throughput": "1. small messages",
    "bulk": "2. large messages",
    "latency": "3. latency at a fixed rate",
    "handshakes": "4. handshakes",
    "idle": "5. idle connections",
    "wss-throughput": "1. small messages, wss",
    "wss-bulk": "2. large messages, wss",
    "wss-latency": "3. latency at a fixed rate, wss",
    "wss-handshakes": "4. full TLS handshakes, wss",
    "wss-resumed": "4r. resumed TLS handshakes, wss",
    "wss-idle": "5. idle connections, wss",
}


def fmt(value, kind):
    if value is None:
        return "—"
    if kind == "rate":
        return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    if kind in ("us", "lat"):
        return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    if kind == "cpu":
        return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:,.1f}"
    if kind == "calls":
        return f"{value:.2f}" if value < 10 else f"{value:,.1f}"
    if kind in ("bytes", "count"):
        return f"{value:,.0f}"
    if kind == "mib":
        return f"{value:,.1f}"
    if kind == "share":
        return f"{value:.0%}"
    return str(value)


def collect(runs):
    """{(scenario, label, target): [values per round]} and the medians."""
    values = {}
    for scenario, label, get, kind, _ in metrics():
        for target in TARGETS:
            series = []
            for run in sorted(runs, key=lambda r: r.get("round", 0)):
                if run.get("scenario") != scenario or run.get("target") != target:
                    continue
                if run.get("status") not in (0, "0"):
                    series.append(None)
                    continue
                series.append(get(run))
            values[(scenario, label, target)] = series
    return values


def median(series):
    numbers = [v for v in series if v is not None]
    return statistics.median(numbers) if numbers else None


def headline_table(values, targets):
    lines = [
        "| scenario | metric | " + " | ".join(targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for scenario, label, _, kind, vs_direct in metrics():
        meds = {t: median(values[(scenario, label, t)]) for t in targets}
        if all(v is None for v in meds.values()):
            continue
        direct = meds.get("direct")
        cells = []
        for t in targets:
            cell = fmt(meds[t], kind)
            if meds[t] is not None and t != "direct" and direct:
                if vs_direct:
                    cell += f" ({meds[t] / direct:.2f}×)"
                elif kind == "lat":
                    cell += f" ({meds[t] - direct:+,.0f})"
            cells.append(cell)
        lines.append(f"| {SCENARIO_TITLES[scenario]} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rounds_table(values, targets):
    lines = [
        "| scenario | metric | " + " | ".join(targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for scenario, label, _, kind, _ in metrics():
        row = []
        for t in targets:
            series = values[(scenario, label, t)]
            row.append(" / ".join(fmt(v, kind) for v in series) if series else "—")
        if all(cell == "—" or set(cell.replace(" / ", "")) == {"—"} for cell in row):
            continue
        lines.append(f"| {SCENARIO_TITLES[scenario]} | {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def proxy_verdicts(values, targets):
    """Where wsgate stands against the better of nginx and HAProxy, per the issue's targets."""
    if "wsgate" not in targets or not any(p in targets for p in ("nginx", "haproxy")):
        return []
    out = []
    ws_checks = [
        ("throughput", "messages/s (64 B, 100 conns × 16 in flight)", True),
        ("throughput", "RTT p50 (µs)", False),
        ("throughput", "RTT p99 (µs)", False),
        ("throughput", "proxy CPU per message (µs)", False),
        ("bulk", "MB/s echoed (64 KiB, 10 conns)", True),
        ("bulk", "proxy CPU per MB echoed (ms)", False),
        ("latency", "RTT p50 (µs)", False),
        ("latency", "RTT p99 (µs)", False),
        ("latency", "RTT p999 (µs)", False),
        ("handshakes", "handshakes/s (connect, 1 echo, close; 8 workers)", True),
        ("handshakes", "proxy CPU per handshake (µs)", False),
        ("idle", "proxy PSS per idle connection (bytes)", False),
    ]
    checks = list(ws_checks)
    for scenario, label, higher_is_better in ws_checks:
        checks.append((f"wss-{scenario}", label, higher_is_better))
        if scenario == "handshakes":
            checks.append(("wss-resumed", label, higher_is_better))
    for scenario, label, higher_is_better in checks:
        mine = median(values.get((scenario, label, "wsgate"), []))
        peers = {p: median(values.get((scenario, label, p), [])) for p in ("nginx", "haproxy") if p in targets}
        peers = {p: v for p, v in peers.items() if v is not None}
        if mine is None or not peers:
            continue
        best_name, best = (max if higher_is_better else min)(peers.items(), key=lambda kv: kv[1])
        wins = mine >= best if higher_is_better else mine <= best
        ratio = mine / best if best else float("nan")
        out.append(
            f"- {SCENARIO_TITLES[scenario]}, {label}: wsgate {fmt(mine, 'cpu' if 'CPU' in label else 'rate')}"
            f" vs best peer {best_name} {fmt(best, 'cpu' if 'CPU' in label else 'rate')}"
            f" ({ratio:.2f}×) — {'meets' if wins else 'BEHIND'}"
            + paired_note(values, scenario, label, targets, higher_is_better)
        )
    return out


def paired_note(values, scenario, label, targets, higher_is_better):
    """Round by round against the better peer of that same round: runs seconds apart share the
    machine's state, so this shows whether a gap between medians outlasts the drift between
    rounds (this machine's speed wanders by more than 10 % over minutes)."""
    mine = values.get((scenario, label, "wsgate"), [])
    peers = [values.get((scenario, label, p), []) for p in ("nginx", "haproxy") if p in targets]
    ratios = []
    for i, m in enumerate(mine):
        in_round = [series[i] for series in peers if i < len(series) and series[i] is not None]
        if m is None or not in_round:
            continue
        best = max(in_round) if higher_is_better else min(in_round)
        if best:
            ratios.append(m / best)
    if len(ratios) < 2:
        return ""
    ahead = sum(1 for r in ratios if (r >= 1 if higher_is_better else r <= 1))
    return (f"; round by round: ahead in {ahead} of {len(ratios)}, ratio "
            f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})")


def commands(runs, targets):
    seen, lines = set(), []
    for run in runs:
        key = (run.get("scenario"), run.get("target"))
        if key in seen or run.get("target") not in targets:
            continue
        seen.add(key)
        lines.append(run.get("cmd", ""))
    return lines


def check(runs, targets, scenarios):
    """Quick mode: every scenario that ran produced numbers for every target."""
    problems = []
    base_wanted = {
        "throughput": lambda r: (dig(r, "result", "msgs_per_s") or 0) > 0 and dig(r, "result", "rtt_us", "p99") is not None,
        "bulk": lambda r: (dig(r, "result", "mb_per_s") or 0) > 0,
        "latency": lambda r: dig(r, "result", "rtt_us", "p999") is not None,
        "handshakes": lambda r: (dig(r, "result", "per_s") or 0) > 0,
        "idle": lambda r: (dig(r, "result", "held_to_end") or 0) > 0
        and r.get("pss_held_kb") is not None
        and r.get("pss_before_kb") is not None,
    }
    wanted = dict(base_wanted)
    for base, ok in base_wanted.items():
        # Over wss the same numbers, and every handshake on the pinned parameters.
        wanted[f"wss-{base}"] = lambda r, ok=ok: ok(r) and negotiated_as_pinned(r)
    wanted["wss-resumed"] = wanted["wss-handshakes"]
    for scenario, ok in wanted.items():
        if scenario not in scenarios:
            continue
        for target in targets:
            if scenario in ("idle", "wss-idle") and target == "direct":
                continue
            mine = [r for r in runs if r.get("scenario") == scenario and r.get("target") == target]
            if not mine:
                problems.append(f"{scenario}/{target}: no run recorded")
            elif not all(r.get("status") in (0, "0") and ok(r) for r in mine):
                problems.append(f"{scenario}/{target}: no numbers ({json.dumps(mine[-1])[:300]})")
    return problems


PINNED_TLS = {"version": "TLSv1_3", "key_exchange": "X25519", "cipher_suite": "TLS13_AES_128_GCM_SHA256"}


def negotiated_as_pinned(run):
    """Every TLS handshake of the run negotiated TLS 1.3, X25519 and AES-128-GCM."""
    tls = dig(run, "result", "tls") or {}
    return (tls.get("handshakes") or 0) > 0 and all(tls.get(k) == v for k, v in PINNED_TLS.items())


def tls_table(runs, targets):
    """What each target's TLS handshakes negotiated over every wss run (the load generator's count)."""
    lines = ["| target | handshakes | full | resumed | hello retries | versions | key exchange | cipher suite |",
             "|---|---|---|---|---|---|---|---|"]
    for target in targets:
        totals = {"handshakes": 0, "full": 0, "resumed": 0, "hello_retry": 0}
        names = {"versions": {}, "key_exchanges": {}, "cipher_suites": {}}
        for run in runs:
            tls = dig(run, "result", "tls")
            if run.get("target") != target or not str(run.get("scenario", "")).startswith("wss-") or not tls:
                continue
            for key in totals:
                totals[key] += tls.get(key) or 0
            for key, seen in names.items():
                for name, count in (tls.get(key) or {}).items():
                    seen[name] = seen.get(name, 0) + count
        if not totals["handshakes"]:
            continue
        cells = [", ".join(f"{name} ({count:,})" for name, count in seen.items()) for seen in names.values()]
        lines.append(f"| {target} | {totals['handshakes']:,} | {totals['full']:,} | {totals['resumed']:,} | "
                     f"{totals['hello_retry']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def one_line(path):
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    r = json.loads(lines[-1]) if lines else {}
    s = r.get("scenario")
    tls = r.get("tls")
    suffix = ""
    if tls:
        suffix = (f"; TLS {tls.get('key_exchange')} {tls.get('cipher_suite')}, "
                  f"{tls.get('resumed')} of {tls.get('handshakes')} resumed")
    if s == "throughput" or s == "bulk":
        return (f"{r['msgs_per_s']:,.0f} msg/s, {r['mb_per_s']:,.1f} MB/s, p50 {r['rtt_us']['p50']} µs, "
                f"p99 {r['rtt_us']['p99']} µs, errors {r['errors']}" + suffix)
    if s == "latency":
        rtt = r["rtt_us"]
        return (f"{r['achieved_rate']:,.0f}/s, p50 {rtt['p50']} p99 {rtt['p99']} p999 {rtt['p999']} µs, "
                f"errors {r['errors']}" + suffix)
    if s == "handshakes":
        return (f"{r['per_s']:,.0f}/s, cycle p50 {r['cycle_us']['p50']} µs (upgrade {r['upgrade_us']['p50']}, "
                f"echo {r['echo_us']['p50']}, close {r['close_us']['p50']}), errors {r['errors']}" + suffix)
    return json.dumps(r)


def render(runs, meta, targets, kept_notes):
    values = collect(runs)
    present = [t for t in targets if any(r.get("target") == t for r in runs)]
    missing = [t for t in TARGETS if t not in present]
    m = meta
    out = []
    out.append("# wsgate benchmark results\n")
    out.append(
        f"Generated by `bench/run.sh{' --quick' if m.get('mode') == 'quick' else ''}` "
        f"(started {m.get('started_at')}, {m.get('wall_s')} s wall time, build included). "
        f"Medians over {m.get('rounds')} round(s); targets alternate within each round and the order "
        "rotates between rounds. How to reproduce: `bench/README.md`.\n"
    )
    if missing:
        out.append(f"**Not measured in this run:** {', '.join(missing)}.\n")
    out.append("## Machine and versions\n")
    out.append("| | |\n|---|---|")
    for key, label in [("cpu", "CPU"), ("memory", "memory"), ("os", "OS"), ("kernel", "kernel"),
                       ("nofile", "open-file limit (hard = soft)"), ("rustc", "rustc"),
                       ("wsgate", "wsgate"), ("git", "wsgate commit"), ("nginx", "nginx"), ("haproxy", "HAProxy")]:
        out.append(f"| {label} | {m.get(key, '?')} |")
    out.append("")
    out.append("## Setup\n")
    out.append(
        "- Backend: `wsgate echo` (hyper + tokio-tungstenite), the same process for every target; "
        "\"direct\" is the load generator talking to it with no proxy.\n"
        "- Pinning: each proxy alone on core 0 (`taskset -c 0`, one worker: nginx `worker_processes 1`, "
        "HAProxy `nbthread 1`, wsgate sees one CPU and so runs one worker on a current-thread runtime); load generator and echo backend share "
        "core 1; all at default priority. On 2 cores the generator side saturates first, so the fair "
        "comparison between proxies is their own CPU time per message / MB / handshake "
        "(on-CPU time from `/proc/PID/task/*/schedstat`, summed over every thread and over nginx's master "
        "and worker, divided by every echo of the run, warm-up included; `/proc/PID/stat` utime+stime is "
        "recorded too, but its 10 ms ticks are too coarse for the lighter scenarios).\n"
        "- System calls (scenarios 1 and 4): `perf stat` counts them in a separate short pass "
        "right after each measured run, never during it — tracing every call slows the traced "
        "proxy and would distort its CPU and rate.\n"
        f"- Load generator: `bench/loadgen` (fastwebsockets, hdrhistogram), warm-up {m.get('warmup')}, "
        f"measured {m.get('duration')} per run. Latency scenario: 2,000 msg/s over 10 connections, "
        "64 B, measured from the actual send (from the due time when a late reply delayed the send).\n"
        f"- Idle: {m.get('idle_conns'):,} connections (each upgraded and proven with one echo), held "
        f"{m.get('idle_hold_s')} s against a freshly started proxy; memory is PSS from "
        "`/proc/PID/smaps_rollup` before and while held; CPU is sampled during the hold. "
        "The count is bounded by the 20,000 hard open-file limit: a proxy needs two descriptors per "
        "relayed connection, so 10,000 cannot be held here.\n"
        "- nginx 1.22 (`bench/peers/nginx.conf.in`): `worker_processes 1`, `proxy_http_version 1.1`, "
        "`Upgrade`/`Connection` headers from `$http_upgrade`, `proxy_buffering off`, "
        "`proxy_read_timeout`/`proxy_send_timeout 1h`, `tcp_nodelay on`, `access_log off`, "
        "`listen ... deferred` (TCP_DEFER_ACCEPT, as wsgate's listener), "
        "`X-Forwarded-For`/`-Proto`/`-Host` and `X-Request-ID` set (as wsgate sets them), "
        "`worker_connections` 2 × idle + 10 % (below 1/16 free it drops connections awaiting their request); "
        "buffers left at nginx's default (`proxy_buffer_size` one page).\n"
        "- HAProxy 2.6 (`bench/peers/haproxy.cfg.in`): `mode http`, `nbthread 1`, `timeout tunnel 1h`, "
        "`option http-no-delay` (interactive traffic), `bind ... defer-accept` (as wsgate's listener), "
        "`option forwardfor` plus `X-Forwarded-Proto`/`-Host` and `X-Request-ID` (a `unique-id`) set, "
        "`timeout client/server 60s`, `maxconn` idle + 32, no logging.\n"
        "- wsgate (`bench/peers/wsgate-routes.yaml.in`): `wsgate run --routes` with one WsRoute "
        "`/{everything}` → the echo backend, `RUST_LOG=warn`, otherwise its defaults: one worker "
        "and one relay thread, to which a relay moves after 128 messages (inside the warm-up of "
        "scenarios 1–3; scenario 4's and 5's connections never move).\n"
        "- wss (the rows marked wss): the same scenarios with TLS between the load generator and the "
        "proxy, ws from the proxy to the same echo backend. Every proxy terminates TLS with the same "
        "settings: TLS 1.3 only, TLS_AES_128_GCM_SHA256, X25519, one ECDSA P-256 certificate "
        "generated by `openssl` for the run (wsgate `--tls-listen` with `--default-cert/--default-key`; "
        "nginx `listen ... ssl` with `ssl_protocols TLSv1.3`, `ssl_ecdh_curve X25519`, "
        "`ssl_conf_command Ciphersuites`; HAProxy `bind ... ssl crt` with `ssl-min-ver TLSv1.3`, "
        "`ciphersuites`, `curves X25519`; session tickets at each proxy's default). The load generator "
        "(rustls, ring provider) offers only that suite, X25519 first, and pins the certificate; what "
        "each handshake negotiated is counted below. Direct over wss is `loadgen tls-echo` (rustls + "
        "fastwebsockets, on the backend's core), none of the compared proxies. Every wss connection "
        "makes a full handshake (resumption off) except in 4r, which resumes TLS 1.3 sessions; CPU per "
        "message or MB includes the setup of the run's 100 (scenario 1) or 10 connections, as on ws.\n"
    )
    out.append("## Results (medians)\n")
    out.append("Ratios in parentheses are to direct; latency rows show µs added over direct.\n")
    out.append(headline_table(values, present))
    out.append("")
    negotiated = tls_table(runs, present)
    if negotiated:
        out.append("### TLS negotiated (every wss run, as the load generator saw it)\n")
        out.append(negotiated)
        out.append("")
    verdicts = proxy_verdicts(values, present)
    if verdicts:
        out.append("### wsgate against the better of nginx and HAProxy\n")
        out.extend(verdicts)
        out.append("")
    out.append("### Every round\n")
    out.append(rounds_table(values, present))
    out.append("")
    out.append("## Commands\n")
    out.append("Processes under test (started by `run.sh`; `RUST_LOG=warn` for wsgate; paths are the run's "
               "temporary directory):\n")
    out.append("```")
    out.extend(m.get("started", []))
    out.append("```\n")
    out.append("Load, one line per scenario and target:\n")
    out.append("```")
    out.append("bench/run.sh" + (" --quick" if m.get("mode") == "quick" else "")
               + ("" if not missing else f" --targets {','.join(present)}"))
    out.extend(commands(runs, present))
    out.append("```\n")
    out.append("Scenario 6 (control plane: compiling 10,000 routes, endpoint-change propagation) is not "
               "part of this harness; see `bench/README.md`.\n")
    out.append(NOTES_MARKER)
    if kept_notes:
        out.append(kept_notes.rstrip("\n"))
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs")
    parser.add_argument("--meta")
    parser.add_argument("--out")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--one-line")
    parser.add_argument(
        "--scenarios",
        default="throughput,bulk,latency,handshakes,idle,"
        "wss-throughput,wss-bulk,wss-latency,wss-handshakes,wss-resumed,wss-idle",
    )
    args = parser.parse_args()
    if args.one_line:
        try:
            print(one_line(args.one_line))
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"(unreadable result: {error})")
        return 0
    if not (args.runs and args.meta and args.out):
        parser.error("--runs, --meta and --out are required")
    runs = load_runs(args.runs)
    with open(args.meta, encoding="utf-8") as handle:
        meta = json.load(handle)
    targets = [t for t in meta.get("targets", ",".join(TARGETS)).split(",") if t]
    kept = ""
    try:
        with open(args.out, encoding="utf-8") as handle:
            previous = handle.read()
        if NOTES_MARKER in previous:
            kept = previous.split(NOTES_MARKER, 1)[1].lstrip("\n")
    except OSError:
        pass
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(render(runs, meta, targets, kept))
    if args.check:
        problems = check(runs, targets, args.scenarios.split(","))
        if problems:
            for problem in problems:
                print(f"report.py: {problem}", file=sys.stderr)
            return 1
        print(f"bench smoke: every scenario produced numbers for {', '.join(targets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
