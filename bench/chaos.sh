#!/bin/sh
# Chaos benchmark: the same load against baton, nginx and HAProxy while their
# three backends are killed (SIGKILL) and restarted on a schedule. Prints each
# proxy's client-visible error rate and p99.
# Usage: sh bench/chaos.sh [seconds-per-proxy] [rounds]
# Each round runs the three one after another, in an order that turns by
# one each round (`turned`, bench/backend.sh). The report gives each
# proxy's median requests and p99 over the rounds, its errors summed, and
# baton's ratios.
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
SECS=${1:-20}
ROUNDS=${2:-1}
bench_setup "nginx haproxy wrk" "nginx haproxy wrk"
cleanup() { for f in $T/*.pid; do [ -f "$f" ] && kill -9 $(cat "$f") 2>/dev/null || true; done; rm -rf $T; }
trap cleanup EXIT

backend() { # n -> starts backend n on 1809n (one nginx worker)
    cat > $T/b$1.conf <<CONF
master_process off; daemon off; pid $T/b$1.nginxpid; error_log $T/b$1.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:1809$1 reuseport backlog=4096; location / { return 200 "ok\n"; } } }
CONF
    nginx -c $T/b$1.conf & echo $! > $T/b$1.pid
}
# master_process off: the one process serves, and SIGKILL takes the port down.
kill_backend() { kill -9 $(cat $T/b$1.pid) 2>/dev/null || true; }

cat > $T/nginx.conf <<CONF
master_process off; daemon off; pid $T/proxy.nginxpid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream be { server 127.0.0.1:18091 max_fails=1 fail_timeout=2s; server 127.0.0.1:18092 max_fails=1 fail_timeout=2s;
                server 127.0.0.1:18093 max_fails=1 fail_timeout=2s; keepalive 64; }
  server { listen 127.0.0.1:18181; location / { proxy_pass http://be; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_connect_timeout 1s; proxy_next_upstream error timeout; } } }
CONF
cat > $T/haproxy.cfg <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 2
  option redispatch
  retry-on conn-failure empty-response response-timeout
  http-reuse safe
frontend fe
  bind 127.0.0.1:18182
  default_backend be
backend be
  option httpchk GET /
  server s1 127.0.0.1:18091 check inter 500 fall 1 rise 1
  server s2 127.0.0.1:18092 check inter 500 fall 1 rise 1
  server s3 127.0.0.1:18093 check inter 500 fall 1 rise 1
CONF
cat > $T/baton.toml <<CONF
[server]
listen = ["127.0.0.1:18183"]
workers = 1
[log]
access = "off"
errors = "off"
[upstreams.be]
servers = ["127.0.0.1:18091", "127.0.0.1:18092", "127.0.0.1:18093"]
connect_timeout = "1s"
retries = 2
[upstreams.be.health]
path = "/"
interval = "500ms"
rise = 1
fall = 1
[[routes]]
upstream = "be"
CONF

run() { # name port start-cmd round
    for n in 1 2 3; do backend $n; done
    sleep 0.5
    $3 & echo $! > $T/$1.pid
    sleep 1
    echo "chaos: $1, round $4" >&2
    wrk -t2 -c32 -d${SECS}s --latency http://127.0.0.1:$2/ > $T/$1-$4.wrk 2>&1 &
    W=$!
    # Schedule: every SECS/8 seconds one backend dies, and comes back after
    # 1.5 s: each of the three dies twice or more during the run.
    step=$(python3 -c "print($SECS/8)")
    i=0
    while kill -0 $W 2>/dev/null && [ $i -lt 7 ]; do
        sleep $step
        n=$((i % 3 + 1))
        kill_backend $n
        sleep 1.5
        backend $n
        i=$((i + 1))
    done
    wait $W || true
    kill -9 $(cat $T/$1.pid) 2>/dev/null || true
    for n in 1 2 3; do kill_backend $n; done
    sleep 1
}
r=1
while [ $r -le $ROUNDS ]; do
    for p in $(turned $r nginx haproxy baton); do
        case $p in
            nginx) run nginx 18181 "nginx -c $T/nginx.conf" $r ;;
            haproxy) run haproxy 18182 "haproxy -f $T/haproxy.cfg" $r ;;
            baton) run baton 18183 "$BIN serve --config $T/baton.toml" $r ;;
        esac
    done
    r=$((r + 1))
done

python3 - $T $ROUNDS <<'PY'
import re, sys, statistics as st
t, rounds = sys.argv[1], int(sys.argv[2])
def one(path):  # (requests, errors, p99 ms) of one wrk run
    s = open(path).read()
    total = int(re.search(r"(\d+) requests in", s).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", s)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", s.split("Socket errors:")[1].split("\n")[0])) if "Socket errors:" in s else 0
    p = re.search(r"99%\s+([\d.]+)(us|ms|s)", s)
    return total, non2xx + sock, float(p.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p.group(2)]
by = {n: [one(f"{t}/{n}-{r}.wrk") for r in range(1, rounds + 1)] for n in ("nginx", "haproxy", "baton")}
print(f"{rounds} round(s), order turned each round; medians of requests and p99, errors summed")
print(f"{'proxy':<8} {'requests':>9} {'errors':>7} {'error %':>8} {'p99 ms':>8}  requests each round")
med = {}
for n, v in by.items():
    total, err, p99 = st.median(x[0] for x in v), sum(x[1] for x in v), st.median(x[2] for x in v)
    med[n] = total
    print(f"{n:<8} {total:>9.0f} {err:>7} {100*err/max(sum(x[0] for x in v),1):>7.3f}% {p99:>8.2f}  {' '.join(str(x[0]) for x in v)}")
for peer in ("nginx", "haproxy"):
    print(f"baton/{peer}: requests served {med['baton']/med[peer]:.2f}x")
PY
