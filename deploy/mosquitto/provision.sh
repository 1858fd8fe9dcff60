#!/bin/bash
# Users and topic rights of the central broker: mosquitto 2.0's dynamic-security plugin,
# driven through mosquitto_ctrl. Who may do what, and why: docs/security.md.
#
#   provision.sh init [FILE]                 once, before the broker loads the plugin: write
#                                            its FILE (default /var/lib/mosquitto/dynamic-
#                                            security.json): admin user `_admin`, deny by
#                                            default; and the admin's connection options
#   provision.sh add-service ingest|api [N...]
#                                            one user per instance N: `_ingest-N` pinned to
#                                            client id `ingest-N` (default N: 0), `_api-N`
#                                            pinned to `api-N` (default N: 1); the service's
#                                            role; one password (stdin) for all N given
#   provision.sh update-roles                bring the service roles of a broker provisioned
#                                            by an older provision.sh up to date (adds the
#                                            rules they lack; removes none)
#   provision.sh add-gateway ID [CLIENT_ID]  the user ID and its own role `gateway:ID`; it may
#                                            connect only with CLIENT_ID (default edge-ID,
#                                            the edge agent's default client id)
#   provision.sh remove-gateway ID           delete the user and its role (drops it at once)
#   provision.sh set-password USER           new password (drops USER's connections at once)
#
# Passwords are read from the first line of stdin (prompted without echo on a terminal)
# and handed to mosquitto_ctrl on its stdin, never on a command line.
#
# Environment:
#   SMARTCITY_DYNSEC_ADMIN  mosquitto_ctrl options with the admin's credentials, one option
#                           per line (default /etc/mosquitto/smartcity-dynsec-admin, mode 600,
#                           written by init: -h 127.0.0.1, -p PORT, -u _admin, -P <random>)
#   SMARTCITY_BROKER_PORT   init only: the loopback listener's port (default 1883)
#   SMARTCITY_TOPIC_ROOT    topic root (default sc; docs/wire-protocol.md)
#
# mosquitto 2.0.11 quirks this script works around (Debian 12's version): mosquitto_ctrl exits
# 0 on most failures (refused login, unknown client, no answer within 10 s), ignores `-o`
# (fixed in 2.0.15) and cannot change the default ACL access (fixed in 2.0.12). So the
# options reach it as its default options file ($XDG_CONFIG_HOME/mosquitto_ctrl), every
# answer is checked for errors, every change is read back from the broker, and init sets the
# default access in the file before the broker first loads it.
set -euo pipefail

ADMIN_OPTS=${SMARTCITY_DYNSEC_ADMIN:-/etc/mosquitto/smartcity-dynsec-admin}
ROOT=${SMARTCITY_TOPIC_ROOT:-sc}
V="$ROOT/v1"
# telemetry.ID_RE: a gateway id is one topic level and never starts with `_`.
ID_RE='^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'
# A service instance: the N of `_ingest-N` / client id `ingest-N`.
INSTANCE_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$'

die() { echo "provision.sh: $*" >&2; exit 1; }

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

read_password() {
    local pw
    if [ -t 0 ]; then
        IFS= read -rs -p "password for $1: " pw; echo >&2
    else
        IFS= read -r pw || true
    fi
    [ -n "$pw" ] || die "empty password for $1"
    # mosquitto_ctrl reads at most 199 bytes; a longer one would be cut silently.
    [ "${#pw}" -le 128 ] || die "password for $1 is longer than 128 characters"
    printf '%s' "$pw"
}

# mosquitto_ctrl reads its default options file from $XDG_CONFIG_HOME: a private directory
# holding a link to the admin options, for the online commands.
CTRL_HOME=""
use_admin() {
    [ -r "$ADMIN_OPTS" ] || die "cannot read the admin options $ADMIN_OPTS (run init, or set SMARTCITY_DYNSEC_ADMIN)"
    CTRL_HOME=$(mktemp -d)
    trap 'rm -rf "$CTRL_HOME"' EXIT
    ln -s "$(readlink -f "$ADMIN_OPTS")" "$CTRL_HOME/mosquitto_ctrl"
}

# mosquitto_ctrl dynsec ARGS... (stdin passed through): print its answer, fail on an error.
ctl() {
    local out rc=0
    out=$(XDG_CONFIG_HOME=$CTRL_HOME timeout 30 mosquitto_ctrl dynsec "$@" 2>&1) || rc=$?
    out=$(printf '%s\n' "$out" | grep -v -e 'without encryption' -e 'visible on the network' \
        -e 'Enter new password' -e '^New password' -e 'Reenter password' -e '^[[:space:]]*$' || true)
    # Its error lines: "Error: ...", "<command>: Error: ...", "Connection error: ...".
    if [ "$rc" -ne 0 ] || grep -qE '^([A-Za-z]+: )?Error: |^Connection error: ' <<<"$out"; then
        die "mosquitto_ctrl dynsec $1 ${2:-}: ${out:-exit status $rc}"
    fi
    [ -z "$out" ] || printf '%s\n' "$out"
}

# Read back: the broker's answer (runs of spaces squeezed) must hold every expected string.
expect() {
    local what=$1 answer line
    answer=$(tr -s ' ' <<<"$2"); shift 2
    for line in "$@"; do
        grep -qF -- "$line" <<<"$answer" || die "$what: the broker does not report '$line'; it said: $answer"
    done
}

# ROLE then (acltype topic)...: create the role with these allow rules, and check it.
make_role() {
    local role=$1; shift
    local want=()
    ctl createRole "$role"
    while [ $# -gt 0 ]; do
        ctl addRoleACL "$role" "$1" "$2" allow
        want+=("$1 : allow : $2 (")
        shift 2
    done
    expect "role $role" "$(ctl getRole "$role")" "Rolename: $role" "${want[@]}"
}

# The same, for a role several users share: made once, checked every time; a rule an
# older provision.sh did not grant is added (and said), none is removed.
ensure_role() {
    local role=$1 answer
    answer=$(XDG_CONFIG_HOME=$CTRL_HOME timeout 30 mosquitto_ctrl dynsec getRole "$role" 2>&1 || true)
    if grep -q "^Rolename: *$role\$" <<<"$answer"; then
        shift
        local want=() squeezed added=0
        squeezed=$(tr -s ' ' <<<"$answer")
        while [ $# -gt 0 ]; do
            if ! grep -qF -- "$1 : allow : $2 (" <<<"$squeezed"; then
                ctl addRoleACL "$role" "$1" "$2" allow
                echo "role $role: added $1 $2"
                added=1
            fi
            want+=("$1 : allow : $2 ("); shift 2
        done
        [ "$added" = 0 ] || answer=$(ctl getRole "$role")
        expect "role $role" "$answer" "${want[@]}"
    else
        make_role "$@"
    fi
}

# The services' roles (docs/security.md says why each rule is there).
ingest_role() {
    # Only through ingest's own share group; only the telemetry; only its dead letters.
    ensure_role smartcity-ingest \
        subscribeLiteral "\$share/ingest/$V/+/telemetry" \
        publishClientReceive "$V/+/telemetry" \
        publishClientSend "$V/_sys/deadletter/ingest"
}

api_role() {
    local rules=() t
    for t in telemetry status health config/reported config/desired "cmd/response/#"; do
        rules+=(subscribePattern "$V/+/$t" publishClientReceive "$V/+/$t")
    done
    # status: the retained death of a gateway the API revokes (a removed user leaves no will)
    ensure_role smartcity-api "${rules[@]}" \
        subscribePattern "$V/_sys/#" publishClientReceive "$V/_sys/#" \
        publishClientSend "$V/+/config/desired" publishClientSend "$V/+/cmd" \
        publishClientSend "$V/+/status"
}

# USER CLIENT_ID(or "") ROLE PASSWORD
make_client() {
    local user=$1 cid=$2 role=$3 pw=$4
    local args=("$user")
    [ -z "$cid" ] || args+=(-c "$cid")
    printf '%s\n%s\n' "$pw" "$pw" | ctl createClient "${args[@]}" >/dev/null
    ctl addClientRole "$user" "$role"
    local want=("Username: $user" "Roles: $role (")
    [ -z "$cid" ] || want+=("Clientid: $cid")
    expect "client $user" "$(ctl getClient "$user")" "${want[@]}"
}

cmd_init() {
    local file=${1:-/var/lib/mosquitto/dynamic-security.json}
    local port=${SMARTCITY_BROKER_PORT:-1883}
    [ ! -e "$file" ] || die "$file exists: the broker already has users (delete it to start over)"
    [ ! -e "$ADMIN_OPTS" ] || die "$ADMIN_OPTS exists"
    local pw
    pw=$(head -c 24 /dev/urandom | base64 | tr -d '\n')  # no spaces: the options format splits on them
    (
        umask 077
        printf '%s\n%s\n' "$pw" "$pw" | mosquitto_ctrl dynsec init "$file" _admin >/dev/null
        [ -s "$file" ] || die "mosquitto_ctrl dynsec init did not write $file"
        # The plugin's defaults let every client receive whatever it managed to subscribe to;
        # here nothing is allowed that a role does not grant (subscribe, publish, receive).
        sed -i 's/"publishClientReceive":\([[:space:]]*\)true/"publishClientReceive":\1false/' "$file"
        grep -q '"publishClientReceive":[[:space:]]*false' "$file" \
            || die "could not set the default receive access in $file"
        printf -- '-h 127.0.0.1\n-p %s\n-u _admin\n-P %s\n' "$port" "$pw" >"$ADMIN_OPTS"
    )
    # The packaged broker drops to the `mosquitto` user before it loads the plugin, and the
    # plugin rewrites the file on every change.
    if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
        chown mosquitto: "$file"
    fi
    echo "wrote $file and $ADMIN_OPTS; start the broker, then add-service ingest 0 1 ..., add-service api 1 ..."
}

cmd_add_service() {
    # One user per instance, pinned to its client id: the plugin (2.0) pins one client id per
    # user and has no prefix match, and an unpinned service user could connect as any client
    # id and take over, and empty, an ingest worker's or a gateway's session.
    local service=${1:-} pw n
    [ $# -gt 0 ] && shift
    local instances=("$@")
    case "$service" in
        ingest) [ ${#instances[@]} -gt 0 ] || instances=(0) ;;
        api) [ ${#instances[@]} -gt 0 ] || instances=(1) ;;
        *) usage ;;
    esac
    for n in "${instances[@]}"; do
        [[ $n =~ $INSTANCE_RE ]] || die "instance '$n' must match $INSTANCE_RE"
    done
    pw=$(read_password "_$service-${instances[0]}")
    case "$service" in
        ingest) ingest_role ;;
        api) api_role ;;
    esac
    for n in "${instances[@]}"; do
        make_client "_$service-$n" "$service-$n" "smartcity-$service" "$pw"
        echo "service user _$service-$n: client id $service-$n only, role smartcity-$service"
    done
}

cmd_add_gateway() {
    local id=${1:-} cid
    [[ $id =~ $ID_RE ]] || die "gateway id '$id' must match $ID_RE"
    # On the certificate listener the gateway id becomes the client id (docs/security.md).
    case "$id" in ingest-*|api-*) die "gateway id '$id' is reserved for the services" ;; esac
    cid=${2:-edge-$id}
    [[ $cid =~ $ID_RE ]] || die "client id '$cid' must match $ID_RE"
    case "$cid" in ingest-*|api-*) die "client id '$cid' is reserved for the services" ;; esac
    local pw g="$V/$id"
    pw=$(read_password "$id")
    # Literal topics only: the plugin (2.0) has no %u/%c substitution, hence a role each.
    make_role "gateway:$id" \
        publishClientSend "$g/telemetry" \
        publishClientSend "$g/status" \
        publishClientSend "$g/health" \
        publishClientSend "$g/config/reported" \
        publishClientSend "$g/cmd/response/#" \
        subscribeLiteral "$g/config/desired" \
        subscribeLiteral "$g/cmd" \
        publishClientReceive "$g/config/desired" \
        publishClientReceive "$g/cmd"
    make_client "$id" "$cid" "gateway:$id" "$pw"
    echo "gateway $id: user $id, client id $cid, role gateway:$id"
}

cmd_remove_gateway() {
    local id=${1:-}
    [[ $id =~ $ID_RE ]] || die "gateway id '$id' must match $ID_RE"
    ctl deleteClient "$id"
    ctl deleteRole "gateway:$id"
    local answer
    answer=$(XDG_CONFIG_HOME=$CTRL_HOME timeout 30 mosquitto_ctrl dynsec getClient "$id" 2>&1 || true)
    grep -q 'Client not found' <<<"$answer" || die "gateway $id still exists: $answer"
    echo "gateway $id removed"
}

cmd_set_password() {
    local user=${1:-}
    [ -n "$user" ] || usage
    expect "client $user" "$(ctl getClient "$user")" "Username: $user"
    local pw
    pw=$(read_password "$user")
    printf '%s\n%s\n' "$pw" "$pw" | ctl setClientPassword "$user" >/dev/null
    echo "password of $user changed"
}

case "${1:-}" in
    init) shift; cmd_init "$@" ;;
    add-service) shift; use_admin; cmd_add_service "$@" ;;
    add-gateway) shift; use_admin; cmd_add_gateway "$@" ;;
    update-roles) shift; use_admin; ingest_role; api_role ;;
    remove-gateway) shift; use_admin; cmd_remove_gateway "$@" ;;
    set-password) shift; use_admin; cmd_set_password "$@" ;;
    *) usage ;;
esac
