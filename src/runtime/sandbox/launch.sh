# Instance launcher (namespaces mode). Runs as root and as PID 1 of the instance's fresh pid, mount,
# uts, ipc and net namespaces (started by `unshare --fork --kill-child`). It joins the instance's
# cgroups first, so everything after it (mount, ip, the user's program and all its children) is
# limited, hides the platform's files, then starts the program as an unprivileged uid and waits.
# It stays PID 1 so that the program is not PID 1 (PID 1 ignores SIGTERM unless it handles it) and
# so that the whole namespace dies with it.
# The program's environment arrives on stdin as `export 'K'='V'` lines and is applied only after
# the uid switch: root processes here (sh, mount, ip, setpriv) never see the user's variables
# (LD_PRELOAD, PATH, ...), and the values never appear on a command line.
# Args: cgroup.procs x3, code dir, data dir, uid, tmpfs MiB, ip, setpriv, program argv...
set -eu
cg1=$1 cg2=$2 cg3=$3 code=$4 data=$5 uid=$6 tmp_mb=$7 ip=$8 setpriv=$9
shift 9
# "0" means "the writing process" (pids are resolved in the writer's pid namespace)
echo 0 >"$cg1"
echo 0 >"$cg2"
echo 0 >"$cg3"
# keep a handle on the code dir: the tmpfs mounts below may hide its path
exec 3<"$code" 4<&0 </dev/null
mount -t tmpfs -o mode=0755,size=1m,nosuid,nodev aether-hidden "$data"
mount -t tmpfs -o mode=1777,size="$tmp_mb"m,nosuid,nodev aether-tmp /tmp
mount -t tmpfs -o mode=1777,size="$tmp_mb"m,nosuid,nodev aether-tmp /var/tmp
mount -t tmpfs -o mode=1777,size="$tmp_mb"m,nosuid,nodev aether-shm /dev/shm
mkdir -p "$code"
# -c: bind the directory fd 3 points at, not the (now hidden) path it names
mount -c --bind -o ro,nosuid,nodev /proc/self/fd/3 "$code"
exec 3<&-
"$ip" link set lo up
cd "$code"
"$setpriv" --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- \
  /bin/sh -c 'eval "$(cat)"; exec "$@" </dev/null' sh "$@" <&4 4<&- &
exec 4<&-
wait $!
