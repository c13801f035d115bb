#!/usr/bin/env python3
"""Instructions per request of the gateway's own process, counted by valgrind's callgrind.

The load benchmark's rates move with the machine (on this two-core host, nginx's own HTTP/2
rate has ranged from 31k to 51k requests per second within an hour), so a change of a few per
cent to the gateway cannot be told from noise by rates. callgrind counts the instructions the
gateway executes in user space, which repeat for the same binary and requests whatever else the
machine does. The kernel's share is not counted: system calls show in the load benchmark.

Each binary runs under callgrind on the TLS benchmark's setup (one ECDSA P-256 certificate, an
nginx `return 200` upstream, the benchmark's identity provider and reused JWT), is warmed up,
has its counters zeroed, serves `--requests` requests per scenario, and is dumped.

  python3 benches/load/instructions.py [--requests N] BINARY [BINARY ...]

Scenarios: HTTP/1.1 over TLS (h2load --h1: wrk cannot send a fixed count) and HTTP/2
(h2load), each to `auth = "none"` and to the JWT route, over 16 kept-alive connections.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  the load benchmark's own setup


# More callgrind options, e.g. CALLGRIND_ARGS=--cache-sim=yes (the dumps then hold simulated
# cache misses too; the report stays instructions).
EXTRA = os.environ.get("CALLGRIND_ARGS", "").split()

SCENARIOS = [
    ("HTTP/1.1 TLS, auth = none", "/none", True, False),
    ("HTTP/1.1 TLS, JWT, one reused token", "/jwt", True, True),
    ("HTTP/2, auth = none", "/none", False, False),
    ("HTTP/2, JWT, one reused token", "/jwt", False, True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000, help="requests per scenario")
    ap.add_argument("--nginx", action="store_true", help="count nginx terminating TLS too, "
                    "sent the same requests (the JWT rows' token dropped, as in run.py)")
    ap.add_argument("binaries", nargs="+", help="portcullis binaries to count")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx"):
        if not (subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0
                or os.path.exists(f"/usr/sbin/{tool}")):
            sys.exit(f"{tool} is needed: run scripts/setup.sh bench and apt-get install valgrind")
    work = tempfile.mkdtemp(prefix="portcullis-instr-")
    procs = []
    try:
        rows = count(args, work, procs)
    finally:
        run.stop_all(procs, 20)
    names = [os.path.basename(os.path.dirname(b)) or b for b in args.binaries]
    if args.nginx:
        names, args.binaries = ["nginx"] + names, ["nginx"] + args.binaries
    print(f"\nuser-space instructions per request (callgrind), {args.requests} requests per "
          f"scenario; the callgrind dumps are in {work}\n")
    print("| scenario | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for name, *_ in SCENARIOS:
        print(f"| {name} | " + " | ".join(f"{rows[b][name]:,.0f}" for b in args.binaries) + " |")


def count(args, work, procs):
    key, cert = run.make_certificate(work)
    issuer = run.start_idp(procs, [run.LOAD_CORE], work, 10)
    upstream_port = run.free_port()
    run.spawn(procs, [run.LOAD_CORE], run.nginx_cmd(work, "upstream",
                                                    run.upstream_config(upstream_port)),
              work, "upstream")
    with open(os.path.join(work, "reused.txt")) as f:
        bearer = f"Authorization: Bearer {f.readline().strip()}"
    rows = {}
    if args.nginx:
        rows["nginx"] = count_nginx(args, work, procs, upstream_port, cert, key, bearer)
    for i, binary in enumerate(args.binaries):
        port, admin = run.free_port(), run.free_port()
        text = run.tls_gateway_config(port, admin, issuer, upstream_port, cert, key)
        conf = run.write(work, f"gw{i}.toml", text)
        out = os.path.join(work, f"callgrind-{i}.out")
        gateway = run.spawn(procs, [run.PROXY_CORE],
                            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *EXTRA,
                             binary, "run", "--config", conf], work, f"gw{i}")
        run.wait_ready(f"http://127.0.0.1:{admin}/readyz", 120)
        rows[binary] = {}
        rows[binary] = scenarios(args, gateway, out, port, bearer, binary)
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
    return rows


def count_nginx(args, work, procs, upstream_port, cert, key, bearer):
    """nginx terminating TLS in one worker process, as in run.py, under callgrind."""
    port = run.free_port()
    text = run.tls_proxy_config(port, upstream_port, cert, key)
    out = os.path.join(work, "callgrind-nginx.out")
    nginx = run.spawn(procs, [run.PROXY_CORE], ["valgrind", "--tool=callgrind",
                                                f"--callgrind-out-file={out}", *EXTRA]
                      + run.nginx_cmd(work, "proxy", text), work, "nginx")
    deadline = time.monotonic() + 120
    while subprocess.run(["curl", "-ksf", "-o", "/dev/null", f"https://127.0.0.1:{port}/"]).returncode:
        if time.monotonic() > deadline:
            sys.exit("nginx under callgrind did not answer")
        time.sleep(0.2)
    # nginx routes by path only: /none and /jwt reach the same upstream, /jwt without the token.
    found = scenarios(args, nginx, out, port, bearer, "nginx")
    nginx.send_signal(signal.SIGTERM)
    nginx.wait(timeout=60)
    return found


def scenarios(args, proc, out, port, bearer, label):
    """Each scenario's instructions per request in `proc`, running under callgrind."""
    found = {}
    for name, path, h1, token in SCENARIOS:
        url = f"https://127.0.0.1:{port}{path}"
        load(url, h1, token and bearer, 200)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                       capture_output=True)
        load(url, h1, token and bearer, args.requests)
        dumped = subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                                capture_output=True, text=True)
        found[name] = instructions(out, dumped.stdout) / args.requests
        run.log(f"{label}: {name}: {found[name]:,.0f} instructions per request")
    return found


def load(url, h1, header, n):
    """n requests over 16 connections (4 streams each on HTTP/2); every answer must be 2xx."""
    cmd = ["taskset", "-c", run.LOAD_CORE, "h2load", "-t1", "-c16", f"-n{n}"]
    cmd += ["--h1"] if h1 else ["-m4"]
    if header:
        cmd += ["-H", header]
    done = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=600)
    m = re.search(r"status codes: (\d+) 2xx", done.stdout)
    if not m or int(m.group(1)) != n:
        sys.exit(f"h2load did not get {n} 2xx answers:\n{done.stdout}{done.stderr}")


def instructions(out, dumped):
    """The Ir total of the newest dump of `out` (callgrind writes out.N per dump)."""
    base = os.path.basename(out)
    dumps = sorted((f for f in os.listdir(os.path.dirname(out)) if f.startswith(base + ".")),
                   key=lambda f: int(f.rsplit(".", 1)[1]))
    if not dumps:
        sys.exit(f"callgrind wrote no dump: {dumped}")
    with open(os.path.join(os.path.dirname(out), dumps[-1])) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    sys.exit(f"no totals in {dumps[-1]}")


if __name__ == "__main__":
    main()
