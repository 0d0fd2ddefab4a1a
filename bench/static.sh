#!/bin/sh
# Static files: baton (a static upstream) vs nginx (root + try_files, with
# sendfile on, its default on Debian) serving the same directory: a 4 KB
# stylesheet (the usual asset), a 100 KB image and a 2 MB video, over
# keep-alive connections. Prints requests/s, each server's own CPU a
# request (user + system, from /proc: steadier than req/s when wrk shares
# the cores) and the ratios, the medians of ROUNDS rounds (each round both
# servers in turn), and the median share of the machine's CPU stolen by
# the hypervisor during each server's runs (nginx / baton).
# Usage: sh bench/static.sh [workers] [seconds] [rounds]
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
WORKERS=${1:-1}
SECS=${2:-8}
ROUNDS=${3:-1}
bench_setup "nginx wrk" "nginx wrk"
mkdir -p $T/www
head -c 4096 /dev/urandom | base64 -w 100 | head -c 4096 > $T/www/app.css
head -c 102400 /dev/urandom > $T/www/photo.jpg
head -c 2097152 /dev/urandom > $T/www/clip.mp4
# nginx's workers (nobody) read the files.
chmod 755 $T $T/www && chmod 644 $T/www/*
cat > $T/nginx.conf <<CONF
worker_processes $WORKERS; daemon off; pid $T/nginx.nginxpid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  types { text/css css; image/jpeg jpg; video/mp4 mp4; }
  server { listen 127.0.0.1:18101 backlog=4096; root $T/www; location / { try_files \$uri \$uri/ =404; } } }
CONF
nginx -c $T/nginx.conf & echo $! > $T/nginx.pid
cat > $T/baton.toml <<CONF
[server]
listen = ["127.0.0.1:18102"]
workers = $WORKERS
[log]
access = "off"
errors = "off"
[incidents]
dir = "off"
[upstreams.site]
protocol = "static"
root = "$T/www"
[[routes]]
upstream = "site"
CONF
"$BIN" serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
sleep 1
for f in app.css photo.jpg clip.mp4; do
    for p in 18101 18102; do
        [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$p/$f)" = 200 ] || { echo "port $p does not serve $f" >&2; exit 1; }
    done
done
# rps PORT FILE CONNECTIONS PID: "REQ/S CPU-TICKS STEAL%" (`stolen`: the
# share of the machine's CPU the hypervisor took meanwhile).
rps() {
    _m=$(cpu_times)
    _a=$(cpu_ticks $4)
    _r=$(wrk -t2 -c$3 -d${SECS}s http://127.0.0.1:$1/$2 | sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p')
    echo "$_r $(($(cpu_ticks $4) - _a)) $(stolen "$_m" "$(cpu_times)")"
}
echo "workers=$WORKERS duration=${SECS}s rounds=$ROUNDS wrk -t2 -c32 (clip.mp4: -c8)"
for f in app.css photo.jpg clip.mp4; do
    c=32; [ $f = clip.mp4 ] && c=8
    wrk -t2 -c$c -d2s http://127.0.0.1:18101/$f >/dev/null; wrk -t2 -c$c -d2s http://127.0.0.1:18102/$f >/dev/null
    : > $T/rounds
    for r in $(seq $ROUNDS); do
        echo "$(rps 18101 $f $c $(cat $T/nginx.pid)) $(rps 18102 $f $c $(cat $T/baton.pid))" >> $T/rounds
    done
    python3 - $f $SECS $(getconf CLK_TCK) $T/rounds <<'PY'
import statistics as st, sys
f, secs, tck = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [list(map(float, l.split())) for l in open(sys.argv[4])]
# CPU a request, in µs: ticks over the requests of the run.
us = lambda rps, ticks: ticks / tck * 1e6 / (rps * secs)
n, b = st.median(r[0] for r in rows), st.median(r[3] for r in rows)
cn, cb = st.median(us(r[0], r[1]) for r in rows), st.median(us(r[3], r[4]) for r in rows)
sn, sb = st.median(r[2] for r in rows), st.median(r[5] for r in rows)
each = " ".join(f"{r[3] / r[0]:.2f}x" for r in rows)
print(f"{f:10} nginx {n:>7.0f} req/s {cn:5.1f} us/req  baton {b:>7.0f} req/s {cb:5.1f} us/req  "
      f"baton/nginx {b / n:.2f}x (rounds {each}), CPU a request {cb / cn:.2f}x, steal {sn:.0f}% / {sb:.0f}%")
PY
done
