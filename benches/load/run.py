#!/usr/bin/env python3
"""The load benchmark: Portcullis beside nginx and the bare upstream, in one run, on loopback.

    benches/load/run.py [--rounds 5] [--duration 8] [--warmup 2] [--connections 256]

It installs what it lacks (scripts/setup.sh bench: nginx, wrk, openssl, taskset), builds the
release binary and the benchmark's identity provider (benches/load/idp.rs), starts everything
itself on 127.0.0.1, and prints a markdown report (also written to target/load-report.md).

Peers: the upstream alone (the ceiling), nginx as a plain reverse proxy (the baseline), and
hyper forwarding with nothing else (benches/load/bare_hyper.rs, the bound Portcullis is built
on). Fairness on a 2-core machine: the proxy under test (nginx, bare hyper, or Portcullis with every
one of its threads) is pinned to core 0; the load generator (wrk, one thread), the upstream (nginx
`return 200`, one process) and the identity provider share core 1. Every proxy runs one worker.
Each round runs every scenario once, in alternating order, and the report gives medians over the
rounds. The crypto ceilings come from `openssl speed` on core 0 in the same run. Beside each
rate, the report gives the proxy's CPU time per request, user and kernel (/proc/<pid>/stat): the
proxy's core is saturated, so that is the cost that sets the rate.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROXY_CORE = "0"
LOAD_CORE = "1"
SECRET_ENV = "PORTCULLIS_BENCH_INTROSPECTION_SECRET"

# (name, process under test, path, token file or None, expected status class)
SCENARIOS = [
    ("upstream direct", "upstream", "/", None, "2xx"),
    ("nginx proxy, no auth", "nginx", "/", None, "2xx"),
    ("hyper bare proxy, no auth (bound)", "bare", "/", None, "2xx"),
    ("portcullis, auth = none", "cached", "/none", None, "2xx"),
    ("portcullis, JWT, one reused token", "cached", "/jwt", "reused.txt", "2xx"),
    ("portcullis, 10k RS256 tokens, no cache", "nocache", "/jwt", "rs256.txt", "2xx"),
    ("portcullis, 10k ES256 tokens, no cache", "nocache", "/jwt", "es256.txt", "2xx"),
    ("portcullis, 10k forged RS256 tokens", "nocache", "/jwt", "forged.txt", "401"),
    ("portcullis, 1k opaque tokens, cached", "cached", "/opaque", "opaque.txt", "2xx"),
    # The reused JWT sent to the auth = none route, which ignores it. Against "none" it prices
    # carrying a 700-byte header through the data plane; against "jwt", checking it.
    ("portcullis, auth = none, reused JWT sent anyway", "cached", "/none", "reused.txt", "2xx"),
    # The reused JWT on a route with a rate limit by `sub` that never triggers: what counting
    # every request costs (against "jwt").
    ("portcullis, JWT, one reused token, rate-limited route", "cached", "/jwt-limited",
     "reused.txt", "2xx"),
    # The reused bound token with a fresh ES256 proof per request (RFC 9449): one more
    # signature check and a replay-cache insert per request (against "jwt").
    ("portcullis, DPoP, one reused token, fresh ES256 proof per request", "cached", "/dpop",
     "dpop", "2xx"),
]
# Short names for --only, in the order above.
KEYS = ["direct", "nginx", "bare", "none", "jwt", "rs256", "es256", "forged", "opaque", "none+jwt",
        "jwt+limit", "dpop"]
# Proofs minted per second of a DPoP run: above any rate one proxy core reaches, since a proof
# is accepted once and a run that ran out would replay.
DPOP_PROOFS_PER_SECOND = 40000

WRK_DYNAMIC = r"""
local reqs, i = {}, 0
init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. line })
    end
  end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
"""

WRK_DPOP = r"""
local token, proofs
init = function(args)
  proofs = assert(io.open(args[1]))
  token = assert(io.open(args[2])):read("*l")
end
request = function()
  local proof = proofs:read("*l")
  if not proof then
    error("out of DPoP proofs: raise DPOP_PROOFS_PER_SECOND in run.py")
  end
  return wrk.format(nil, nil, { ["Authorization"] = "DPoP " .. token, ["DPoP"] = proof,
                                ["Host"] = "bench.example" })
end
"""

WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8, help="seconds measured per scenario and round")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each")
    ap.add_argument("--connections", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=10000, help="distinct tokens per scenario")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--only", help="a comma-separated subset of " + ",".join(KEYS) + ", e.g. "
                    "none,jwt: more rounds of fewer scenarios give a tighter ratio; the report "
                    "then gives each scenario's ratio to the first one named")
    ap.add_argument("--two-workers", action="store_true", help="instead: nginx with "
                    "worker_processes 2 and Portcullis with threads = 2, on both cores, with wrk "
                    "(two threads) on the same two cores; the proxy shares its cores with the "
                    "load, so the figures are labelled as such")
    ap.add_argument("--tls", action="store_true", help="instead: TLS termination beside nginx "
                    "terminating TLS with the same ECDSA P-256 certificate (HTTP/1.1 keep-alive, "
                    "and new connections per second with Connection: close)")
    ap.add_argument("--perf", action="store_true", help="record the proxy under test with perf "
                    "during each scenario's first measured run: target/perf-<scenario>.data, and "
                    "the top functions printed")
    args = ap.parse_args()
    if args.only:
        unknown = set(args.only.split(",")) - set(KEYS)
        if unknown:
            sys.exit(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(KEYS)}")
    if os.cpu_count() < 2:
        sys.exit("the load benchmark needs two cores: one for the proxy, one for the load")

    subprocess.run([os.path.join(ROOT, "scripts/setup.sh"), "bench"], check=True)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "portcullis",
                        "--example", "load_idp", "--example", "load_bare_hyper"],
                       cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="portcullis-load-")
    procs = []
    try:
        if args.two_workers:
            report = run_two_workers(args, work, procs)
        elif args.tls:
            report = run_tls(args, work, procs)
        else:
            report = run(args, work, procs)
    finally:
        stop_all(procs, 10)
    shutil.rmtree(work, ignore_errors=True)
    print(report)
    out = os.path.join(ROOT, "target", "load-report.md")
    with open(out, "w") as f:
        f.write(report)
    print(f"(written to {out})", file=sys.stderr)


def run(args, work, procs):
    rsa_verify = p256_verify = None
    if not args.only:
        log("openssl speed on core %s" % PROXY_CORE)
        rsa_verify = openssl_verify_rate("rsa2048", "rsa 2048 bits")
        p256_verify = openssl_verify_rate("ecdsap256", "nistp256")

    log("minting tokens and starting the identity provider")
    issuer = start_idp(procs, [LOAD_CORE], work, args.tokens)

    upstream_port = free_port()
    upstream = spawn(procs, [LOAD_CORE], nginx_cmd(work, "upstream", upstream_config(upstream_port)),
                     work, "upstream")
    nginx_port = free_port()
    nginx = spawn(procs, [PROXY_CORE], nginx_cmd(work, "proxy", proxy_config(nginx_port, upstream_port)),
                  work, "nginx")
    bare_port = free_port()
    bare = spawn(procs, [PROXY_CORE], [binary("examples/load_bare_hyper"), f"127.0.0.1:{bare_port}",
                                       f"127.0.0.1:{upstream_port}"], work, "bare")
    gateways = {}
    for name, cache in (("cached", True), ("nocache", False)):
        port, admin = free_port(), free_port()
        conf = write(work, f"{name}.toml", gateway_config(port, admin, issuer, upstream_port, cache))
        proc = spawn(procs, [PROXY_CORE], [binary("portcullis"), "run", "--config", conf], work, name)
        gateways[name] = (proc, port, admin)
    for name, (_, _, admin) in gateways.items():
        wait_ready(f"http://127.0.0.1:{admin}/readyz", 30)
    for port in (upstream_port, nginx_port, bare_port):
        wait_ready(f"http://127.0.0.1:{port}/", 30)

    targets = {"upstream": (upstream, upstream_port), "nginx": (nginx, nginx_port),
               "bare": (bare, bare_port)}
    targets.update({k: (p, port) for k, (p, port, _) in gateways.items()})
    static = write(work, "static.lua", WRK_DONE)
    dynamic = write(work, "dynamic.lua", WRK_DYNAMIC + WRK_DONE)
    dpop_script = write(work, "dpop.lua", WRK_DPOP + WRK_DONE)
    chosen = ([SCENARIOS[KEYS.index(k)] for k in args.only.split(",")] if args.only
              else SCENARIOS)
    results = {s[0]: [] for s in chosen}
    for r in range(args.rounds):
        order = chosen if r % 2 == 0 else list(reversed(chosen))
        for name, target, path, tokens, expect in order:
            proc, port = targets[target]
            url = f"http://127.0.0.1:{port}{path}"
            script = [dynamic, os.path.join(work, tokens)] if tokens else [static]
            if tokens == "dpop":
                script = lambda seconds: [dpop_script, mint_proofs(issuer, work, seconds),
                                          os.path.join(work, "dpop-token.txt")]
            log(f"round {r + 1}/{args.rounds}: {name}")
            reset_peak_rss(proc.pid)
            wrk(args, url, script, args.warmup)
            perf = start_perf(proc.pid, KEYS[SCENARIOS.index((name, target, path, tokens, expect))],
                              args.duration) if args.perf and r == 0 else None
            before = cpu_seconds(proc.pid)
            m = wrk(args, url, script, args.duration)
            used = [b - a for a, b in zip(before, cpu_seconds(proc.pid))]
            m["user_us"], m["kernel_us"] = (s * 1e6 / max(m["requests"], 1) for s in used)
            if perf:
                perf.wait()
            m["rss"] = peak_rss_mib(proc.pid)
            if expect == "2xx" and m["errors"]:
                sys.exit(f"{name}: {m['errors']} errors or non-2xx answers; see {work}")
            if expect == "401" and m["errors"] < m["requests"]:
                sys.exit(f"{name}: some forged tokens were not refused")
            results[name].append(m)

    stats = json.loads(urllib.request.urlopen(issuer + "/stats").read())
    if args.only:
        return render_subset(args, results)
    starts = [start_to_ready(work, issuer, upstream_port) for _ in range(5)]
    return render(args, results, rsa_verify, p256_verify, stats, starts)


def start_idp(procs, cores, work, tokens):
    """The identity provider of the benchmark, minting `tokens` tokens: its issuer URL."""
    idp = spawn(procs, cores, [binary("examples/load_idp"), work, str(tokens)], work, "idp",
                stdout=subprocess.PIPE)
    line = idp.stdout.readline().decode()
    if not line.startswith("ready "):
        sys.exit(f"load_idp did not start: {line!r}")
    return line.split()[1]


def run_two_workers(args, work, procs):
    """nginx (2 workers) and Portcullis (threads = 2) beside each other, everything on both
    cores: what a two-core host sees with the load generator on the same host."""
    both = [PROXY_CORE, LOAD_CORE]
    issuer = start_idp(procs, both, work, 10)
    upstream_port = free_port()
    spawn(procs, both, nginx_cmd(work, "upstream", upstream_config(upstream_port), workers=2),
          work, "upstream")
    nginx_port = free_port()
    nginx = spawn(procs, both, nginx_cmd(work, "proxy", proxy_config(nginx_port, upstream_port),
                                         workers=2), work, "nginx")
    port, admin = free_port(), free_port()
    conf = write(work, "two.toml", gateway_config(port, admin, issuer, upstream_port, True, threads=2))
    spawn(procs, both, [binary("portcullis"), "run", "--config", conf], work, "two")
    wait_ready(f"http://127.0.0.1:{admin}/readyz", 30)
    wait_ready(f"http://127.0.0.1:{nginx_port}/", 30)
    static = write(work, "static.lua", WRK_DONE)
    dynamic = write(work, "dynamic.lua", WRK_DYNAMIC + WRK_DONE)
    dpop_script = write(work, "dpop.lua", WRK_DPOP + WRK_DONE)
    chosen = [("nginx proxy (2 workers), no auth", nginx_port, "/", None),
              ("portcullis (threads = 2), auth = none", port, "/none", None),
              ("portcullis (threads = 2), JWT, one reused token", port, "/jwt", "reused.txt")]
    results = {c[0]: [] for c in chosen}
    for r in range(args.rounds):
        for name, target_port, path, tokens in (chosen if r % 2 == 0 else chosen[::-1]):
            url = f"http://127.0.0.1:{target_port}{path}"
            script = [dynamic, os.path.join(work, tokens)] if tokens else [static]
            log(f"round {r + 1}/{args.rounds}: {name}")
            wrk(args, url, script, args.warmup, cores=",".join(both), threads=2)
            m = wrk(args, url, script, args.duration, cores=",".join(both), threads=2)
            if m["errors"]:
                sys.exit(f"{name}: {m['errors']} errors or non-2xx answers; see {work}")
            results[name].append(m)
    base = chosen[0][0]
    lines = [
        "# Portcullis load benchmark, two workers sharing two cores with the load",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.rounds} rounds of {args.duration} s after "
        f"{args.warmup} s of warm-up; {args.connections} connections, wrk with two threads. Every "
        "process (wrk, the upstream nginx, the proxy under test, the identity provider) runs on "
        "both cores, so each proxy shares its cores with the load it serves: these figures are "
        "not per-core costs.",
        "",
        "| scenario | req/s | × nginx (2 workers) | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in results:
        runs = results[name]
        ratio = statistics.median(x["rps"] / y["rps"] for x, y in zip(runs, results[base]))
        lines.append(f"| {name} | {statistics.median(m['rps'] for m in runs):,.0f} | {ratio:.2f} "
                     f"| {statistics.median(m['p50'] for m in runs) / 1000:.2f} "
                     f"| {statistics.median(m['p99'] for m in runs) / 1000:.2f} |")
    return "\n".join(lines) + "\n"


SAME_H1 = "nginx TLS proxy, the JWT rows' request (token sent, dropped)"
SAME_H2 = "nginx TLS, HTTP/2, the JWT rows' request (token sent, dropped)"


def run_tls(args, work, procs):
    """Portcullis terminating TLS beside nginx terminating TLS, the same certificate (ECDSA
    P-256) and the same upstream; each proxy on core 0, wrk and the upstream on core 1."""
    key, cert = make_certificate(work)
    issuer = start_idp(procs, [LOAD_CORE], work, 10)
    upstream_port = free_port()
    spawn(procs, [LOAD_CORE], nginx_cmd(work, "upstream", upstream_config(upstream_port)),
          work, "upstream")
    nginx_port = free_port()
    tls_proxy = tls_proxy_config(nginx_port, upstream_port, cert, key)
    nginx = spawn(procs, [PROXY_CORE], nginx_cmd(work, "proxy", tls_proxy), work, "nginx")
    port, admin = free_port(), free_port()
    text = tls_gateway_config(port, admin, issuer, upstream_port, cert, key)
    gateway = spawn(procs, [PROXY_CORE], [binary("portcullis"), "run", "--config",
                                          write(work, "tls.toml", text)], work, "tls")
    wait_ready(f"http://127.0.0.1:{admin}/readyz", 30)
    time.sleep(0.5)
    static = write(work, "static.lua", WRK_DONE)
    dynamic = write(work, "dynamic.lua", WRK_DYNAMIC + WRK_DONE)
    close = ["Connection: close"]
    with open(os.path.join(work, "reused.txt")) as f:
        reused = f.readline().strip()
    bearer = [f"Authorization: Bearer {reused}"]
    # nginx is also sent the very request the JWT rows send, token included, and drops the
    # token before forwarding, as Portcullis does: the like-for-like baseline of those rows
    # (the token's bytes through TLS, the parser and HPACK cost nginx too), reported beside
    # the usual one.
    chosen = [
        ("nginx TLS proxy, no auth", nginx, nginx_port, "/", None, []),
        (SAME_H1, nginx, nginx_port, "/jwt", None, bearer),
        ("portcullis TLS, auth = none", gateway, port, "/none", None, []),
        ("portcullis TLS, JWT, one reused token", gateway, port, "/jwt", "reused.txt", []),
        ("nginx TLS, new connection per request", nginx, nginx_port, "/", None, close),
        ("portcullis TLS, new connection per request, auth = none", gateway, port, "/none", None,
         close),
    ]
    # HTTP/2 by ALPN, driven by h2load (wrk offers no ALPN, so it gets HTTP/1.1 from both).
    chosen += [
        ("nginx TLS, HTTP/2, no auth", nginx, nginx_port, "/", "h2", []),
        (SAME_H2, nginx, nginx_port, "/jwt", "h2", bearer),
        ("portcullis TLS, HTTP/2, auth = none", gateway, port, "/none", "h2", []),
        ("portcullis TLS, HTTP/2, JWT, one reused token", gateway, port, "/jwt", "h2", bearer),
    ]
    results = {c[0]: [] for c in chosen}
    for r in range(args.rounds):
        for name, proc, target_port, path, tokens, headers in (chosen if r % 2 == 0 else chosen[::-1]):
            url = f"https://127.0.0.1:{target_port}{path}"
            log(f"round {r + 1}/{args.rounds}: {name}")
            recorded = args.perf and r == 0 and proc is gateway
            slug = "tls-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            if tokens == "h2":
                h2load(args, url, args.warmup, headers)
                perf = start_perf(proc.pid, slug, args.duration) if recorded else None
                before = cpu_seconds(proc.pid)
                m = h2load(args, url, args.duration, headers)
            else:
                script = [dynamic, os.path.join(work, tokens)] if tokens else [static]
                wrk(args, url, script, args.warmup, headers=headers)
                perf = start_perf(proc.pid, slug, args.duration) if recorded else None
                before = cpu_seconds(proc.pid)
                m = wrk(args, url, script, args.duration, headers=headers)
            used = [b - a for a, b in zip(before, cpu_seconds(proc.pid))]
            if perf:
                perf.wait()
            m["user_us"], m["kernel_us"] = (s * 1e6 / max(m["requests"], 1) for s in used)
            if m["errors"]:
                sys.exit(f"{name}: {m['errors']} errors or non-2xx answers; see {work}")
            results[name].append(m)
    def med(name, key="rps"):
        return statistics.median(m[key] for m in results[name])

    def ratio(a, b):
        return statistics.median(x["rps"] / y["rps"] for x, y in zip(results[a], results[b]))

    lines = [
        "# Portcullis load benchmark: TLS termination beside nginx",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.rounds} rounds of {args.duration} s after "
        f"{args.warmup} s of warm-up; {args.connections} connections; HTTP/1.1. One ECDSA P-256 "
        "certificate for both; nginx with ssl_protocols TLSv1.2 TLSv1.3 and session tickets. "
        "The proxy under test on core 0; wrk (one thread) and the upstream nginx on core 1. "
        "\"New connection per request\": wrk sends Connection: close, so each request is a new "
        "TCP connection and a full TLS handshake (wrk does not resume sessions). \"HTTP/2\": "
        f"h2load (one thread) over {h2_connections(args)} connections of {H2_STREAMS} streams each "
        "(the same number of requests in flight), ALPN h2; h2load reports no percentiles, so its "
        "rows show the mean request time in the p50 column and none in p99.",
        "",
        "\"× nginx, same request\": the JWT rows against nginx sent the same request, the "
        "reused token included, which nginx drops before forwarding (as Portcullis does).",
        "",
        "| scenario | req/s | × nginx TLS (same kind) | × nginx, same request | p50 ms | p99 ms "
        "| CPU µs/request, user + kernel |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in results:
        h2 = "HTTP/2" in name
        base = ("nginx TLS, new connection per request" if "new connection" in name
                else "nginx TLS, HTTP/2, no auth" if h2
                else "nginx TLS proxy, no auth")
        same = ((SAME_H2 if h2 else SAME_H1) if "JWT" in name and name not in (SAME_H1, SAME_H2)
                else None)
        same_ratio = f"{ratio(name, same):.2f}" if same else "–"
        lines.append(f"| {name} | {med(name):,.0f} | {ratio(name, base):.2f} | {same_ratio} "
                     f"| {med(name, 'p50') / 1000:.2f} | {ms(med(name, 'p99'))} "
                     f"| {cpu_split(results[name])} |")
    return "\n".join(lines) + "\n"


def ms(us):
    return "–" if us != us else f"{us / 1000:.2f}"


def render_subset(args, results):
    """The --only report: medians, and each scenario against the first one named."""
    names = list(results)
    base = names[0]
    lines = [
        "# Portcullis load benchmark (subset)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.rounds} rounds of {args.duration} s after "
        f"{args.warmup} s of warm-up; {args.connections} connections. Ratios are medians of the "
        "per-round ratios to the first scenario.",
        "",
        f"| scenario | req/s | × {base} | p50 ms | p99 ms | CPU µs/request, user + kernel "
        "| ratio per round |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        runs = results[name]
        per_round = [x["rps"] / y["rps"] for x, y in zip(runs, results[base])]
        lines.append(
            f"| {name} | {statistics.median(m['rps'] for m in runs):,.0f} "
            f"| {statistics.median(per_round):.3f} "
            f"| {statistics.median(m['p50'] for m in runs) / 1000:.2f} "
            f"| {statistics.median(m['p99'] for m in runs) / 1000:.2f} "
            f"| {cpu_split(runs)} | {', '.join(f'{x:.2f}' for x in per_round)} |")
    return "\n".join(lines) + "\n"


def cpu_split(runs):
    """The proxy's median CPU time per request: user + kernel, in µs."""
    user = statistics.median(m["user_us"] for m in runs)
    kernel = statistics.median(m["kernel_us"] for m in runs)
    return f"{user:.1f} + {kernel:.1f}"


def render(args, results, rsa_verify, p256_verify, stats, starts):
    """Absolute figures are medians over rounds; every ratio is the median of the per-round
    ratios, so both sides of a ratio were measured in the same round, minutes apart at most."""
    none, jwt = "portcullis, auth = none", "portcullis, JWT, one reused token"
    rs, es = "portcullis, 10k RS256 tokens, no cache", "portcullis, 10k ES256 tokens, no cache"
    forged, bare = "portcullis, 10k forged RS256 tokens", "hyper bare proxy, no auth (bound)"
    nginx, direct = "nginx proxy, no auth", "upstream direct"
    carried = "portcullis, auth = none, reused JWT sent anyway"

    def med(name, key):
        return statistics.median(m[key] for m in results[name])

    def ratio(a, b, key="rps"):
        return statistics.median(x[key] / y[key] for x, y in zip(results[a], results[b]))

    def vs_ceiling(name, verify, n):
        """Rate over the combined ceiling 1 / (1/V + 1/N), N from the same round."""
        return statistics.median(x["rps"] * (1 / verify + 1 / y["rps"])
                                 for x, y in zip(results[name], results[n]))

    lines = [
        "# Portcullis load benchmark",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.rounds} rounds of {args.duration} s per scenario "
        f"after {args.warmup} s of warm-up; {args.connections} connections, wrk with one thread; "
        f"proxy pinned to core {PROXY_CORE}, wrk, upstream and identity provider to core {LOAD_CORE}. "
        "Absolute figures are medians over rounds, ratios medians of the per-round ratios; peak RSS "
        "is the highest VmHWM of any round.",
        "",
        "| scenario | req/s | × nginx | × direct | p50 ms | p99 ms | p99 × nginx | peak RSS MiB "
        "| CPU µs/request, user + kernel |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in results:
        rss = max(m["rss"] for m in results[name])
        lines.append(
            f"| {name} | {med(name, 'rps'):,.0f} | {ratio(name, nginx):.2f} | {ratio(name, direct):.2f} "
            f"| {med(name, 'p50') / 1000:.2f} | {med(name, 'p99') / 1000:.2f} "
            f"| {ratio(name, nginx, 'p99'):.2f} | {rss:.1f} | {cpu_split(results[name])} |")

    def ceiling(v, n):
        return 1 / (1 / v + 1 / med(n, "rps"))

    gw_rss = max(m["rss"] for name, runs in results.items() if name.startswith("portcullis")
                 for m in runs)
    start_ms = statistics.median(starts) * 1000
    checks = [
        ("bare hyper forwarder vs nginx plain proxy, req/s", ratio(bare, nginx), ">=", 0.8),
        ("Portcullis auth = none vs nginx plain proxy, req/s", ratio(none, nginx), ">=", 0.75),
        ("JWT route (reused token) vs nginx plain proxy, req/s", ratio(jwt, nginx), ">=", 0.70),
        ("JWT route (reused token) vs nginx plain proxy, p99", ratio(jwt, nginx, "p99"), "<=", 1.5),
        ("JWT route vs Portcullis auth = none, req/s", ratio(jwt, none), ">=", 0.95),
        ("10k RS256 vs ceiling (V = RSA-2048 verify, N = nginx)", vs_ceiling(rs, rsa_verify, nginx), ">=", 0.9),
        ("10k ES256 vs ceiling (V = P-256 verify, N = nginx)", vs_ceiling(es, p256_verify, nginx), ">=", 0.9),
        ("forged RS256 (401) vs valid RS256, req/s", ratio(forged, rs), ">=", 1.0),
        (f"peak RSS at {args.connections} connections, MiB", gw_rss, "<=", 48),
        ("start to ready (median of 5), ms", start_ms, "<=", 100),
    ]
    lines += [
        "",
        f"Crypto ceilings (`openssl speed`, one core): RSA-2048 verify {rsa_verify:,.0f}/s, "
        f"P-256 verify {p256_verify:,.0f}/s. Combined ceiling 1 / (1/V + 1/N) with N = nginx's "
        f"median {med(nginx, 'rps'):,.0f} req/s: RS256 {ceiling(rsa_verify, nginx):,.0f} req/s, "
        f"ES256 {ceiling(p256_verify, nginx):,.0f} req/s.",
        "",
        f"Against hyper forwarding alone (same hyper, allocator, one thread): auth = none "
        f"{ratio(none, bare):.2f}×, JWT reused token {ratio(jwt, bare):.2f}×; bare hyper is "
        f"{ratio(bare, nginx):.2f}× nginx. With Portcullis's own auth = none rate as N, the ceilings "
        f"are RS256 {ceiling(rsa_verify, none):,.0f} req/s (reached {vs_ceiling(rs, rsa_verify, none):.2f}×) "
        f"and ES256 {ceiling(p256_verify, none):,.0f} req/s (reached {vs_ceiling(es, p256_verify, none):.2f}×).",
        "",
        f"The JWT route against auth = none, split: sending the token to the auth = none route, "
        f"which ignores it, runs at {ratio(carried, none):.2f}× auth = none (the token's 700 bytes "
        f"through the kernel and the HTTP parser); checking it runs at {ratio(jwt, carried):.2f}× "
        f"that (bearer, cache key, cache, scopes, metrics, identity headers, the token's header "
        f"removed upstream).",
        "",
        "CPU per request is the proxy process's user and kernel time over the measured seconds, "
        "divided by the requests answered (/proc/<pid>/stat); the proxy's core is saturated in "
        "every scenario, so it is the cost that bounds the rate.",
        "",
        f"Identity provider calls over the whole run: JWKS {stats['jwks']}, introspection "
        f"{stats['introspect']} (cache misses of the opaque scenario; one per distinct token when "
        "the cache holds). Start to ready, ms: " + ", ".join(f"{s * 1000:.0f}" for s in starts) + ".",
        "",
        "| target | figure | goal | met |",
        "|---|---:|---:|---|",
    ]
    for what, figure, op, goal in checks:
        met = figure >= goal if op == ">=" else figure <= goal
        lines.append(f"| {what} | {figure:.2f} | {op} {goal} | {'yes' if met else 'NO'} |")
    lines += ["", "Per round (req/s): " + "; ".join(
        f"{name}: " + ", ".join(f"{m['rps']:,.0f}" for m in runs) for name, runs in results.items())]
    return "\n".join(lines) + "\n"


def mint_proofs(issuer, work, seconds):
    """A fresh file of DPoP proofs for one run of `seconds`, minted by the identity provider."""
    out = os.path.join(work, "dpop-proofs.txt")
    count = DPOP_PROOFS_PER_SECOND * seconds
    query = urllib.parse.urlencode({"count": count, "out": out})
    urllib.request.urlopen(urllib.request.Request(f"{issuer}/proofs?{query}", method="POST"),
                           timeout=600).read()
    return out


H2_STREAMS = 4


def h2_connections(args):
    return max(1, args.connections // H2_STREAMS)


def h2load(args, url, seconds, headers=()):
    """h2load over HTTP/2 (TLS, ALPN h2) for `seconds`: the rate, and the mean request time (in
    microseconds, as `p50`; h2load reports no percentiles)."""
    cmd = ["taskset", "-c", LOAD_CORE, "h2load", "-t1", f"-c{h2_connections(args)}",
           f"-m{H2_STREAMS}", f"-D{seconds}"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored", out)
    rate = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if not (done and rate and codes and mean):
        sys.exit(f"h2load printed no result:\n{out}")
    succeeded, failed, errored = map(int, done.groups())
    scale = {"us": 1, "ms": 1e3, "s": 1e6}[mean.group(2)]
    return {"requests": succeeded, "rps": float(rate.group(2)), "p50": float(mean.group(1)) * scale,
            "p99": float("nan"), "errors": failed + errored + succeeded - int(codes.group(1))}


def wrk(args, url, script, seconds, cores=LOAD_CORE, threads=1, headers=()):
    if callable(script):
        script = script(seconds)
    cmd = ["taskset", "-c", cores, "wrk", f"-t{threads}", f"-c{args.connections}", f"-d{seconds}s",
           "--timeout", "5s", "-s", script[0]]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    if len(script) > 1:
        cmd += ["--"] + script[1:]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if not result:
        sys.exit(f"wrk printed no result:\n{out}")
    requests, duration_us, p50, p99, errors = map(int, result[0].split()[1:])
    return {"requests": requests, "rps": requests / (duration_us / 1e6), "p50": p50, "p99": p99,
            "errors": errors}


def start_perf(pid, key, seconds):
    """perf record -g of `pid` for `seconds`, into target/perf-<key>.data."""
    data = os.path.join(ROOT, "target", f"perf-{key}.data")
    log(f"perf record -> {data}")
    # PERF_CALL_GRAPH=dwarf gives callers through code built without frame pointers.
    graph = os.environ.get("PERF_CALL_GRAPH", "fp")
    return subprocess.Popen(["perf", "record", "-F", "2000", "--call-graph", graph, "-p", str(pid), "-o", data,
                             "--", "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def openssl_verify_rate(algorithm, row):
    out = subprocess.run(["taskset", "-c", PROXY_CORE, "openssl", "speed", "-seconds", "3", algorithm],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if row in line:
            return float(line.split()[-1])
    sys.exit(f"no '{row}' row in openssl speed output:\n{out}")


def start_to_ready(work, issuer, upstream_port):
    """Seconds from exec to the first 200 from /readyz (keys fetched from loopback)."""
    port, admin = free_port(), free_port()
    conf = write(work, "start.toml", gateway_config(port, admin, issuer, upstream_port, True))
    started = time.monotonic()
    proc = subprocess.Popen(["taskset", "-c", PROXY_CORE, binary("portcullis"), "run", "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=gateway_env())
    try:
        wait_ready(f"http://127.0.0.1:{admin}/readyz", 10, poll=0.001)
        return time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def gateway_config(port, admin, issuer, upstream_port, cache, threads=1):
    return f"""
[server]
drain_delay = "0s"
listen = "127.0.0.1:{port}"
threads = {threads}
[metrics]
listen = "127.0.0.1:{admin}"
[upstream]
keepalive_pool_size = 512
[tokens]
cache_capacity = {100000 if cache else 0}
[[issuers]]
issuer = "{issuer}"
jwks_uri = "{issuer}/jwks"
audiences = ["bench-api"]
algorithms = ["RS256", "ES256"]
require_typ = true
[introspection]
endpoint = "{issuer}/introspect"
client_id = "bench"
client_secret_env = "{SECRET_ENV}"
audiences = ["bench-api"]
[[routes]]
name = "none"
path_prefix = "/none"
upstreams = ["127.0.0.1:{upstream_port}"]
auth = "none"
[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstreams = ["127.0.0.1:{upstream_port}"]
scopes = ["orders:read"]
token_types = ["jwt"]
[[routes]]
name = "jwt-limited"
path_prefix = "/jwt-limited"
upstreams = ["127.0.0.1:{upstream_port}"]
scopes = ["orders:read"]
token_types = ["jwt"]
[routes.rate_limit]
key = "sub"
requests = 1000000000
per = "1s"
[[routes]]
name = "dpop"
path_prefix = "/dpop"
upstreams = ["127.0.0.1:{upstream_port}"]
scopes = ["orders:read"]
token_types = ["jwt"]
dpop = "required"
[[routes]]
name = "opaque"
path_prefix = "/opaque"
upstreams = ["127.0.0.1:{upstream_port}"]
scopes = ["orders:read"]
token_types = ["opaque"]
"""


def gateway_env():
    return dict(os.environ, **{SECRET_ENV: "bench-secret", "RUST_LOG": "warn"})


NGINX_COMMON = """
daemon off;
master_process {master};
worker_processes {workers};
error_log {dir}/{name}-error.log warn;
pid {dir}/{name}.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/{name}-body;
  proxy_temp_path {dir}/{name}-proxy;
  {body}
}}
"""


def upstream_config(port):
    return f"""server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}"""


def make_certificate(work):
    """A fresh ECDSA P-256 certificate for localhost and 127.0.0.1: (key, cert) paths."""
    key, cert = os.path.join(work, "tls.key"), os.path.join(work, "tls.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def tls_proxy_config(port, upstream_port, cert, key):
    """nginx as the plain proxy, terminating TLS (HTTP/2 by ALPN) with `cert`."""
    return proxy_config(port, upstream_port).replace(
        f"listen 127.0.0.1:{port};",
        f"listen 127.0.0.1:{port} ssl http2; ssl_certificate {cert}; "
        f"ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets on;")


def tls_gateway_config(port, admin, issuer, upstream_port, cert, key):
    """Portcullis's benchmark configuration, terminating TLS with `cert`."""
    return gateway_config(port, admin, issuer, upstream_port, True).replace(
        "threads = 1", f'threads = 1\ntls_cert = "{cert}"\ntls_key = "{key}"')


def stop_all(procs, seconds):
    """SIGTERM every process started, then wait up to `seconds` each; kill what is left."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            p.kill()


def proxy_config(port, upstream_port):
    return f"""
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 512; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    # The TLS run's like-for-like baseline: the JWT rows' request, whose token nginx drops
    # before forwarding, as Portcullis does.
    location /jwt {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "";
    }}
  }}"""


def nginx_cmd(work, name, body, workers=1):
    # One worker runs without a master; several need one.
    text = NGINX_COMMON.format(dir=work, name=name, body=body, workers=workers,
                               master="on" if workers > 1 else "off")
    conf = write(work, f"{name}-nginx.conf", text)
    return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", work, "-c", conf]


def spawn(procs, cores, cmd, work, name, stdout=None):
    log_file = open(os.path.join(work, f"{name}.log"), "wb")
    proc = subprocess.Popen(["taskset", "-c", ",".join(cores)] + cmd, env=gateway_env(),
                            stdout=stdout or log_file, stderr=log_file)
    procs.append(proc)
    return proc


def wait_ready(url, seconds, poll=0.05):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(poll)
    sys.exit(f"{url} not ready within {seconds} s")


def cpu_seconds(pid):
    """(user, kernel) CPU seconds of a process and all its threads so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def reset_peak_rss(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name):
    return os.path.join(ROOT, "target", "release", name)


def write(work, name, text):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def log(msg):
    print(f"load: {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
