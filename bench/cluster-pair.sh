#!/usr/bin/env bash
# The cluster-mode hand-off, measured on one machine: the API stand-in (plinth-apistub),
# a controller-mode driver and a node-mode driver as separate processes, and plinth-bench
# calling the controller socket as the sidecars do and the node socket as kubelet does.
# CreateVolume's latency is the provisioning path: write the PoolVolume, the node sees
# it, allocates the image, reports in status, the controller sees the answer.
#
#   bench/cluster-pair.sh [plinth-bench options...]     (as root; release build)
#   e.g. bench/cluster-pair.sh --iterations 200 --access both --snapshots --expand
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}/release
cargo build --release --quiet -p plinth-driver -p plinth-bench -p plinth-apistub \
    --manifest-path "$root/Cargo.toml"

work=$(mktemp -d /tmp/plinth-pair.XXXXXX)
mkdir -p "$work/work"   # the stand-in kubelet directory (--kubelet-dir)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$target/plinth-apistub" --listen 127.0.0.1:0 --kubeconfig "$work/kubeconfig" \
    >"$work/apistub.out" 2>"$work/apistub.log" &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/kubeconfig ]] && break; sleep 0.05; done
export KUBECONFIG=$work/kubeconfig
api=$(awk '/server:/ {print $2; exit}' "$KUBECONFIG")

"$target/plinth-driver" --mode controller --node-id control-plane \
    --endpoint "unix://$work/controller.sock" --log-level warn 2>"$work/controller.log" &
pids+=($!)
"$target/plinth-driver" --mode node --node-id node-a --pool "$work/pool" --kubelet-dir "$work/work" \
    --endpoint "unix://$work/node.sock" --log-level warn 2>"$work/node.log" &
node_pid=$!
pids+=("$node_pid")

# The node must have published its pool before the controller can place anything.
for _ in $(seq 200); do
    curl -sf "$api/apis/plinth.dev/v1alpha1/poolnodes" | grep -q availableBytes && break
    sleep 0.05
done

"$target/plinth-bench" --endpoint "unix://$work/controller.sock" \
    --node-endpoint "unix://$work/node.sock" --work-dir "$work/work" --pid "$node_pid" "$@"
