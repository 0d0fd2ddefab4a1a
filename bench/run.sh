#!/bin/sh
# baton vs nginx vs HAProxy as reverse proxies in front of the same nginx
# backend, in one run, same worker count, same logging (off).
# Usage: sh bench/run.sh [workers] [rounds] [seconds]
# LOGS=1 turns access logging on for all three proxies (combined format to
# a file; HAProxy's httplog to stdout redirected to a file), after the
# logging-off runs.
# OBSERVED=1 adds "baton-obs": a second baton with [incidents] recording,
# its admin address, and /api/state polled every 0.5 s (four open
# dashboards' worth), to show what the observing costs the gateway.
# BATON=PATH runs that binary instead of building this tree's.
# AB=PATH adds "baton-b": a second baton from that binary, in every round
# beside the first, and prints baton-b/baton. Two builds compared this way
# share each round's conditions; run separately, a sitting's drift (10-30%
# here) hides a change of a few percent. AB set to the same binary as
# BATON is the control: how far apart two identical gateways come out.
# H2=1 adds HTTP/2 without TLS (prior knowledge, h2c) after the HTTP/1.1
# rounds: `h2load -c16 -m16` against each proxy, same rounds, medians
# (nginx and HAProxy on a second port each; baton serves both on one).
# SAME=1 configures nginx and HAProxy to do what baton does by default on
# every request: send the upstream X-Forwarded-For, -Proto and -Host, Via
# and a request ID, and the client Via and the request ID. The backend then
# parses the same request behind all three (by default nginx sends it only
# Host, HAProxy only the client's headers), and each proxy does the same
# work, as on a site set up the way nginx's and HAProxy's guides say.
# PIN=1 (workers below the core count) gives each proxy cores of its own:
# its processes and threads on CPUs 0..workers-1, the backend and the load
# generator on the rest, as on a server where the proxy is not sharing
# its cores with the load generator. Without it the scheduler shares both
# cores between all of them, and a proxy that is not the bottleneck pays
# for each time it blocks and is woken again (docs/benchmarks.md, "Where
# p99 goes").
# Recipe: wrk -t2 -c64, 3 s warm-up, targets
# alternated within each round, median and spread, ratios from this run.
# Each row also gives the proxy's own CPU a request (user + system time of
# all its processes from /proc, over the requests of the round): steadier
# than req/s when the load generator and the backend share the cores. The
# user and system columns split it: system time is the kernel's TCP work,
# which every proxy does alike.
# The steal column is the median share of the machine's CPU that the
# hypervisor gave to other guests during the proxy's rounds (`stolen`,
# bench/backend.sh): when it is high or uneven, req/s says more about the
# host than about the proxies, and CPU a request is the figure to read.
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
WORKERS=${1:-1}
ROUNDS=${2:-3}
SECS=${3:-10}
refuse_if_busy
bench_setup "nginx haproxy wrk h2load" "nginx haproxy wrk nghttp2-client"
if [ "${LOGS:-0}" = 1 ]; then
    NGINX_LOG="access_log $T/nginx-access.log combined buffer=64k;"
    HAPROXY_LOG="log stdout format raw local0
  option httplog"
    BATON_LOG="access = \"$T/baton-access.log\"
access_format = \"combined\""
else
    NGINX_LOG="access_log off;"; HAPROXY_LOG=""; BATON_LOG='access = "off"'
fi
if [ "${SAME:-0}" = 1 ]; then
    NGINX_SAME='proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header Via "1.1 nginx"; proxy_set_header X-Request-Id $request_id;
      add_header Via "1.1 nginx"; add_header X-Request-Id $request_id;'
    HAPROXY_SAME='option forwardfor
  unique-id-format %[uuid]
  unique-id-header X-Request-Id
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request add-header Via "1.1 haproxy"
  http-response add-header Via "1.1 haproxy"
  http-response set-header X-Request-Id %[unique-id]'
else
    NGINX_SAME=""; HAPROXY_SAME=""
fi

# Backend: one nginx worker answering "ok".
ok_backend $T 18080

cat > $T/nginx.conf <<CONF
worker_processes $WORKERS; daemon off; pid $T/proxy.nginxpid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { $NGINX_LOG
  upstream be { server 127.0.0.1:18080; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18081 backlog=4096; listen 127.0.0.1:18091 http2 backlog=4096;
    keepalive_requests 1000000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      $NGINX_SAME } } }
CONF
nginx -c $T/nginx.conf & echo $! > $T/nginx.pid

haproxy_cfg $WORKERS 18080 "$HAPROXY_SAME
  bind 127.0.0.1:18082
  bind 127.0.0.1:18092 proto h2" "$HAPROXY_LOG" > $T/haproxy.cfg
haproxy -f $T/haproxy.cfg > $T/haproxy-access.log 2>&1 & echo $! > $T/haproxy.pid

baton_toml 18083 18080 $WORKERS "" "$BATON_LOG" > $T/baton.toml
"$BIN" serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
TARGETS="nginx:18081 haproxy:18082 baton:18083"
if [ "${OBSERVED:-0}" = 1 ]; then
    baton_toml 18084 18080 $WORKERS 'admin = "127.0.0.1:18085"' "$BATON_LOG" "[incidents]
dir = \"$T/store\"" > $T/baton-obs.toml
    "$BIN" serve --config $T/baton-obs.toml 2>$T/baton-obs.err & echo $! > $T/baton-obs.pid
    (while :; do curl -s -o /dev/null http://127.0.0.1:18085/api/state; sleep 0.5; done) & echo $! > $T/poll.pid
    TARGETS="$TARGETS baton-obs:18084"
fi
H2TARGETS="nginx:18091 haproxy:18092 baton:18083"
if [ -n "${AB:-}" ]; then
    baton_toml 18087 18080 $WORKERS "" "$BATON_LOG" > $T/baton-b.toml
    "$AB" serve --config $T/baton-b.toml 2>$T/baton-b.err & echo $! > $T/baton-b.pid
    TARGETS="$TARGETS baton-b:18087"
    H2TARGETS="$H2TARGETS baton-b:18087"
fi
sleep 1
LOADGEN=""
if [ "${PIN:-0}" = 1 ]; then
    LOADGEN=$(pinned $WORKERS $(cat $T/backend.pid) $(for n in $TARGETS; do cat $T/${n%%:*}.pid; done)) || exit 1
fi

bench() { # name port -> "rps p50_ms p99_ms"
    $LOADGEN wrk -t2 -c64 -d${SECS}s --latency http://127.0.0.1:$2/ > $T/wrk.out
    python3 - "$T/wrk.out" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v, u): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", t); p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
err = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(rps, ms(*p50.groups()), ms(*p99.groups()), err.group(1) if err else 0)
PY
}
for n in $TARGETS; do
    $LOADGEN wrk -t2 -c64 -d3s http://127.0.0.1:${n#*:}/ >/dev/null   # warm-up
done
: > $T/results
r=1
while [ $r -le $ROUNDS ]; do
    for n in $TARGETS; do
        _m=$(cpu_times)
        _a=$(cpu_split $(cat $T/${n%%:*}.pid))
        _b=$(bench ${n%%:*} ${n#*:})
        echo "${n%%:*} $_b $_a $(cpu_split $(cat $T/${n%%:*}.pid)) $(stolen "$_m" "$(cpu_times)")" >> $T/results
    done
    r=$((r + 1))
done
if [ "${LOGS:-0}" = 1 ]; then
    sleep 1
    echo "access log lines: nginx $(wc -l < $T/nginx-access.log), haproxy $(wc -l < $T/haproxy-access.log), baton $(wc -l < $T/baton-access.log)"
fi
if [ "${H2:-0}" = 1 ]; then
    : > $T/h2results
    r=1
    while [ $r -le $ROUNDS ]; do
        for n in $H2TARGETS; do
            _m=$(cpu_times)
            _a=$(cpu_ticks $(cat $T/${n%%:*}.pid))
            $LOADGEN h2load -c16 -m16 -t1 -D $SECS http://127.0.0.1:${n#*:}/ > $T/h2.out 2>&1
            echo "${n%%:*} $(h2load_result $T/h2.out) $(($(cpu_ticks $(cat $T/${n%%:*}.pid)) - _a)) $(stolen "$_m" "$(cpu_times)")" >> $T/h2results
        done
        r=$((r + 1))
    done
fi
python3 - "$T/results" "$WORKERS" "$ROUNDS" "$SECS" "$([ "${LOGS:-0}" = 1 ] && echo on || echo off)" "$(getconf CLK_TCK)" "$([ "${SAME:-0}" = 1 ] && echo ", peers forward what baton does (SAME=1)")$([ "${PIN:-0}" = 1 ] && echo ", each proxy on cores of its own (PIN=1)")" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
by = {}
secs, tck = float(sys.argv[4]), float(sys.argv[6])
for name, rps, p50, p99, errs, u0, s0, u1, s1, steal in rows:
    # The proxy's own CPU (all its processes) a request: user, system.
    per = lambda a, b: (int(b) - int(a)) / tck * 1e6 / (float(rps) * secs)
    u, s = per(u0, u1), per(s0, s1)
    by.setdefault(name, []).append((float(rps), float(p50), float(p99), int(errs), u + s, u, s, float(steal)))
def med(name, i): return st.median(v[i] for v in by[name])
print(f"workers={sys.argv[2]} rounds={sys.argv[3]} duration={sys.argv[4]}s wrk -t2 -c64 access logs {sys.argv[5]}{sys.argv[7]}")
print(f"{'proxy':<9} {'req/s':>10} {'spread':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'CPU us/req':>10} {'user':>6} {'system':>6} {'steal':>6}")
for n in by:
    rs = [v[0] for v in by[n]]
    spread = (max(rs) - min(rs)) / st.median(rs) * 100
    print(f"{n:<9} {med(n,0):>10.0f} {spread:>7.1f}% {med(n,1):>8.2f} {med(n,2):>8.2f} {sum(v[3] for v in by[n]):>8} {med(n,4):>10.1f} {med(n,5):>6.1f} {med(n,6):>6.1f} {med(n,7):>5.0f}%")
for peer in ("nginx", "haproxy"):
    print(f"baton/{peer}: req/s {med('baton',0)/med(peer,0):.2f}x, p99 {med('baton',2)/med(peer,2):.2f}x, CPU a request {med('baton',4)/med(peer,4):.2f}x")
import os
h2 = sys.argv[1].replace("results", "h2results")
if os.path.exists(h2):
    hb = {}
    for name, rps, ok, ticks, steal in (l.split() for l in open(h2)):
        us = int(ticks) / tck * 1e6 / max(float(rps) * secs, 1)
        hb.setdefault(name, []).append((float(rps), int(ok), us, float(steal)))
    def hmed(n, i): return st.median(v[i] for v in hb[n])
    print(f"HTTP/2 (h2c) h2load -c16 -m16, {sys.argv[3]} rounds")
    for n in hb:
        rs = [v[0] for v in hb[n]]
        print(f"{n:<9} {st.median(rs):>10.0f} {(max(rs) - min(rs)) / st.median(rs) * 100:>7.1f}% 2xx {sum(v[1] for v in hb[n])} CPU {hmed(n, 2):.1f} us/req, steal {hmed(n, 3):.0f}%")
    for peer in ("nginx", "haproxy"):
        print(f"baton/{peer} h2c: req/s {hmed('baton', 0) / hmed(peer, 0):.2f}x, CPU a request {hmed('baton', 2) / hmed(peer, 2):.2f}x")
if "baton-b" in by:
    print(f"baton-b/baton: req/s {med('baton-b',0)/med('baton',0):.2f}x, p99 {med('baton-b',2)/med('baton',2):.2f}x, CPU a request {med('baton-b',4)/med('baton',4):.2f}x")
    if os.path.exists(h2):
        print(f"baton-b/baton h2c: req/s {hmed('baton-b', 0) / hmed('baton', 0):.2f}x, CPU a request {hmed('baton-b', 2) / hmed('baton', 2):.2f}x")
if "baton-obs" in by:
    print(f"baton-obs/baton: req/s {med('baton-obs',0)/med('baton',0):.2f}x, p99 {med('baton-obs',2)/med('baton',2):.2f}x")
PY
