# Sourced by .ci/run and .ci/test. `phase NAME CMD...` runs CMD (under the caller's set -e,
# so a failing command ends the run as before) and records how long it took in $GCW_PHASES;
# the outermost script prints every phase's time when it exits, failed or not, so the run's
# 45-minute budget (issue 26) can be followed phase by phase.

gcw_outermost=0
if [ -z "${GCW_PHASES:-}" ]; then
    GCW_PHASES=$(mktemp /tmp/gcw-ci-phases.XXXXXX)
    export GCW_PHASES
    gcw_outermost=1
fi
gcw_start=$SECONDS
gcw_phase=""

gcw_record() {
    printf '%s\t%d\t%s\n' "$gcw_phase" $((SECONDS - gcw_phase_start)) "$1" >> "$GCW_PHASES"
    gcw_phase=""
}

gcw_exit() {
    local rc=$? name secs status
    if [ -n "$gcw_phase" ]; then
        gcw_record "FAILED (exit $rc)"
    fi
    if [ "$gcw_outermost" = 1 ]; then
        echo
        echo "phases (m:ss):"
        while IFS=$'\t' read -r name secs status; do
            printf '  %3d:%02d  %-36s %s\n' $((secs / 60)) $((secs % 60)) "$name" "$status"
        done < "$GCW_PHASES"
        secs=$((SECONDS - gcw_start))
        status=$([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")
        printf '  %3d:%02d  %-36s %s\n' $((secs / 60)) $((secs % 60)) "total" "$status"
        rm -f "$GCW_PHASES"
    fi
    exit "$rc"
}
trap gcw_exit EXIT

phase() {
    gcw_phase=$1
    gcw_phase_start=$SECONDS
    shift
    "$@"
    gcw_record ok
}
