#!/bin/sh
# Cached hits: baton (cache = true) vs nginx (proxy_cache) vs Varnish
# (Debian's package, built-in VCL), each in front of the same backend
# serving a 10 KB page with Cache-Control: max-age=3600; every request
# after the first is a hit. Prints requests/s, p99 latency and ratios.
# Usage: sh bench/cache.sh [workers] [seconds]
set -eu
cd "$(dirname "$0")/.."
. bench/backend.sh
WORKERS=${1:-1}
SECS=${2:-8}
bench_setup "nginx wrk varnishd" "nginx wrk varnish"
head -c 7500 /dev/urandom | base64 -w 100 > $T/page.html
chmod 755 $T && chmod 644 $T/page.html
cat > $T/backend.conf <<CONF
worker_processes 1; daemon off; pid $T/backend.nginxpid; error_log $T/backend.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; default_type text/html;
  server { listen 127.0.0.1:18110 backlog=4096; root $T; add_header Cache-Control "max-age=3600";
    location / { try_files /page.html =404; } } }
CONF
nginx -c $T/backend.conf & echo $! > $T/backend.pid
mkdir -p $T/nc
cat > $T/nginx.conf <<CONF
worker_processes $WORKERS; daemon off; pid $T/proxy.nginxpid; error_log $T/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  proxy_cache_path $T/nc keys_zone=c:10m;
  upstream be { server 127.0.0.1:18110; keepalive 64; }
  server { listen 127.0.0.1:18111 backlog=4096;
    location / { proxy_pass http://be; proxy_cache c; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
nginx -c $T/nginx.conf & echo $! > $T/nginx.pid
cat > $T/default.vcl <<CONF
vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "18110"; }
CONF
varnishd -F -a 127.0.0.1:18112 -f $T/default.vcl -n $T/varnish -s malloc,64m -p thread_pools=1 >/dev/null 2>&1 & echo $! > $T/varnish.pid
cat > $T/baton.toml <<CONF
[server]
listen = ["127.0.0.1:18113"]
workers = $WORKERS
[log]
access = "off"
errors = "off"
[incidents]
dir = "off"
[upstreams.be]
servers = ["127.0.0.1:18110"]
[[routes]]
upstream = "be"
cache = true
CONF
"$BIN" serve --config $T/baton.toml 2>$T/baton.err & echo $! > $T/baton.pid
sleep 3
for p in 18111 18112 18113; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$p/)" = 200 ] || { echo "port $p does not answer" >&2; exit 1; }
    wrk -t2 -c32 -d2s http://127.0.0.1:$p/ >/dev/null
done
run() { wrk -t2 -c32 -d${SECS}s --latency http://127.0.0.1:$1/ > $T/wrk.$1; }
rps() { sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p' $T/wrk.$1; }
p99() { sed -n 's/^[[:space:]]*99%[[:space:]]*\([0-9.]*[a-z]*\).*/\1/p' $T/wrk.$1; }
run 18111; run 18112; run 18113
echo "page $(wc -c < $T/page.html) bytes, all hits; workers=$WORKERS duration=${SECS}s wrk -t2 -c32"
echo "nginx proxy_cache  $(rps 18111) req/s  p99 $(p99 18111)"
echo "varnish            $(rps 18112) req/s  p99 $(p99 18112)"
echo "baton cache        $(rps 18113) req/s  p99 $(p99 18113)"
curl -s -D - -o /dev/null http://127.0.0.1:18113/ | grep -i '^cache-status'
python3 -c "print(f'baton/nginx {$(rps 18113)/$(rps 18111):.2f}x, baton/varnish {$(rps 18113)/$(rps 18112):.2f}x')"
