# shellcheck shell=bash
# tuning/lib.sh: sourced by tuning/check and tuning/apply, never run. Reads
# the recommendations (sysctl.d/60-shardcast.conf, limits.d/shardcast.conf),
# reads the host's current values under ${ROOT}/proc/sys (ROOT empty: the real
# one), and judges each knob by its rule. The caller sets PROG and ROOT.
#
# After collect_rows, the arrays ROW_KNOB, ROW_KIND (sysctl|limit), ROW_CUR,
# ROW_REC, ROW_RULE, ROW_STATUS (ok|LOW|HIGH|BAD|missing) and ROW_TARGET (the
# value that passes while keeping every field that already passes) hold one
# row per knob, sysctls in conf order, then the limits.

TUNING_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SYSCTL_CONF=$TUNING_DIR/sysctl.d/60-shardcast.conf
LIMITS_CONF=$TUNING_DIR/limits.d/shardcast.conf
# shellcheck disable=SC2034 # used by apply
SYSTEMD_DROPIN=$TUNING_DIR/systemd/shardcast.service.d/limits.conf
SERVICE_USER=shardcast

# Bad invocation or a malformed recommendation file: exit 2.
die_usage() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    exit 2
}

# Squeezes runs of blanks (tabs in /proc/sys) into single spaces.
normalize() {
    local -a f
    read -ra f <<<"$1" || true
    local IFS=' '
    printf '%s' "${f[*]}"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# Sets CMP to -1, 0 or 1 comparing two unsigned decimal strings of any size
# (some knobs are unsigned long; bash arithmetic would wrap).
numcmp() {
    local a=$1 b=$2
    a=${a#"${a%%[!0]*}"} b=${b#"${b%%[!0]*}"}
    if ((${#a} != ${#b})); then
        CMP=$(((${#a} > ${#b}) ? 1 : -1))
    elif [[ $a == "$b" ]]; then
        CMP=0
    elif [[ $a > $b ]]; then
        CMP=1
    else
        CMP=-1
    fi
}

# Recommendations from the sysctl conf: C_KEY, C_REC, C_RULE.
C_KEY=() C_REC=() C_RULE=()
load_conf() {
    local line rule="" key val n=0 r
    local -a fields rules
    [[ -r $SYSCTL_CONF ]] || die_usage "cannot read $SYSCTL_CONF"
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        line=$(normalize "$line")
        if [[ $line =~ ^\#\ ?check:\ ?([a-z,]+)$ ]]; then
            rule=${BASH_REMATCH[1]}
            continue
        fi
        [[ -z $line || $line == \#* || $line == \;* ]] && continue
        [[ $line =~ ^-?([A-Za-z0-9_.-]+)\ ?=\ ?(.+)$ ]] ||
            die_usage "$SYSCTL_CONF:$n: not a 'key = value' line: $line"
        key=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
        [[ -n $rule ]] || die_usage "$SYSCTL_CONF:$n: $key has no '# check: RULE' line above it"
        read -ra fields <<<"$val"
        IFS=, read -ra rules <<<"$rule"
        for r in "${rules[@]}"; do
            [[ $r == min || $r == max || $r == eq || $r == range ]] ||
                die_usage "$SYSCTL_CONF:$n: $key: unknown rule '$r' (min, max, eq, range)"
        done
        for r in "${fields[@]}"; do
            is_uint "$r" || die_usage "$SYSCTL_CONF:$n: $key: '$val' is not numeric"
        done
        if [[ $rule == *range* ]]; then
            [[ $rule == range && ${#fields[@]} -eq 2 ]] ||
                die_usage "$SYSCTL_CONF:$n: $key: range takes one 'low high' pair"
        elif ((${#rules[@]} != 1 && ${#rules[@]} != ${#fields[@]})); then
            die_usage "$SYSCTL_CONF:$n: $key: ${#rules[@]} rules for ${#fields[@]} fields"
        fi
        C_KEY+=("$key") C_REC+=("$val") C_RULE+=("$rule")
        rule=""
    done <"$SYSCTL_CONF"
    ((${#C_KEY[@]} > 0)) || die_usage "$SYSCTL_CONF: no knobs"
}

# Sets CUR to the knob's current value; returns 1 when the kernel has no such
# knob (no file under /proc/sys).
read_sysctl() {
    local path="${ROOT}/proc/sys/${1//.//}" line=""
    [[ -f $path ]] || return 1
    IFS= read -r line <"$path" || [[ -n $line ]] || return 1
    CUR=$(normalize "$line")
}

# evaluate REC RULE CUR: sets STATUS (ok|LOW|HIGH|BAD) and TARGET.
evaluate() {
    local -a r c rules t=()
    local i rule
    read -ra r <<<"$1" || true
    read -ra c <<<"$3" || true
    IFS=, read -ra rules <<<"$2"
    STATUS=ok TARGET=$1
    if ((${#c[@]} != ${#r[@]})); then
        STATUS=BAD
        return
    fi
    for i in "${c[@]}"; do
        is_uint "$i" || {
            STATUS=BAD
            return
        }
    done
    if [[ $2 == range ]]; then
        t=("${c[0]}" "${c[1]}")
        numcmp "${c[0]}" "${r[0]}"
        ((CMP <= 0)) || { STATUS=LOW t[0]=${r[0]}; }
        numcmp "${c[1]}" "${r[1]}"
        ((CMP >= 0)) || { STATUS=LOW t[1]=${r[1]}; }
    else
        for i in "${!r[@]}"; do
            rule=${rules[i]:-${rules[0]}}
            numcmp "${c[i]}" "${r[i]}"
            t[i]=${c[i]}
            case $rule in
            min) ((CMP >= 0)) || t[i]=${r[i]} ;;
            max) ((CMP <= 0)) || t[i]=${r[i]} ;;
            eq) ((CMP == 0)) || t[i]=${r[i]} ;;
            esac
            if [[ $STATUS == ok && ${t[i]} != "${c[i]}" ]]; then
                if ((CMP < 0)); then STATUS=LOW; else STATUS=HIGH; fi
            fi
        done
    fi
    local IFS=' '
    TARGET="${t[*]}"
}

# limit_rec TYPE ITEM: the value the limits file sets for the service user.
limit_rec() {
    local who type item value _
    while read -r who type item value _; do
        [[ $who == "$SERVICE_USER" && $type == "$1" && $item == "$2" ]] || continue
        [[ $value == infinity || $value == -1 ]] && value=unlimited
        printf '%s' "$value"
        return 0
    done <"$LIMITS_CONF"
    die_usage "$LIMITS_CONF: no '$SERVICE_USER $1 $2' line"
}

# limit_cur TYPE ITEM: the current process's limit. Real host: the shell's
# ulimit. With ROOT: ${ROOT}/proc/self/limits (returns 1 when absent).
limit_cur() {
    local flag name line soft hard
    case $2 in
    nofile) flag=n name="Max open files" ;;
    memlock) flag=l name="Max locked memory" ;;
    esac
    if [[ -z $ROOT ]]; then
        if [[ $1 == soft ]]; then ulimit -S"$flag"; else ulimit -H"$flag"; fi
        return 0
    fi
    [[ -r $ROOT/proc/self/limits ]] || return 1
    while IFS= read -r line; do
        [[ $line == "$name "* ]] || continue
        read -r soft hard _ <<<"${line#"$name"}"
        local v=$soft
        [[ $1 == hard ]] && v=$hard
        # /proc/self/limits gives bytes; ulimit and limits.conf give KiB.
        [[ $2 == memlock && $v != unlimited ]] && v=$((v / 1024))
        printf '%s' "$v"
        return 0
    done <"$ROOT/proc/self/limits"
    return 1
}

ROW_KNOB=() ROW_KIND=() ROW_CUR=() ROW_REC=() ROW_RULE=() ROW_STATUS=() ROW_TARGET=()
add_row() {
    ROW_KNOB+=("$1") ROW_KIND+=("$2") ROW_CUR+=("$3") ROW_REC+=("$4")
    ROW_RULE+=("$5") ROW_STATUS+=("$6") ROW_TARGET+=("$7")
}

collect_rows() {
    local i item type rec cur c r
    load_conf
    [[ -r $LIMITS_CONF ]] || die_usage "cannot read $LIMITS_CONF"
    for i in "${!C_KEY[@]}"; do
        if read_sysctl "${C_KEY[i]}"; then
            evaluate "${C_REC[i]}" "${C_RULE[i]}" "$CUR"
            add_row "${C_KEY[i]}" sysctl "$CUR" "${C_REC[i]}" "${C_RULE[i]}" "$STATUS" "$TARGET"
        else
            add_row "${C_KEY[i]}" sysctl "" "${C_REC[i]}" "${C_RULE[i]}" missing ""
        fi
    done
    for item in nofile memlock; do
        for type in soft hard; do
            rec=$(limit_rec "$type" "$item")
            if cur=$(limit_cur "$type" "$item"); then
                # unlimited compares as larger than any number.
                c=$cur r=$rec
                [[ $c == unlimited ]] && c=99999999999999999999
                [[ $r == unlimited ]] && r=99999999999999999999
                evaluate "$r" min "$c"
                add_row "limit.$item.$type" limit "$cur" "$rec" min "$STATUS" "$rec"
            else
                add_row "limit.$item.$type" limit "" "$rec" min missing ""
            fi
        done
    done
}

# True when the row fails the check (missing knobs do not fail).
row_fails() { [[ ${ROW_STATUS[$1]} != ok && ${ROW_STATUS[$1]} != missing ]]; }

# Drops a trailing slash from ROOT and refuses a ROOT that is not a directory.
normalize_root() {
    ROOT=${ROOT%/}
    if [[ -n $ROOT && ! -d $ROOT ]]; then
        die_usage "--root $ROOT: not a directory"
    fi
    return 0
}
