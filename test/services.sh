#!/usr/bin/env bash
# Local Docker test bed for hub-ops: a Docker engine plus a plain-HTTP registry
# on 127.0.0.1:5000.
#
#   test/services.sh start    install what is missing, start what does not answer
#   test/services.sh stop     stop only what `start` started (by recorded PID)
#   test/services.sh status   say whether each service answers (exit 0: both up, 3: not)
#
# Environment:
#   HUBOPS_SERVICES_DIR   state dir (default ${TMPDIR:-/tmp}/hubops-services):
#                         PIDs we started, logs, registry config + storage path
#   HUBOPS_START_TIMEOUT  seconds to wait for both services (default 60)
#   HUBOPS_REGISTRY       address of the registry (default 127.0.0.1:5000)
#   HUBOPS_NO_INSTALL=1   install nothing: a missing package stops `start` with one line
#                         naming it (the Docker suites then skip with that reason; under
#                         CI=true they fail); what is installed is still started
#
# Notes (measured on the Debian 12 CI/dev machines, see docs/notes-docker-testbed.md):
# - Packages: docker.io (dockerd + /usr/bin/docker 20.10, the client that can
#   use BuildKit here), docker-registry (/usr/bin/docker-registry 2.8),
#   busybox-static (/bin/busybox, static, used by the test image fixture).
#   /usr/local/bin/docker (28.x client) stays first on PATH; we call
#   /usr/bin/docker explicitly.
# - dockerd needs no flags. With no containerd given (--containerd) and no
#   /run/containerd/containerd.sock present, dockerd 20.10 starts its own
#   "managed" containerd (/usr/bin/containerd, a child of dockerd, state under
#   /var/run/docker/containerd) and stops it when it gets SIGTERM. So no
#   separate containerd is needed. A *stale* system socket (file left behind,
#   nothing listening) would make dockerd dial it instead and hang
#   (seen: no answer within 40 s); we move such a stale socket aside
#   (only after `ctr version` failed on it) before starting. The managed
#   containerd dies with dockerd even on SIGKILL (seen), so it is not orphaned.
# - iptables/bridge: dockerd sets up docker0 + iptables (nft backend) fine on
#   these machines, so --iptables=false/--bridge=none are not needed. Were a
#   machine to lack that, dockerd would exit with an error in its log (not seen
#   here); we then show the log tail and fail instead of waiting.
# - The whole start is bounded by HUBOPS_START_TIMEOUT; a dockerd/registry we
#   started that never answers is killed again before we exit non-zero.
# - Package maintainer scripts may try to start docker/registry services;
#   policy-rc.d blocks that on these machines. Anything that was running
#   before we looked (ours or not) is reused as is and never stopped by us.
set -euo pipefail

STATE_DIR=${HUBOPS_SERVICES_DIR:-${TMPDIR:-/tmp}/hubops-services}
START_TIMEOUT=${HUBOPS_START_TIMEOUT:-60}
REGISTRY_ADDR=${HUBOPS_REGISTRY:-127.0.0.1:5000}
REGISTRY_URL="http://${REGISTRY_ADDR}/v2/"
PACKAGES=(docker.io docker-registry busybox-static)

log() { printf '%s\n' "services.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

docker_client() {
  if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker || echo docker; fi
}

# ---- answering checks --------------------------------------------------------

engine_answers() {
  timeout 5 "$(docker_client)" info >/dev/null 2>&1
}

registry_answers() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 3 "$REGISTRY_URL" 2>/dev/null
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O /dev/null -T 3 "$REGISTRY_URL" 2>/dev/null
  else
    # bash /dev/tcp: send a minimal request and look for an HTTP 200.
    timeout 3 bash -c '
      exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
      printf "GET /v2/ HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3
      IFS= read -r line <&3 && [[ $line == *" 200 "* ]]' _ "$REGISTRY_ADDR" 2>/dev/null
  fi
}

# ---- PID records: "<pid> <starttime>" so a reused PID is never mistaken ------

proc_starttime() { # field 22 of /proc/PID/stat (after the "(comm)" part)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  set -- $stat
  echo "${20}"
}

record_pid() { # name pid
  echo "$2 $(proc_starttime "$2" || echo 0)" >"$STATE_DIR/$1.pid"
}

recorded_pid() { # name -> prints pid if the recorded process is still the same one
  local f="$STATE_DIR/$1.pid" pid start now
  [[ -f $f ]] || return 1
  read -r pid start <"$f" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  now=$(proc_starttime "$pid") || return 1
  [[ $now == "$start" ]] || return 1
  echo "$pid"
}

stop_recorded() { # name grace_seconds
  local name=$1 grace=$2 pid i
  if pid=$(recorded_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      recorded_pid "$name" >/dev/null || break
      sleep 0.1
    done
    if recorded_pid "$name" >/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for ${grace}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    echo "$name: stopped (pid $pid)"
  else
    echo "$name: not started by us, nothing to stop"
  fi
  rm -f "$STATE_DIR/$name.pid"
}

# ---- install -------------------------------------------------------------------

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] || echo "$p"
  done
}

ensure_packages() {
  local missing p need_update=0
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]})) || return 0
  [[ ${HUBOPS_NO_INSTALL:-} != 1 ]] || die "HUBOPS_NO_INSTALL=1: not installing ${missing[*]} with apt; install them yourself, or unset HUBOPS_NO_INSTALL"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only if needed: no candidate in the current lists, or the
  # install fails (lists older than the mirror: 404 on a superseded .deb).
  for p in "${missing[@]}"; do
    [[ $(apt-cache policy "$p" 2>/dev/null || true) == *"Candidate: "[!\(]* ]] || need_update=1
  done
  if ((need_update)); then apt-get update -qq; fi
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    ((need_update)) && die "apt-get install ${missing[*]} failed"
    log "install failed; running apt-get update and retrying"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

# ---- start ---------------------------------------------------------------------

deadline=0
started= # pid of the last spawn_and_wait
time_left() { (($(date +%s) < deadline)); }

move_stale_containerd_socket() {
  local sock=/run/containerd/containerd.sock
  [[ -S $sock ]] || return 0
  if command -v ctr >/dev/null 2>&1 && timeout 3 ctr --address "$sock" version >/dev/null 2>&1; then
    return 0 # a live system containerd: dockerd will use it
  fi
  command -v ctr >/dev/null 2>&1 || return 0 # cannot tell; leave it
  log "moving stale $sock aside (nothing answers on it)"
  mv -f "$sock" "$sock.stale.$$"
}

proc_state() { # pid -> one-letter state (R, S, Z, ...)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  echo "${stat%% *}"
}

# /run is not a tmpfs on these machines, so pid files of a dockerd/containerd
# that died (killed at the end of a session) survive. dockerd refuses to start
# while /var/run/docker.pid names any live PID ("pid file found, ensure docker
# is not running"; seen for a still-unreaped zombie), and it adopts whatever
# live PID /var/run/docker/containerd/containerd.pid names as "containerd is
# still running", then exits after 15 s ("timeout waiting for containerd to
# start"; seen with a reused PID). Drop such files when the PID is gone, a
# zombie, or not that program; refuse to go on if a real dockerd is running.
clear_stale_pidfile() { # file expected-comm if-alive(die|keep)
  local f=$1 want=$2 if_alive=$3 pid comm= state= i
  [[ -f $f ]] || return 0
  pid=$(tr -dc 0-9 <"$f")
  if [[ -n $pid ]]; then
    for ((i = 0; i < 50; i++)); do # a process being killed: give it 5 s to go
      comm=$(cat "/proc/$pid/comm" 2>/dev/null) || { comm=; break; }
      state=$(proc_state "$pid") || { state=; break; }
      [[ $comm == "$want" && $state != Z ]] || break
      [[ $if_alive == keep ]] && return 0 # dockerd adopts a live managed containerd
      sleep 0.1
    done
    if [[ $comm == "$want" && -n $state && $state != Z ]]; then
      die "$want (pid $pid, from $f) is running but no Docker engine answers; not touching it"
    fi
  fi
  log "removing stale $f (pid ${pid:-?} is not a running $want)"
  rm -f -- "$f"
}

# A service that answers already is used as is: ours from an earlier `start`, or not ours
# (then it is never stopped by us).
already_running() { # name label answers-fn
  local pid
  "$3" || return 1
  if pid=$(recorded_pid "$1"); then
    echo "$2 (started earlier by us, pid $pid)"
  else
    rm -f "$STATE_DIR/$1.pid"
    echo "$2 (already answering, not started by us)"
  fi
}

# Starts a daemon in its own session (not killed with the caller's terminal or process
# group; fd 9, our lock, closed so it does not hold the lock), records its PID and waits
# until answers-fn succeeds. If it exits, or does not answer by the deadline (then it is
# stopped again, SIGKILL after grace seconds), shows its log tail and fails. Sets $started.
spawn_and_wait() { # name answers-fn grace command...
  local name=$1 answers=$2 grace=$3 log="$STATE_DIR/$1.log" pid
  shift 3
  : >"$log"
  setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
  pid=$!
  record_pid "$name" "$pid"
  while ! "$answers"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      rm -f "$STATE_DIR/$name.pid"
      die "$name exited during startup (log: $log)"
    fi
    if ! time_left; then
      tail -n 20 "$log" >&2 || true
      stop_recorded "$name" "$grace" >/dev/null
      die "$name did not answer within ${START_TIMEOUT}s (log: $log)"
    fi
    sleep 0.2
  done
  started=$pid
}

start_dockerd() {
  already_running dockerd "docker: running" engine_answers && return 0
  local dockerd child
  if [[ -x /usr/sbin/dockerd ]]; then dockerd=/usr/sbin/dockerd; else dockerd=$(command -v dockerd) || die "dockerd not found"; fi
  move_stale_containerd_socket
  clear_stale_pidfile /var/run/docker.pid dockerd die
  clear_stale_pidfile /var/run/docker/containerd/containerd.pid containerd keep
  spawn_and_wait dockerd engine_answers 10 "$dockerd"
  # Remember the managed containerd dockerd spawned, so `stop` can clean it up
  # if dockerd itself has to be SIGKILLed.
  child=$(pgrep -P "$started" -x containerd 2>/dev/null | head -n1 || true)
  if [[ -n $child ]]; then record_pid containerd "$child"; fi
  echo "docker: started (pid $started${child:+, managed containerd pid $child}, log $STATE_DIR/dockerd.log)"
}

start_registry() {
  already_running registry "registry: running at $REGISTRY_ADDR" registry_answers && return 0
  local bin storage
  bin=$(command -v docker-registry) || die "docker-registry not found"
  # Storage left from an earlier run of ours whose process is gone: drop it.
  if [[ -f $STATE_DIR/registry.storage ]]; then
    rm -rf -- "$(cat "$STATE_DIR/registry.storage")"
    rm -f "$STATE_DIR/registry.storage"
  fi
  storage=$(mktemp -d "${TMPDIR:-/tmp}/hubops-registry.XXXXXX")
  echo "$storage" >"$STATE_DIR/registry.storage"
  cat >"$STATE_DIR/registry.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $REGISTRY_ADDR
  headers:
    X-Content-Type-Options: [nosniff]
EOF
  spawn_and_wait registry registry_answers 5 "$bin" serve "$STATE_DIR/registry.yml"
  echo "registry: started at $REGISTRY_ADDR (pid $started, storage $storage, log $STATE_DIR/registry.log)"
}

cmd_start() {
  ensure_packages
  deadline=$(($(date +%s) + START_TIMEOUT))
  start_dockerd
  start_registry
}

cmd_stop() {
  stop_recorded registry 10
  # dockerd stops running containers (10 s each by default) and its managed
  # containerd on SIGTERM; give it time before SIGKILL.
  stop_recorded dockerd 30
  if pid=$(recorded_pid containerd); then
    kill -TERM "$pid" 2>/dev/null || true
    sleep 1
    kill -KILL "$pid" 2>/dev/null || true
    echo "containerd: stopped leftover managed containerd (pid $pid)"
  fi
  rm -f "$STATE_DIR/containerd.pid"
  if [[ -f $STATE_DIR/registry.storage ]]; then
    rm -rf -- "$(cat "$STATE_DIR/registry.storage")"
    rm -f "$STATE_DIR/registry.storage"
  fi
}

cmd_status() {
  local rc=0 pid
  if engine_answers; then
    if pid=$(recorded_pid dockerd); then echo "docker: up (ours, pid $pid)"; else echo "docker: up (not ours)"; fi
  else
    echo "docker: down"; rc=3
  fi
  if registry_answers; then
    if pid=$(recorded_pid registry); then echo "registry: up at $REGISTRY_ADDR (ours, pid $pid)"; else echo "registry: up at $REGISTRY_ADDR (not ours)"; fi
  else
    echo "registry: down ($REGISTRY_ADDR)"; rc=3
  fi
  return "$rc"
}

main() {
  local cmd=${1:-}
  case $cmd in
    start | stop | status) ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
  esac
  [[ $cmd == status ]] && { cmd_status; return; }
  [[ $(id -u) == 0 ]] || die "$cmd needs root (installs packages, runs dockerd)"
  mkdir -p "$STATE_DIR"
  # One start/stop at a time (parallel test runs).
  exec 9>"$STATE_DIR/lock"
  flock -w $((START_TIMEOUT + 120)) 9 || die "could not lock $STATE_DIR/lock"
  "cmd_$cmd"
}

main "$@"
