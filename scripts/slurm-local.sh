#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tcx's sweep tests and for trying the SLURM launcher:
# munge, slurmctld, slurmd, and slurmdbd with MariaDB so that `sacct` works.
#
#   scripts/slurm-local.sh up      # install (Debian packages) if needed, start; idempotent
#   scripts/slurm-local.sh down    # stop what `up` started (by PID)
#   scripts/slurm-local.sh status
#
# Needs root (it writes /etc/slurm/slurm.conf). State, logs and the database live in $TCX_SLURM_DIR.
set -euo pipefail

STATE=${TCX_SLURM_DIR:-/tmp/tcx-slurm}
CLUSTER=tcx
HOST=$(hostname -s)
CONF=/etc/slurm

log() { echo "slurm-local: $*" >&2; }

running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

install() {
  command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
    && command -v munged >/dev/null && return
  log "installing slurm-wlm munge slurmdbd mariadb-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
}

wait_for() {  # wait_for <seconds> <what> <command...>
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "timed out waiting for $what; logs in $STATE/log"; return 1
}

start_munge() {
  mkdir -p /run/munge /etc/munge /var/lib/munge /var/log/munge
  chown -R munge:munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  fi
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged --force
  fi
  wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
  running mariadb && return
  if [ ! -d "$STATE/db/mysql" ]; then
    mariadb-install-db --datadir="$STATE/db" --user=root --auth-root-authentication-method=normal >/dev/null
  fi
  mariadbd --datadir="$STATE/db" --user=root --bind-address=127.0.0.1 --port=3306 \
    --socket="$STATE/run/mysqld.sock" --pid-file="$STATE/mariadb.pid" \
    --log-error="$STATE/log/mariadb.log" --skip-grant-tables=0 &
  wait_for 30 mariadb mariadb --socket="$STATE/run/mysqld.sock" -uroot -e "select 1"
  mariadb --socket="$STATE/run/mysqld.sock" -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

write_configs() {
  mkdir -p "$CONF" "$STATE"/{spool/ctld,spool/d,log,run}
  local mem; mem=$(awk '/MemTotal/ {print int($2/1024) - 2048}' /proc/meminfo)
  cat > "$CONF/slurm.conf" <<CFG
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
MinJobAge=300
KillWait=5
NodeName=$HOST CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CFG
  rm -f "$CONF/cgroup.conf"  # a cgroup.conf with CgroupPlugin=disabled kills slurmd 22.05
  cat > "$CONF/slurmdbd.conf" <<CFG
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
CFG
  chmod 600 "$CONF/slurmdbd.conf"
}

up() {
  install
  mkdir -p "$STATE"/{db,run,log}
  if running slurmctld && running slurmd && sinfo -h >/dev/null 2>&1; then log "already up"; return; fi
  write_configs
  start_munge
  start_mariadb
  running slurmdbd || slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  running slurmctld || slurmctld
  wait_for 30 slurmctld scontrol ping
  running slurmd || slurmd
  wait_for 30 "node $HOST" sh -c "sinfo -h -N -o %t | grep -Eq 'idle|mix|alloc'"
  scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
  log "up: $(sinfo -h -o '%P %a %D %t')"
}

down() {
  for name in slurmd slurmctld slurmdbd mariadb; do
    if running "$name"; then kill "$(cat "$STATE/$name.pid")" && log "stopped $name"; fi
  done
}

status() { sinfo && sacct -n -X -o JobID,State | tail -5; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
