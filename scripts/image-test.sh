#!/usr/bin/env bash
# The container image test (make image-test): build the runtime image of deploy/Dockerfile with
# buildah, from a debootstrap base and the release binary (no registry needed), run it with podman
# the way a hardened deployment would (read-only root, no capabilities, no new privileges, non-root
# user), in front of the development issuer and demo upstream of `portcullis dev` on the host, and
# check it: readiness and the image's HEALTHCHECK, 401 without a token and 200 with one, uid 65532,
# the read-only root, no capabilities, and a clean exit 0 on SIGTERM within the drain and grace.
#
#   PORTCULLIS_BIN=/path   the binary to package (default target/release/portcullis, built with
#                          `cargo build --release --locked` when absent)
#   IMAGE_TEST_CACHE=dir   where the debootstrap base is cached (default target/image-test)
#
# Installs podman, buildah, debootstrap, runc (and curl, python3, ss) when missing and run as root.
# The base image (podman image portcullis-image-test-base:<suite>, and its rootfs tarball in the
# cache) is kept between runs, so only the first run pays for debootstrap. It is never updated:
# to refresh it, podman rmi localhost/portcullis-image-test-base:<suite> and delete the tarball.
set -euo pipefail
cd "$(dirname "$0")/.."

started_ns=$(date +%s%N)
elapsed() { echo $(( ($(date +%s%N) - $1) / 1000000 )) | awk '{ printf "%.1f", $1 / 1000 }'; }
log() { printf 'image-test: %s\n' "$*" >&2; }

cache=${IMAGE_TEST_CACHE:-target/image-test}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-image-test.XXXXXX")
ctr_name="portcullis-image-test-$$"
runtime_image=localhost/portcullis:image-test
dev_pid=""
build_ctrs=()
failures=0
checks=0

pass() { checks=$((checks + 1)); printf 'PASS  %s\n' "$*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); printf 'FAIL  %s\n' "$*"; }

# On any exit: remove the test container and buildah working containers, stop the host-side dev
# process, keep the cached base image and rootfs tarball.
cleanup() {
  local rc=$?
  set +e
  if command -v podman >/dev/null 2>&1; then
    podman rm --force --time 0 "$ctr_name" >/dev/null 2>&1
  fi
  for c in "${build_ctrs[@]}"; do buildah rm "$c" >/dev/null 2>&1; done
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    # SIGINT: the dev gateway drains without its drain_delay.
    kill -INT "$dev_pid" 2>/dev/null
    local deadline=$((SECONDS + 10))
    while kill -0 "$dev_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$dev_pid" 2>/dev/null
    wait "$dev_pid" 2>/dev/null
  fi
  rm -rf "$work"
  printf 'image-test: total time %ss\n' "$(elapsed "$started_ns")"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Poll a command until it succeeds or the deadline (seconds) passes: the only way this script
# waits for anything.
poll() {
  local timeout=$1; shift
  local deadline=$(( $(date +%s%N) + timeout * 1000000000 ))
  until "$@"; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# --- 1. Tools --------------------------------------------------------------------------------
# command -> Debian package. runc: the container runs below use --runtime=runc, the runtime
# known to work on these hosts.
declare -A tool_pkg=([podman]=podman [buildah]=buildah [debootstrap]=debootstrap [runc]=runc
  [curl]=curl [python3]=python3 [ss]=iproute2)
missing=()
for tool in podman buildah debootstrap runc curl python3 ss; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${tool_pkg[$tool]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing: ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]} (apt-get; log in $cache/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  # Try without refreshing the package lists first (fast when they are current), then with.
  apt-get install -y -q "${missing[@]}" >"$cache/apt.log" 2>&1 || {
    apt-get update -q >>"$cache/apt.log" 2>&1
    apt-get install -y -q "${missing[@]}" >>"$cache/apt.log" 2>&1
  } || { log "apt-get failed; see $cache/apt.log"; exit 1; }
  log "installed in $(elapsed "$started_ns")s"
fi
export PATH="$PATH:/usr/sbin:/sbin"
if [ "$(id -u)" != 0 ]; then
  log "run as root: the build (buildah --isolation=chroot), debootstrap and /proc checks need it"
  exit 1
fi

export BUILDAH_ISOLATION=chroot
# Docker image format from `buildah from` on: the OCI format has no HEALTHCHECK, which
# `buildah config --healthcheck` would drop with a warning.
export BUILDAH_FORMAT=docker

# --- 2. The binary ---------------------------------------------------------------------------
bin=${PORTCULLIS_BIN:-target/release/portcullis}
if [ ! -x "$bin" ]; then
  if [ -n "${PORTCULLIS_BIN:-}" ]; then log "PORTCULLIS_BIN=$bin is not an executable"; exit 1; fi
  log "building $bin (cargo build --release --locked)"
  cargo build --release --locked
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
# The Dockerfile strips the binary in its build stage; strip a copy the same way when we can.
image_bin="$work/portcullis"
if command -v strip >/dev/null 2>&1; then strip -o "$image_bin" "$bin"; else cp "$bin" "$image_bin"; fi
log "binary $bin ($(du -h "$image_bin" | cut -f1) in the image)"

# --- 3. The base image: debootstrap minbase of this machine's Debian suite, cached ------------
# shellcheck source=/dev/null
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || { log "no VERSION_CODENAME in /etc/os-release"; exit 1; }

# The mirror apt uses for the suite: deb822 .sources files first, then one-line sources.list.
debian_mirror() {
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v s="$suite" '
      function flush() { if (!found && deb && suite && enabled && u != "") { print u; found = 1 }
                         deb = 0; suite = 0; enabled = 1; u = "" }
      BEGIN { enabled = 1 }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/   { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      /^URIs:/    { u = $2 }
      /^Suites:/  { for (i = 2; i <= NF; i++) if ($i == s) suite = 1 }
      /^Enabled:[[:space:]]*no/ { enabled = 0 }
      END { flush() }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(sed -E 's/\[[^]]*\]//' "$f" | awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }')
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  echo http://deb.debian.org/debian
}

base_image=localhost/portcullis-image-test-base:$suite
base_tar="$cache/base-$suite.tar"
t=$(date +%s%N)
if podman image exists "$base_image"; then
  log "base image $base_image: cached"
else
  if [ ! -s "$base_tar" ]; then
    mirror=$(debian_mirror)
    log "debootstrap --variant=minbase $suite from $mirror (first run only)"
    rootfs="$cache/rootfs-$suite.tmp"
    rm -rf "$rootfs"
    # ca-certificates as the Dockerfile's runtime stage installs them (debian:bookworm-slim has none).
    debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$mirror" \
      >"$cache/debootstrap.log" 2>&1 || { log "debootstrap failed; see $cache/debootstrap.log"; exit 1; }
    # What the slim image also drops: package caches and lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
      "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    # A tarball rather than the tree: no device nodes or root-owned tree left under target/.
    tar --numeric-owner -C "$rootfs" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$rootfs"
  fi
  log "podman import $base_tar as $base_image"
  podman import --quiet --message "debootstrap minbase $suite" "$base_tar" "$base_image" >/dev/null
fi
log "base image ready in $(elapsed "$t")s"

# --- 4. The runtime image: deploy/Dockerfile's runtime stage, with buildah ---------------------
t=$(date +%s%N)
old_image=$(podman image inspect --format '{{.Id}}' "$runtime_image" 2>/dev/null || true)
ctr=$(buildah from --pull=never "$base_image")
build_ctrs+=("$ctr")
# RUN apt-get install ca-certificates: only when the base lacks them (a base not built above).
mnt=$(buildah mount "$ctr")
if [ ! -s "$mnt/etc/ssl/certs/ca-certificates.crt" ]; then
  log "installing ca-certificates into the image"
  buildah run --isolation=chroot "$ctr" -- sh -c \
    'apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*'
fi
buildah umount "$ctr" >/dev/null
buildah copy --quiet --chmod 0755 "$ctr" "$image_bin" /usr/local/bin/portcullis
buildah copy --quiet --chmod 0644 "$ctr" deploy/sidecar.toml /etc/portcullis/gateway.toml
# ENTRYPOINT first: a later ENTRYPOINT would clear CMD in Dockerfile semantics. buildah 1.28 takes
# --entrypoint and --cmd as JSON (exec form), but splits --healthcheck on spaces: given JSON it
# stores a broken command (["CMD", "[/usr/local/bin/portcullis,", ...]), so the words go bare; with
# CMD first that is the exec form of the Dockerfile's HEALTHCHECK.
buildah config --entrypoint '["/usr/local/bin/portcullis"]' "$ctr"
buildah config --cmd '["run", "--config", "/etc/portcullis/gateway.toml"]' \
  --user 65532:65532 --port 8080 --port 9090 \
  --healthcheck 'CMD /usr/local/bin/portcullis healthcheck --config /etc/portcullis/gateway.toml' \
  --healthcheck-interval 10s --healthcheck-timeout 3s --healthcheck-start-period 10s \
  --label "org.opencontainers.image.source=deploy/Dockerfile" "$ctr"
# Docker format: the OCI image format has no HEALTHCHECK.
buildah commit --quiet --format docker --rm "$ctr" "$runtime_image" >/dev/null
build_ctrs=()
new_image=$(podman image inspect --format '{{.Id}}' "$runtime_image")
# The previous run's image is now untagged: remove it so reruns do not pile up layers.
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then
  podman rmi "$old_image" >/dev/null 2>&1 || true
fi
log "runtime image $runtime_image built in $(elapsed "$t")s"

# --- 5. The identity provider and upstream on the host: portcullis dev -----------------------
# Four free loopback ports: dev gateway and its metrics (unused but dev mode starts them), and the
# container's gateway and metrics. Held open together so they are distinct, then checked free.
read -r dev_gw dev_metrics gw_port metrics_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks: s.close()')
for p in "$dev_gw" "$dev_metrics" "$gw_port" "$metrics_port"; do
  if [ -n "$(ss -Hltn "sport = :$p")" ]; then log "port $p taken meanwhile; rerun"; exit 1; fi
done

"$bin" dev --listen "127.0.0.1:$dev_gw" --metrics-listen "127.0.0.1:$dev_metrics" \
  >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!
dev_up() { kill -0 "$dev_pid" 2>/dev/null && grep -qs '^Stop with' "$work/dev.out"; }
if ! poll 15 dev_up; then
  log "portcullis dev did not start:"; cat "$work/dev.out" "$work/dev.err" >&2; exit 1
fi
issuer=$(awk '$1 == "issuer" { print $2; exit }' "$work/dev.out")
token_endpoint=$(curl -sf "$issuer/.well-known/openid-configuration" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token_endpoint"])')
# dev mode does not print its demo upstream's address: it is the one listener of the process that
# is none of the gateway, metrics and issuer, and answers as the demo upstream.
upstream=""
for p in $(ss -Hltnp | awk -v pid="pid=$dev_pid," 'index($0, pid) { n = split($4, a, ":"); print a[n] }' | sort -u); do
  case "$p" in "$dev_gw" | "$dev_metrics" | "${issuer##*:}") continue ;; esac
  if curl -sf --max-time 2 "http://127.0.0.1:$p/" | grep -q 'hello from the demo upstream'; then
    upstream="127.0.0.1:$p"
  fi
done
[ -n "$upstream" ] || { log "could not find the dev demo upstream"; exit 1; }
log "dev issuer $issuer, token endpoint $token_endpoint, demo upstream $upstream"

# --- 6. Run the image ------------------------------------------------------------------------
drain_delay=1 shutdown_grace=1
cat >"$work/gateway.toml" <<EOF
# image-test: the containerized gateway in front of the host's portcullis dev issuer and upstream.
[server]
listen = "127.0.0.1:$gw_port"
threads = 1
realm = "image-test"
drain_delay = "${drain_delay}s"
shutdown_grace = "${shutdown_grace}s"

[metrics]
listen = "127.0.0.1:$metrics_port"

[[issuers]]
issuer = "$issuer"
discovery = true
audiences = ["demo-api"]
algorithms = ["ES256"]
require_typ = true

[[routes]]
name = "orders-read"
path_prefix = "/orders"
methods = ["GET", "HEAD"]
upstreams = ["$upstream"]
scopes = ["orders:read"]
EOF
chmod 0644 "$work/gateway.toml"   # read by uid 65532 in the container

# The host's hard limits bound what podman may set; it needs them explicit here.
hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=65536
hard_nproc=$(ulimit -Hu); [ "$hard_nproc" = unlimited ] && hard_nproc=65536
nofile=$((hard_nofile < 65536 ? hard_nofile : 65536))
nproc=$((hard_nproc < 4096 ? hard_nproc : 4096))

t=$(date +%s%N)
# Without systemd podman cannot schedule the periodic HEALTHCHECK (it logs an error and runs
# on); `podman healthcheck run` below runs it on demand. Its stderr is shown only on failure.
podman run --detach --name "$ctr_name" --runtime=runc \
  --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" \
  --read-only --cap-drop=ALL --security-opt=no-new-privileges --network=host \
  --volume "$work/gateway.toml:/etc/portcullis/gateway.toml:ro" \
  "$runtime_image" >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; exit 1; }
if grep -q 'systemd connection' "$work/run.err"; then
  log "no systemd: podman schedules no periodic healthcheck (checked on demand below)"
fi
show_logs() { log "container logs:"; podman logs "$ctr_name" 2>&1 | tail -n 30 >&2; }
host_pid=$(podman inspect --format '{{.State.Pid}}' "$ctr_name")
log "container $ctr_name (host pid $host_pid): gateway 127.0.0.1:$gw_port, metrics 127.0.0.1:$metrics_port"
echo

# --- 7. Checks -------------------------------------------------------------------------------
image_cfg=$(podman image inspect --format '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}' "$runtime_image")
want_cfg='65532:65532|["/usr/local/bin/portcullis"]|["run","--config","/etc/portcullis/gateway.toml"]'
if [ "$image_cfg" = "$want_cfg" ]; then
  pass "image config as deploy/Dockerfile: USER, ENTRYPOINT, CMD ($image_cfg)"
else
  fail "image config: got $image_cfg, want $want_cfg"
fi

readyz() { curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$metrics_port/readyz" || true; }
running() { [ "$(podman inspect --format '{{.State.Running}}' "$ctr_name" 2>/dev/null)" = true ]; }
ready() { running && [ "$(readyz)" = 200 ]; }
if poll 30 ready; then
  pass "readiness: /readyz 200 after $(elapsed "$t")s (deadline 30s)"
else
  fail "readiness: /readyz not 200 within 30s (last: $(readyz), running: $(running && echo yes || echo no))"
  show_logs
fi

# The image's HEALTHCHECK: as the Dockerfile's, as podman runs it, and the command through exec.
hc=$(podman image inspect --format '{{json .HealthCheck.Test}}' "$runtime_image")
want_hc='["CMD","/usr/local/bin/portcullis","healthcheck","--config","/etc/portcullis/gateway.toml"]'
if [ "$hc" = "$want_hc" ]; then
  pass "image HEALTHCHECK as deploy/Dockerfile: $hc"
else
  fail "image HEALTHCHECK: got $hc, want $want_hc"
fi
if out=$(podman healthcheck run "$ctr_name" 2>&1); then
  pass "podman healthcheck run (the image's HEALTHCHECK): ${out:-exit 0}"
else
  fail "podman healthcheck run: $out"
fi
if out=$(podman exec "$ctr_name" /usr/local/bin/portcullis healthcheck --config /etc/portcullis/gateway.toml 2>&1); then
  pass "podman exec portcullis healthcheck: exit 0${out:+ ($out)}"
else
  fail "podman exec portcullis healthcheck: $out"
fi

code=$(curl -s -D "$work/h401" -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$gw_port/orders/1" || true)
www=$(tr -d '\r' <"$work/h401" | awk 'tolower($1) == "www-authenticate:" { $1 = ""; sub(/^ /, ""); print }')
if [ "$code" = 401 ] && [[ "$www" == Bearer* ]]; then
  pass "no token: 401, WWW-Authenticate: $www"
else
  fail "no token: got $code, WWW-Authenticate: ${www:-none}"
fi

token=$(curl -s --max-time 5 "$token_endpoint" -d grant_type=client_credentials -d client_id=demo \
  -d client_secret=demo-secret -d scope=orders:read |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' || true)
code=$(curl -s -o "$work/b200" -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $token" \
  "http://127.0.0.1:$gw_port/orders/1" || true)
if [ -n "$token" ] && [ "$code" = 200 ] && grep -q '"x-auth-subject":"demo"' "$work/b200"; then
  pass "token from $token_endpoint: 200 from the demo upstream, x-auth-subject demo"
else
  fail "with a token: got ${code:-nothing}: $(head -c 300 "$work/b200" 2>/dev/null)"
fi

status() { awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ /, ""); print }' "/proc/$host_pid/status"; }
uids=$(status Uid) gids=$(status Gid)
if [[ "$uids" =~ ^65532[[:space:]]+65532[[:space:]]+65532[[:space:]]+65532$ ]] &&
  [[ "$gids" =~ ^65532[[:space:]]+65532[[:space:]]+65532[[:space:]]+65532$ ]]; then
  pass "non-root: host pid $host_pid has uid $uids and gid $gids (real, effective, saved, fs)"
else
  fail "user: host pid $host_pid Uid: $uids Gid: $gids"
fi
# For the record, podman's own view (container user, host user, pids, effective caps, seccomp).
log "podman top: $(podman top "$ctr_name" user huser pid hpid capeff seccomp 2>&1 |
  awk 'NR == 2 { printf "user=%s huser=%s pid=%s hpid=%s capeff=%s seccomp=%s", $1, $2, $3, $4, $5, $6 }')"

ro=$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$ctr_name")
root_opts=$(awk '$5 == "/" { o = $6 } END { print o }' "/proc/$host_pid/mountinfo")
if [ "$ro" = true ] && [[ ",$root_opts," == *,ro,* ]]; then
  pass "read-only root: ReadonlyRootfs=true, / mounted $root_opts in the container"
else
  fail "read-only root: ReadonlyRootfs=$ro, / mounted $root_opts"
fi
# As uid 0 (still without capabilities) so that only the read-only mount can refuse the write, not
# file permissions. The image has coreutils: it is Debian like bookworm-slim, whose runtime stage
# has a shell too.
if out=$(podman exec --user 0 "$ctr_name" /usr/bin/touch /image-test-probe 2>&1); then
  fail "write to / as uid 0 succeeded"
elif [[ "$out" == *"Read-only file system"* ]]; then
  pass "write to / refused: ${out##*: }"
else
  fail "write to / failed, but not as read-only: $out"
fi

caps_ok=true caps=""
for k in CapInh CapPrm CapEff CapBnd CapAmb; do
  v=$(status "$k"); caps+="$k=$v "
  [[ "$v" =~ ^0+$ ]] || caps_ok=false
done
if $caps_ok; then pass "no capabilities: ${caps% }"; else fail "capabilities: ${caps% }"; fi
nnp=$(status NoNewPrivs) seccomp=$(status Seccomp)
if [ "$nnp" = 1 ]; then pass "no new privileges: NoNewPrivs=1 (Seccomp=$seccomp)"; else fail "NoNewPrivs=$nnp"; fi

# SIGTERM: /readyz goes 503 for drain_delay, then the drain of at most shutdown_grace, then exit 0.
limit=$((drain_delay + shutdown_grace + 3))
t=$(date +%s%N)
podman kill --signal TERM "$ctr_name" >/dev/null
draining() { [ "$(readyz)" = 503 ]; }
if poll 5 draining; then
  pass "draining: /readyz 503 $(elapsed "$t")s after SIGTERM"
else
  fail "draining: /readyz never 503 after SIGTERM (last: $(readyz))"
fi
exited() { ! running; }
if poll 30 exited; then
  took=$(elapsed "$t")
  exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$ctr_name")
  if [ "$exit_code" = 0 ] && awk -v a="$took" -v b="$limit" 'BEGIN { exit !(a < b) }'; then
    pass "SIGTERM: exit code 0 after ${took}s (drain_delay ${drain_delay}s + shutdown_grace ${shutdown_grace}s + 3s margin = ${limit}s)"
  else
    fail "SIGTERM: exit code $exit_code after ${took}s (limit ${limit}s)"
    show_logs
  fi
else
  fail "SIGTERM: still running 30s after SIGTERM"
  show_logs
fi

echo
if [ "$failures" -gt 0 ]; then
  printf 'image-test: %d of %d checks FAILED\n' "$failures" "$checks"
  exit 1
fi
printf 'image-test: all %d checks passed\n' "$checks"
