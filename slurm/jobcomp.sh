#!/bin/bash
# asbb's SLURM job-end hook: JobCompType=jobcomp/script, JobCompLoc=<this file>.
#
# slurmctld runs it (as SlurmUser) once for every job, array task and heterogeneous component
# that ends, including jobs cancelled while pending. It writes one job-end record
# (spool-schemas/job-end.v1.schema.json) into asbb's jobs spool as
# jobend.<cluster>.<ID>.<end-epoch>.json: first under a temporary name in the same directory,
# synced, then renamed, so asbb never reads half a file. The hold job_submit.lua attached
# (AdminComment asbb:hold-N) is read back with `scontrol show job`, which still knows the job
# for MinJobAge seconds after it ended.
#
# Settings: jobs_dir (and scontrol) in /etc/slurm/asbb_submit.conf, the file job_submit.lua
# reads. Exit 0 always: a failure is logged (syslog, and jobcomp_log if set) and the
# job's hold is released later by `asbb recover` (its lifetime, or --sacct).
set -u
umask 0027
# slurmctld runs this hook for one job at a time, so its speed bounds how fast job ends are
# recorded: everything below is bash builtins but `scontrol show job`, `sync` and `mv`.
export LC_ALL=C TZ=UTC0

conf=${ASBB_SUBMIT_CONF:-/etc/slurm/asbb_submit.conf}
jobs_dir=/var/spool/asbb/jobs
scontrol=scontrol
log_file=""
cluster=""
if [[ -r $conf ]]; then
    while IFS='=' read -r key value || [[ -n $key ]]; do
        [[ $key =~ ^[[:space:]]*# ]] && continue
        key=${key//[[:space:]]/}
        value=${value#"${value%%[![:space:]]*}"}
        value=${value%"${value##*[![:space:]]}"}
        case $key in
            jobs_dir) jobs_dir=$value ;;
            scontrol) scontrol=$value ;;
            jobcomp_log) log_file=$value ;;
            cluster) cluster=$value ;;
        esac
    done <"$conf"
fi

fail() {
    local msg
    printf -v msg '%(%Y-%m-%dT%H:%M:%SZ)T asbb jobcomp: job %s: %s' -1 "${JOBID:-?}" "$*"
    echo "$msg" >&2
    [[ -n $log_file ]] && echo "$msg" >>"$log_file" 2>/dev/null
    command -v logger >/dev/null 2>&1 && logger -t asbb-jobcomp -- "$msg" 2>/dev/null
    exit 0
}

# The record is built in `out`, a field at a time.
out=""
# A number SLURM set (NO_VAL 4294967294 and INFINITE 4294967295 mean "not set"), as JSON
# writes numbers (no leading zeros).
num() {
    if [[ $1 =~ ^(0|[1-9][0-9]{0,9})$ && $1 -lt 4294967294 ]]; then out+=$1; else out+=null; fi
}
# A JSON string: backslash and quote escaped, control characters dropped.
str() {
    local s=${1//[$'\001'-$'\037']/}
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    out+="\"$s\""
}
str_or_null() { if [[ -n $1 ]]; then str "$1"; else out+=null; fi; }
field() { out+=",\"$1\":"; } # field NAME: the key of the next value

[[ ${JOBID:-} =~ ^[0-9]+$ ]] || fail "no JOBID"
# bash sets UID to its own user (SlurmUser); the job owner's UID is in the environment it got.
owner_uid=""
while IFS= read -r -d '' kv; do
    [[ $kv == UID=* ]] && owner_uid=${kv#UID=} && break
done 2>/dev/null </proc/$$/environ
# CLUSTER is empty without accounting storage: the settings file, else slurm.conf's name.
[[ -n ${CLUSTER:-} ]] && cluster=$CLUSTER
if [[ -z $cluster ]]; then
    re='^ClusterName *= *(.*)$'
    while IFS= read -r line; do
        [[ $line =~ $re ]] && cluster=${BASH_REMATCH[1]} && break
    done < <("$scontrol" show config 2>/dev/null)
fi
[[ $cluster =~ ^[A-Za-z0-9_-]{1,64}$ ]] || fail "cluster name '$cluster' is not usable in a file name"
account=${ACCOUNT:-}
account=${account,,}
[[ $account =~ ^[a-z0-9_.-]{1,64}$ ]] || fail "account '${ACCOUNT:-}' is not a SLURM account name"
submit=${SUBMIT:-0}
end=${END:-0}
[[ $submit =~ ^[0-9]+$ && $submit -gt 0 ]] || fail "no SUBMIT time"
[[ $end =~ ^[0-9]+$ && $end -gt 0 ]] || printf -v end '%(%s)T' -1
start=${START:-0}
[[ $start =~ ^[0-9]+$ && $start -gt 0 && $start -le $end ]] || start=""
# A job cancelled while pending gets START = END and no nodes: it never started.
[[ ${NODECNT:-0} == 0 ]] && start=""

# What scontrol still knows: the hold, and the heterogeneous job this component belongs to
# (the job's own line: the first).
info=$("$scontrol" show job -o "$JOBID" 2>/dev/null || true)
info=${info%%$'\n'*}
hold=""
# AdminComment's value runs to the next "Key=" (it may hold spaces).
re='AdminComment=([^ ]*( [^= ]*)*)'
if [[ $info =~ $re ]]; then
    [[ ${BASH_REMATCH[1]} =~ asbb:(hold-[0-9]+) ]] && hold=${BASH_REMATCH[1]}
fi
het_id=""
het_off=""
[[ $info =~ HetJobId=([0-9]+) ]] && het_id=${BASH_REMATCH[1]}
[[ $info =~ HetJobOffset=([0-9]+) ]] && het_off=${BASH_REMATCH[1]}

out=""
num "${ARRAYJOBID:-}"
array_job=$out
out=""
num "${ARRAYTASKID:-}"
array_task=$out
# ARRAYJOBID is 0 for a job that is not an array.
[[ $array_job == 0 ]] && array_job=null && array_task=null
if [[ $array_job != null && $array_task != null ]]; then
    job_id="${array_job}_${array_task}"
elif [[ -n $het_id && -n $het_off ]]; then
    job_id="${het_id}+${het_off}"
else
    job_id=$JOBID
fi

state=${JOBSTATE:-UNKNOWN}
exit_code=${EXITCODE:-}
[[ $exit_code =~ ^[0-9]+:[0-9]+$ ]] || exit_code=""
derived=${DERIVED_EC:-}
[[ $derived =~ ^[0-9]+:[0-9]+$ ]] || derived=""
printf -v written '%(%Y-%m-%dT%H:%M:%SZ)T' -1

out='{"schema_version":1'
field cluster; str "$cluster"
field job_id; str "$job_id"
field raw_job_id; out+=$JOBID
field array_job_id; out+=$array_job
field array_task_id; out+=$array_task
field account; str "$account"
field partition; str_or_null "${PARTITION:-}"
field user; str_or_null "${USERNAME:-}"
field uid; num "$owner_uid"
field state; str "$state"
field exit_code; str_or_null "$exit_code"
field derived_exit_code; str_or_null "$derived"
field submit_time; out+=$submit
field start_time; out+=${start:-null}
field end_time; out+=$end
field time_limit; str_or_null "${LIMIT:-}"
field nodes; num "${NODECNT:-}"
field cpus; num "${PROCS:-}"
field job_name; str_or_null "${JOBNAME:-}"
field qos; str_or_null "${QOS:-}"
field hold_id; str_or_null "$hold"
field written_at; str "$written"
out+="}"

name="jobend.${cluster}.${job_id}.${end}.json"
tmp="${jobs_dir}/.${name}.tmp"
printf '%s' "$out" > "$tmp" || fail "cannot write $tmp"
sync "$tmp" 2>/dev/null || true
mv -f "$tmp" "${jobs_dir}/${name}" || fail "cannot rename $tmp"
exit 0
