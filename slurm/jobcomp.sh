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

conf=${ASBB_SUBMIT_CONF:-/etc/slurm/asbb_submit.conf}
jobs_dir=/var/spool/asbb/jobs
scontrol=scontrol
log_file=""
cluster=""
if [[ -r $conf ]]; then
    while IFS='=' read -r key value; do
        key=${key//[[:space:]]/}
        value=${value#"${value%%[![:space:]]*}"}
        value=${value%"${value##*[![:space:]]}"}
        case $key in
            jobs_dir) jobs_dir=$value ;;
            scontrol) scontrol=$value ;;
            jobcomp_log) log_file=$value ;;
            cluster) cluster=$value ;;
        esac
    done < <(grep -v '^[[:space:]]*#' "$conf")
fi

fail() {
    local msg
    msg="$(date -u +%Y-%m-%dT%H:%M:%SZ) asbb jobcomp: job ${JOBID:-?}: $*"
    echo "$msg" >&2
    [[ -n $log_file ]] && echo "$msg" >>"$log_file" 2>/dev/null
    command -v logger >/dev/null 2>&1 && logger -t asbb-jobcomp -- "$msg" 2>/dev/null
    exit 0
}

# A number SLURM set (NO_VAL 4294967294 and INFINITE 4294967295 mean "not set").
num() {
    [[ $1 =~ ^[0-9]+$ && $1 -lt 4294967294 ]] && printf '%s' "$1" || printf 'null'
}
# A JSON string: backslash and quote escaped, control characters dropped.
str() {
    local s
    s=$(printf '%s' "$1" | tr -d '\000-\037')
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}
str_or_null() { [[ -n $1 ]] && str "$1" || printf 'null'; }

[[ ${JOBID:-} =~ ^[0-9]+$ ]] || fail "no JOBID"
# bash sets UID to its own user (SlurmUser); the job owner's UID is in the environment it got.
owner_uid=$(tr '\0' '\n' < /proc/$$/environ 2>/dev/null | sed -n 's/^UID=//p' | head -n 1)
# CLUSTER is empty without accounting storage: the settings file, else slurm.conf's name.
[[ -n ${CLUSTER:-} ]] && cluster=$CLUSTER
if [[ -z $cluster ]]; then
    cluster=$("$scontrol" show config 2>/dev/null | sed -n 's/^ClusterName *= *//p' | head -n 1)
fi
[[ $cluster =~ ^[A-Za-z0-9_-]{1,64}$ ]] || fail "cluster name '$cluster' is not usable in a file name"
account=$(printf '%s' "${ACCOUNT:-}" | tr 'A-Z' 'a-z')
[[ $account =~ ^[a-z0-9_.-]{1,64}$ ]] || fail "account '${ACCOUNT:-}' is not a SLURM account name"
submit=${SUBMIT:-0}
end=${END:-0}
[[ $submit =~ ^[0-9]+$ && $submit -gt 0 ]] || fail "no SUBMIT time"
[[ $end =~ ^[0-9]+$ && $end -gt 0 ]] || end=$(date +%s)
start=${START:-0}
[[ $start =~ ^[0-9]+$ && $start -gt 0 && $start -le $end ]] || start=""
# A job cancelled while pending gets START = END and no nodes: it never started.
[[ ${NODECNT:-0} == 0 ]] && start=""

# What scontrol still knows: the hold, and the heterogeneous job this component belongs to.
info=$("$scontrol" show job -o "$JOBID" 2>/dev/null || true)
hold=$(printf '%s' "$info" | grep -o 'AdminComment=[^ ]*\( [^= ]*\)*' | grep -o 'asbb:hold-[0-9]*' | head -n 1)
hold=${hold#asbb:}
het_id=$(printf '%s' "$info" | grep -o 'HetJobId=[0-9]*' | head -n 1 | cut -d= -f2)
het_off=$(printf '%s' "$info" | grep -o 'HetJobOffset=[0-9]*' | head -n 1 | cut -d= -f2)

array_job=$(num "${ARRAYJOBID:-}")
array_task=$(num "${ARRAYTASKID:-}")
# ARRAYJOBID is 0 for a job that is not an array.
[[ $array_job == 0 ]] && array_job=null && array_task=null
if [[ $array_job != null && $array_task != null && $array_job != 0 ]]; then
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

name="jobend.${cluster}.${job_id}.${end}.json"
tmp="${jobs_dir}/.${name}.tmp"
record=$(
    printf '{"schema_version":1,"cluster":%s,"job_id":%s,"raw_job_id":%s,' \
        "$(str "$cluster")" "$(str "$job_id")" "$JOBID"
    printf '"array_job_id":%s,"array_task_id":%s,"account":%s,"partition":%s,' \
        "$array_job" "$array_task" "$(str "$account")" "$(str_or_null "${PARTITION:-}")"
    printf '"user":%s,"uid":%s,"state":%s,"exit_code":%s,"derived_exit_code":%s,' \
        "$(str_or_null "${USERNAME:-}")" "$(num "${owner_uid:-}")" "$(str "$state")" \
        "$(str_or_null "$exit_code")" "$(str_or_null "$derived")"
    printf '"submit_time":%s,"start_time":%s,"end_time":%s,"time_limit":%s,' \
        "$submit" "${start:-null}" "$end" "$(str_or_null "${LIMIT:-}")"
    printf '"nodes":%s,"cpus":%s,"job_name":%s,"qos":%s,"hold_id":%s,"written_at":%s}' \
        "$(num "${NODECNT:-}")" "$(num "${PROCS:-}")" "$(str_or_null "${JOBNAME:-}")" \
        "$(str_or_null "${QOS:-}")" "$(str_or_null "$hold")" "$(str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
)
printf '%s' "$record" > "$tmp" || fail "cannot write $tmp"
sync "$tmp" 2>/dev/null || true
mv -f "$tmp" "${jobs_dir}/${name}" || fail "cannot rename $tmp"
exit 0
