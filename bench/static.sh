#!/bin/sh
# Static files: baton (a static upstream) vs nginx (root + try_files, with
# sendfile on, its default on Debian) serving the same directory: a 4 KB
# stylesheet (the usual asset), a 100 KB image and a 2 MB video, over
# keep-alive connections. Prints requests/s and the ratio for each.
# Usage: sh bench/static.sh [workers] [seconds]
set -eu
cd "$(dirname "$0")/.."
WORKERS=${1:-1}
SECS=${2:-8}
for p in nginx wrk; do
    command -v $p >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx wrk; break; }
done
BIN=${BATON:-./target/release/baton}
[ -n "${BATON:-}" ] || cargo build --release -q
T=$(mktemp -d)
trap 'kill $(cat $T/*.pid 2>/dev/null) 2>/dev/null; sleep 0.3; rm -rf $T' EXIT
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
rps() { wrk -t2 -c${3:-32} -d${SECS}s http://127.0.0.1:$1/$2 | sed -n 's/^Requests\/sec:[[:space:]]*\([0-9.]*\).*/\1/p'; }
echo "workers=$WORKERS duration=${SECS}s wrk -t2 -c32 (clip.mp4: -c8)"
for f in app.css photo.jpg clip.mp4; do
    c=32; [ $f = clip.mp4 ] && c=8
    wrk -t2 -c$c -d2s http://127.0.0.1:18101/$f >/dev/null; wrk -t2 -c$c -d2s http://127.0.0.1:18102/$f >/dev/null
    N=$(rps 18101 $f $c); B=$(rps 18102 $f $c)
    python3 -c "print(f'{\"$f\":10} nginx {$N:>9.0f} req/s  baton {$B:>9.0f} req/s  baton/nginx {$B/$N:.2f}x')"
done
