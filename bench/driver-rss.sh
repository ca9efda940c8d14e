#!/usr/bin/env bash
# Idle RSS of a plinth-driver binary: all-in-one on an empty pool, 5 s after its socket
# appears. Usage: driver-rss.sh DRIVER (as root). Alternate two builds to compare them.
set -euo pipefail
bin=$1; d=$(mktemp -d); mkdir -p "$d/pool" "$d/kubelet"
"$bin" --mode all-in-one --endpoint "unix://$d/csi.sock" --node-id n1 --pool "$d/pool" --kubelet-dir "$d/kubelet" 2>"$d/log" & pid=$!
for _ in $(seq 100); do [ -S "$d/csi.sock" ] && break; sleep 0.05; done
sleep 5
echo "$(ls -l "$bin" | awk '{print $5}') bytes; $(grep -E 'VmRSS|RssAnon|RssFile' /proc/$pid/status | tr -s ' \t' ' ' | paste -sd' ')"
kill $pid; wait $pid 2>/dev/null || true; rm -rf "$d"
