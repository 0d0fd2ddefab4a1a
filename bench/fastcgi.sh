#!/bin/sh
# baton vs nginx in front of identical PHP-FPM pools (hello world), one run,
# same worker count, logging off. nginx twice: its default (a new
# connection per request) and with fastcgi_keep_conn + upstream keepalive.
# Usage: sh bench/fastcgi.sh [workers] [rounds] [seconds] [connections] [fpm_children]
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
WORKERS=${1:-1}
ROUNDS=${2:-3}
SECS=${3:-10}
CONNS=${4:-64}
CHILDREN=${5:-4}
refuse_if_busy
bench_setup "nginx wrk php-fpm8.2" "nginx wrk php8.2-fpm"
chmod 755 $T
mkdir $T/www
echo '<?php echo "ok\n";' > $T/www/hello.php
chmod -R a+rX $T/www

# One identical pool per proxy: a kept-alive FastCGI connection holds a
# PHP-FPM worker, so proxies sharing one pool would starve each other.
for v in plain keep baton; do
cat > $T/fpm-$v.conf <<CONF
[global]
pid = $T/fpm-$v.fpmpid
error_log = $T/fpm-$v.err
daemonize = no
[www]
user = www-data
group = www-data
listen = $T/fpm-$v.sock
listen.owner = www-data
listen.group = www-data
listen.mode = 0666
pm = static
pm.max_children = $CHILDREN
pm.max_requests = 0
CONF
php-fpm8.2 -F -y $T/fpm-$v.conf & echo $! > $T/fpm-$v.pid
done

for v in plain keep; do
    if [ $v = keep ]; then port=18091; up="upstream php { server unix:$T/fpm-keep.sock; keepalive 16; }"; keep="fastcgi_keep_conn on;"; pass=php
    else port=18090; up=""; keep=""; pass="unix:$T/fpm-plain.sock"; fi
    cat > $T/nginx-$v.conf <<CONF
worker_processes $WORKERS; daemon off; pid $T/nginx-$v.nginxpid; error_log $T/nginx-$v.err;
events { worker_connections 4096; }
http { access_log off; $up
  server { listen 127.0.0.1:$port backlog=4096; keepalive_requests 1000000; root $T/www;
    location ~ \.php\$ { include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name; $keep fastcgi_pass $pass; } } }
CONF
    nginx -c $T/nginx-$v.conf & echo $! > $T/nginx-$v.pid
done

cat > $T/baton.toml <<CONF
[server]
listen = ["127.0.0.1:18093"]
workers = $WORKERS
[log]
access = "off"
errors = "off"
[upstreams.php]
servers = ["unix:$T/fpm-baton.sock"]
protocol = "fastcgi"
root = "$T/www"
[[routes]]
upstream = "php"
CONF
$BIN serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
sleep 1
[ -n "${PERF:-}" ] && (perf record -g -o /tmp/w/perf.data -p $(cat $T/baton.pid) -- sleep 8 >/dev/null 2>&1 &)

# name:port:pid-file of each target.
TARGETS="nginx:18090:nginx-plain nginx-keep:18091:nginx-keep baton:18093:baton"
bench() { # port pid -> "rps p50_ms p99_ms non2xx cpu_ticks"
    _a=$(cpu_ticks $2)
    wrk -t2 -c$CONNS -d${SECS}s --latency http://127.0.0.1:$1/hello.php > $T/wrk.out
    _ticks=$(($(cpu_ticks $2) - _a))
    python3 - "$T/wrk.out" $_ticks <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v, u): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", t); p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", t)
err = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(rps, ms(*p50.groups()), ms(*p99.groups()), err.group(1) if err else 0, sys.argv[2])
PY
}
for n in $TARGETS; do
    port=${n#*:}
    wrk -t2 -c$CONNS -d3s http://127.0.0.1:${port%%:*}/hello.php >/dev/null   # warm-up
done
: > $T/results
r=1
while [ $r -le $ROUNDS ]; do
    for n in $TARGETS; do
        port=${n#*:}
        echo "${n%%:*} $(bench ${port%%:*} $(cat $T/${n##*:}.pid))" >> $T/results
    done
    r=$((r + 1))
done
cat $T/results; python3 - "$T/results" "$WORKERS" "$ROUNDS" "$SECS" "$CONNS" "$CHILDREN" "$(getconf CLK_TCK)" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
secs, tck = float(sys.argv[4]), float(sys.argv[7])
by = {}
for name, rps, p50, p99, errs, ticks in rows:
    # The proxy's own CPU a request, in µs (its processes, from /proc).
    us = float(ticks) / tck * 1e6 / (float(rps) * secs)
    by.setdefault(name, []).append((float(rps), float(p50), float(p99), int(errs), us))
def med(name, i): return st.median(v[i] for v in by[name])
print(f"workers={sys.argv[2]} rounds={sys.argv[3]} duration={sys.argv[4]}s wrk -t2 -c{sys.argv[5]} php-fpm pm.max_children={sys.argv[6]}")
print(f"{'proxy':<11} {'req/s':>10} {'spread':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'CPU us/req':>10}")
for n in ("nginx", "nginx-keep", "baton"):
    rs = [v[0] for v in by[n]]
    spread = (max(rs) - min(rs)) / st.median(rs) * 100
    print(f"{n:<11} {med(n,0):>10.0f} {spread:>7.1f}% {med(n,1):>8.2f} {med(n,2):>8.2f} {sum(v[3] for v in by[n]):>8} {med(n,4):>10.1f}")
for peer in ("nginx", "nginx-keep"):
    print(f"baton/{peer}: req/s {med('baton',0)/med(peer,0):.2f}x, p99 {med('baton',2)/med(peer,2):.2f}x, CPU a request {med('baton',4)/med(peer,4):.2f}x")
PY
