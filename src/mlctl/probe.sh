# mlctl host probe: prints ONE line of JSON describing this host, then exits 0.
#
# Usage: sh probe.sh [--root ROOT] [MODELS_DIR...]
#   ROOT        mlctl's root on this host (default ~/.mlctl)
#   MODELS_DIR  candidate models directories whose free space is reported
#               (default ROOT/models /workspace /data /mnt ~); a directory that
#               does not exist yet is measured at its nearest existing parent.
#
# POSIX sh (dash, busybox ash): no bash-isms. Never aborts: whatever is missing
# becomes a fact. Raw command output is passed through JSON-escaped and parsed
# by mlctl.facts.parse_probe_output, which is easier to get right than sh.
set -u

PROBE_VERSION=1
HOME=${HOME:-/root}

# shellcheck disable=SC2088 # matching a literal ~ on purpose
expand_home() {
    case $1 in
        "~") printf '%s' "$HOME" ;;
        "~/"*) printf '%s/%s' "$HOME" "${1#\~/}" ;;
        *) printf '%s' "$1" ;;
    esac
}

have() {
    command -v "$1" >/dev/null 2>&1
}

# `timeout` where it exists (coreutils and modern busybox accept `timeout SECS CMD`).
HAVE_TIMEOUT=''
run_t() { # run_t SECONDS CMD...
    _t=$1
    shift
    if [ -n "$HAVE_TIMEOUT" ]; then timeout "$_t" "$@"; else "$@"; fi
}

# JSON string literal of $1: backslash, quote and every control character escaped.
# Byte-wise (LC_ALL=C) so any UTF-8 passes through unchanged.
if have awk; then
    json_str() {
        # The trailing "." keeps a final newline of $1 from being lost; END drops it.
        printf '%s.' "$1" | LC_ALL=C awk '
            BEGIN {
                for (i = 1; i < 32; i++) esc[sprintf("%c", i)] = sprintf("\\u%04x", i)
                esc["\t"] = "\\t"; esc["\r"] = "\\r"; esc["\b"] = "\\b"; esc["\f"] = "\\f"
                out = ""; first = 1
            }
            {
                line = $0; s = ""; n = length(line)
                for (i = 1; i <= n; i++) {
                    c = substr(line, i, 1)
                    if (c == "\\") s = s "\\\\"
                    else if (c == "\"") s = s "\\\""
                    else if (c in esc) s = s esc[c]
                    else s = s c
                }
                out = first ? s : out "\\n" s
                first = 0
            }
            END { printf "\"%s\"", substr(out, 1, length(out) - 1) }'
    }
else
    # Lossy fallback without awk: control characters become spaces.
    json_str() {
        printf '"%s"' "$(printf '%s' "$1" | tr '\001-\037' ' ' | sed 's/\\/\\\\/g; s/"/\\"/g')"
    }
fi

OUT=''
add() { # add KEY RAW_JSON_VALUE
    if [ -n "$OUT" ]; then OUT="$OUT,"; fi
    OUT="$OUT\"$1\":$2"
}
add_str() { add "$1" "$(json_str "$2")"; }

first_readable() { # print the first line of the first readable file among the arguments
    for _f in "$@"; do
        if [ -r "$_f" ]; then head -n 1 "$_f" 2>/dev/null; return 0; fi
    done
    return 0
}

df_of() { # raw `df -Pk DIR` output, or nothing
    if have df; then run_t 10 df -Pk "$1" 2>/dev/null; fi
}

tool_entry() { # tool_entry NAME CMD... -> {"path":..,"out":..,"rc":..} or null
    _name=$1
    shift
    if ! have "$_name"; then
        printf 'null'
        return 0
    fi
    _out=$(run_t 20 "$@" 2>&1 </dev/null)
    _rc=$?
    _out=$(printf '%s\n' "$_out" | head -n 20)
    printf '{"path":%s,"out":%s,"rc":%s}' \
        "$(json_str "$(command -v "$_name")")" "$(json_str "$_out")" "$(json_str "$_rc")"
}

main() {
    # shellcheck disable=SC2088 # a literal ~ on purpose: expand_home resolves it
    ROOT_ARG='~/.mlctl'
    if [ "${1:-}" = "--root" ] && [ "$#" -ge 2 ]; then
        ROOT_ARG=$2
        shift 2
    fi
    if [ "${1:-}" = "--" ]; then
        shift
    fi
    if have timeout && timeout 5 true >/dev/null 2>&1; then HAVE_TIMEOUT=1; fi

    add "mlctl_probe" "$PROBE_VERSION"
    add_str "hostname" "$(uname -n 2>/dev/null)"
    add_str "kernel" "$(uname -sr 2>/dev/null)"
    add_str "arch" "$(uname -m 2>/dev/null)"
    if [ -r /etc/os-release ]; then
        add_str "os_release" "$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | head -n 1)"
    fi

    # ---- CPU ------------------------------------------------------------------
    cpus=''
    if have nproc; then cpus=$(nproc 2>/dev/null); fi
    if [ -z "$cpus" ] && have getconf; then cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null); fi
    if [ -z "$cpus" ] && [ -r /proc/cpuinfo ]; then cpus=$(grep -c '^processor' /proc/cpuinfo 2>/dev/null); fi
    add_str "cpu_count" "$cpus"

    cg_path=''
    if [ -r /proc/self/cgroup ]; then
        cg_path=$(sed -n 's/^0:://p' /proc/self/cgroup 2>/dev/null | head -n 1)
    fi
    # cgroup v2 (the process's own cgroup, then the namespace root), then v1.
    add_str "cgroup_cpu_max" "$(first_readable "/sys/fs/cgroup$cg_path/cpu.max" /sys/fs/cgroup/cpu.max)"
    add_str "cgroup_cpu_quota_v1" "$(first_readable /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us)"
    add_str "cgroup_cpu_period_v1" "$(first_readable /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us)"

    # ---- memory ---------------------------------------------------------------
    if [ -r /proc/meminfo ]; then
        add_str "mem_total" "$(grep '^MemTotal:' /proc/meminfo 2>/dev/null | head -n 1)"
    fi
    add_str "cgroup_memory_max" "$(first_readable "/sys/fs/cgroup$cg_path/memory.max" /sys/fs/cgroup/memory.max)"
    add_str "cgroup_memory_limit_v1" "$(first_readable /sys/fs/cgroup/memory/memory.limit_in_bytes)"

    # ---- disks ----------------------------------------------------------------
    if [ -d /dev/shm ]; then
        add_str "shm_df" "$(df_of /dev/shm)"
    fi

    root=$(expand_home "$ROOT_ARG")
    if [ "$#" -eq 0 ]; then
        set -- "${ROOT_ARG%/}/models" /workspace /data /mnt '~'
    fi
    disks=''
    for given in "$@"; do
        dir=$(expand_home "$given")
        at=$dir
        while [ ! -d "$at" ]; do
            parent=$(dirname "$at")
            if [ "$parent" = "$at" ]; then break; fi
            at=$parent
        done
        entry="{\"path\":$(json_str "$given"),\"dir\":$(json_str "$dir"),\"at\":$(json_str "$at"),\"df\":$(json_str "$(df_of "$at")")}"
        if [ -n "$disks" ]; then disks="$disks,"; fi
        disks="$disks$entry"
    done
    add "disks" "[$disks]"

    # ---- GPUs -----------------------------------------------------------------
    if have nvidia-smi; then
        # compute_cap needs driver >= 510 and mig.mode.current >= 450: fall back field by field.
        smi_rc=1
        for fields in \
            index,name,memory.total,memory.used,compute_cap,uuid,mig.mode.current,driver_version \
            index,name,memory.total,memory.used,uuid,mig.mode.current,driver_version \
            index,name,memory.total,memory.used,uuid,driver_version; do
            smi_csv=$(run_t 30 nvidia-smi "--query-gpu=$fields" --format=csv,noheader,nounits 2>&1)
            smi_rc=$?
            if [ "$smi_rc" -eq 0 ]; then break; fi
            # A failure that is not about an unknown field will not be cured by fewer fields.
            case $smi_csv in
                *"not a valid field"* | *"nvalid"*) ;;
                *) break ;;
            esac
        done
        add_str "smi_fields" "$fields"
        add_str "smi_csv" "$smi_csv"
        add_str "smi_csv_rc" "$smi_rc"
        smi_table=$(run_t 30 nvidia-smi 2>&1)
        smi_table_rc=$?
        add_str "smi_table" "$(printf '%s\n' "$smi_table" | head -n 200)"
        add_str "smi_table_rc" "$smi_table_rc"
        if [ "$smi_rc" -eq 0 ]; then add_str "nvidia_smi" "ok"; else add_str "nvidia_smi" "error"; fi
    else
        add_str "nvidia_smi" "missing"
    fi

    # ---- tools ----------------------------------------------------------------
    tools=''
    for t in python3 uv docker vllm ollama llama-server hf; do
        case $t in
            # `hf version` imports all of huggingface_hub (~0.3 s): its presence is enough
            hf) entry=$(tool_entry hf true) ;;
            *) entry=$(tool_entry "$t" "$t" --version) ;;
        esac
        if [ -n "$tools" ]; then tools="$tools,"; fi
        tools="$tools\"$t\":$entry"
    done
    add "tools" "{$tools}"

    # ---- mlctl's deployments ----------------------------------------------------
    deps=''
    if [ -d "$root/deployments" ]; then
        for d in "$root"/deployments/*/; do
            if [ ! -d "$d" ]; then continue; fi
            name=$(basename "$d")
            if [ -n "$deps" ]; then deps="$deps,"; fi
            deps="$deps$(json_str "$name")"
        done
    fi
    add_str "root" "$root"
    add "deployments" "[$deps]"
    # where this host's Hugging Face client downloads from (a mirror, or the sandbox Hub)
    add_str "hf_endpoint" "${HF_ENDPOINT:-}"

    printf '{%s}\n' "$OUT"
}

# The script may arrive on stdin (`sh -s`): main is parsed whole before it runs, and
# its stdin is /dev/null, so no command it starts can swallow the rest of the script.
main "$@" </dev/null
exit 0
