# Sourced by up.sh and down.sh (which set BASE): the daemons' process bookkeeping.

# PID 1 on these machines reaps orphans late, so a dead daemon can linger as a zombie:
# liveness means "exists, not a zombie, and still the program we started".
alive() { # pid name
    local stat
    [[ -n $1 ]] && stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}
recorded() { cat "$BASE/pids/$1.pid" 2>/dev/null || true; }
ours_alive() { alive "$(recorded "$1")" "$1"; }
