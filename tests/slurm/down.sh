#!/usr/bin/env bash
# Stop the cluster started by up.sh: cancel all jobs, stop the daemons it recorded and any
# leftover job steps. --purge also removes its state, database and generated configs (restoring
# the files they replaced); the logs in $SLURM_CI_BASE/log are kept. Safe to run when nothing is up.
set -euo pipefail

t0=$(date +%s.%N)
BASE=${SLURM_CI_BASE:-/var/spool/slurm-ci}
purge=0
case ${1:-} in
"") ;;
--purge) purge=1 ;;
*) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { echo "slurm-ci: $*"; }
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

[[ $(id -u) == 0 ]] || { echo "slurm-ci: down.sh must run as root" >&2; exit 1; }
if [[ ! -d $BASE ]]; then
    log "nothing to stop ($BASE does not exist)"
    exit 0
fi
if [[ -z ${SLURM_CI_LOCKED:-} ]]; then
    exec 9>/run/lock/slurm-ci.lock
    flock 9
fi

# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

# --- jobs ---------------------------------------------------------------------------------
# Cancel through slurmctld while slurmd still runs: a job whose slurmd is gone stays RUNNING
# in the controller's state forever.
if ours_alive slurmctld; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u || true)
    if [[ -n $jobs ]]; then
        log "cancelling $(wc -w <<<"$jobs") job(s)"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        deadline=$((SECONDS + 20))
        # Without slurmd nobody can end the steps; those are handled below.
        while ours_alive slurmd && [[ -n $(timeout 10 squeue -h -o %A 2>/dev/null || true) ]] &&
            ((SECONDS < deadline)); do
            sleep 0.2
        done
    fi
fi

# --- daemons ------------------------------------------------------------------------------
stop() { # names... : TERM together, KILL whatever is left after 20 s
    local d pids=() names=() deadline
    for d in "$@"; do
        if ours_alive "$d"; then pids+=("$(recorded "$d")"); names+=("$d"); fi
    done
    if ((${#pids[@]})); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        deadline=$((SECONDS + 20))
        for d in "${names[@]}"; do
            while ours_alive "$d" && ((SECONDS < deadline)); do sleep 0.1; done
            if ours_alive "$d"; then
                log "$d did not stop after 20 s; killing it"
                kill -KILL "$(recorded "$d")" 2>/dev/null || true
            fi
        done
        log "stopped ${names[*]}"
    fi
    for d in "$@"; do rm -f "$BASE/pids/$d.pid"; done
}
# slurmctld sends its final records to slurmdbd, which writes them to MariaDB; all use munge.
stop slurmd slurmctld
stop slurmdbd
stop mariadbd
stop munged

# --- leftover job steps -------------------------------------------------------------------
# slurmstepd outlives slurmd; ours are recognised by the slurmd log file they keep open.
children() {
    local st line pid
    for st in /proc/[0-9]*/stat; do
        line=$(cat "$st" 2>/dev/null) || continue
        pid=${st#/proc/}
        line=${line##*) }
        read -r _ ppid _ <<<"$line"
        [[ $ppid == "$1" ]] && echo "${pid%/stat}"
    done
}
tree() { local c; echo "$1"; for c in $(children "$1"); do tree "$c"; done; }
victims=()
for p in $(pgrep -x slurmstepd || true); do
    if ls -l "/proc/$p/fd" 2>/dev/null | grep -qF " -> $BASE/log/"; then
        victims+=($(tree "$p"))
    fi
done
if ((${#victims[@]})); then
    log "stopping leftover job steps: ${victims[*]}"
    kill -TERM "${victims[@]}" 2>/dev/null || true
    sleep 2
    kill -KILL "${victims[@]}" 2>/dev/null || true
fi

# --- purge --------------------------------------------------------------------------------
if ((purge)); then
    if [[ -s $BASE/generated ]]; then
        while read -r f; do
            rm -f "$f"
            if [[ -e $BASE/backup$f ]]; then
                mv -f "$BASE/backup$f" "$f"
                log "restored $f"
            fi
        done <"$BASE/generated"
    fi
    find "$BASE" -mindepth 1 -maxdepth 1 ! -name log -exec rm -rf {} +
    log "purged state, database and generated configs (kept $BASE/log)"
fi
log "down; took $(elapsed)"
