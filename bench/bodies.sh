#!/bin/sh
# Bodies through the proxy: baton vs nginx vs HAProxy in front of the same
# nginx backend, each with its defaults, moving a 100 KB response (an
# image, an API's page of JSON), a 1 MB response (a download) and a 1 MB
# upload (a form with a photo: POST, Content-Length). bench/run.sh's
# 3-byte answer measures a request's overhead; this measures the copy.
# Each round runs the three in turned order; medians of the rounds, each
# proxy's own CPU a request (user + system, /proc), and the ratios.
# PIN=1 (one worker) gives each proxy a core of its own, the backend and
# wrk the other, as bench/run.sh's PIN=1.
# Usage: sh bench/bodies.sh [workers] [seconds] [rounds]
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
WORKERS=${1:-1}
SECS=${2:-8}
ROUNDS=${3:-5}
bench_setup "nginx haproxy wrk" "nginx haproxy wrk"
mkdir -p $T/www
head -c 102400 /dev/urandom > $T/www/100k.bin
head -c 1048576 /dev/urandom > $T/www/1m.bin
# nginx's workers (nobody) read the files.
chmod 755 $T $T/www && chmod 644 $T/www/*
# The backend: the files, and 200 for an upload (read and dropped).
cat > $T/backend.conf <<CONF
worker_processes 1; daemon off; pid $T/backend.nginxpid; error_log $T/backend.err;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  client_max_body_size 16m; default_type application/octet-stream;
  server { listen 127.0.0.1:18120 backlog=4096; root $T/www;
    location = /upload { return 200 "ok\n"; } } }
CONF
nginx -c $T/backend.conf & echo $! > $T/backend.pid
cat > $T/nginx.conf <<CONF
worker_processes $WORKERS; daemon off; pid $T/proxy.nginxpid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off; client_max_body_size 16m; client_body_temp_path $T/nginx-body;
  proxy_temp_path $T/nginx-proxy;
  upstream be { server 127.0.0.1:18120; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18121 backlog=4096; keepalive_requests 1000000;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c $T/nginx.conf & echo $! > $T/nginx.pid
haproxy_cfg $WORKERS 18120 "bind 127.0.0.1:18122" > $T/haproxy.cfg
haproxy -f $T/haproxy.cfg > $T/haproxy.log 2>&1 & echo $! > $T/haproxy.pid
baton_toml 18123 18120 $WORKERS > $T/baton.toml
"$BIN" serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
sleep 1
cat > $T/upload.lua <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("b", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
for p in 18121 18122 18123; do
    for f in 100k.bin 1m.bin; do
        [ "$(curl -s -o $T/got http://127.0.0.1:$p/$f -w '%{http_code}')" = 200 ] && cmp -s $T/got $T/www/$f ||
            { echo "port $p does not pass $f whole" >&2; exit 1; }
    done
    [ "$(curl -s -o /dev/null -w '%{http_code}' --data-binary @$T/www/1m.bin http://127.0.0.1:$p/upload)" = 200 ] ||
        { echo "port $p does not pass an upload" >&2; exit 1; }
done
LOADGEN=""
if [ "${PIN:-0}" = 1 ]; then
    LOADGEN=$(pinned $WORKERS $(cat $T/backend.pid) $(cat $T/nginx.pid $T/haproxy.pid $T/baton.pid)) || exit 1
fi
# one NAME PATH CONNECTIONS [WRK ARGS]: "NAME REQ/S NON2XX CPU-TICKS
# STEAL%" (`stolen`: the share of the machine's CPU the hypervisor took).
one() {
    _p=$(cat $T/$1.pid)
    _m=$(cpu_times)
    _a=$(cpu_ticks $_p)
    $LOADGEN wrk -t2 -c$3 -d${SECS}s $4 http://127.0.0.1:$(port $1)/$2 > $T/wrk.out
    _r=$(sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' $T/wrk.out)
    _e=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' $T/wrk.out)
    echo "$1 $_r ${_e:-0} $(($(cpu_ticks $_p) - _a)) $(stolen "$_m" "$(cpu_times)")"
}
port() { case $1 in nginx) echo 18121 ;; haproxy) echo 18122 ;; baton) echo 18123 ;; esac; }
echo "workers=$WORKERS duration=${SECS}s rounds=$ROUNDS, each proxy's defaults, order turned each round$([ "${PIN:-0}" = 1 ] && echo ", each proxy on a core of its own (PIN=1)")"
for mode in "100k.bin 32" "1m.bin 8" "upload 8 -s$T/upload.lua"; do
    set -- $mode
    for n in nginx haproxy baton; do one $n $1 $2 "${3:-}" > /dev/null; done   # warm-up
    : > $T/rounds
    for r in $(seq $ROUNDS); do
        for n in $(turned $r nginx haproxy baton); do one $n $1 $2 "${3:-}" >> $T/rounds; done
    done
    python3 - "$1 (wrk -c$2)" $SECS $(getconf CLK_TCK) $T/rounds <<'PY'
import statistics as st, sys
what, secs, tck = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
by = {}
for name, rps, errs, ticks, steal in (l.split() for l in open(sys.argv[4])):
    # CPU a request, in µs: ticks over the requests of the run.
    by.setdefault(name, []).append((float(rps), int(errs), int(ticks) / tck * 1e6 / (float(rps) * secs), float(steal)))
med = lambda n, i: st.median(v[i] for v in by[n])
print(what)
for n in by:
    print(f"  {n:<8} {med(n, 0):>8.0f} req/s  non-2xx {sum(v[1] for v in by[n])}  CPU {med(n, 2):6.1f} us/req  steal {med(n, 3):.0f}%")
for peer in ("nginx", "haproxy"):
    each = " ".join(f"{b[0] / p[0]:.2f}x" for b, p in zip(by["baton"], by[peer]))
    print(f"  baton/{peer}: req/s {med('baton', 0) / med(peer, 0):.2f}x (rounds {each}), CPU a request {med('baton', 2) / med(peer, 2):.2f}x")
PY
done
