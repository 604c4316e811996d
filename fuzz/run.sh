#!/bin/sh
# Runs fuzz targets one after another, nice'd, each for SECONDS (default 180).
# Usage: ./run.sh [SECONDS] [TARGET...]   (all targets when none are named)
# Extra libFuzzer flags: FUZZ_FLAGS="-fork=1 -ignore_crashes=1" ./run.sh
set -eu
cd "$(dirname "$0")"
secs=${1:-180}
[ $# -gt 0 ] && shift
targets=${*:-"venti_message ninep_fcall vac_formats vac_archive ndb_parse tar_import ninep_sequence oci_layout control_frames spawn_options sftp_session hubfs_session replica_frames"}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p logs
for t in $targets; do
    echo "== $t (${secs}s), log in fuzz/logs/$t.log"
    nice -n 19 cargo fuzz run "$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        ${FUZZ_FLAGS:-} >"logs/$t.log" 2>&1 || echo "   $t stopped with a finding: see logs/$t.log and artifacts/$t/"
    grep -E '^#[0-9]+.*(DONE|pulse)|^Done|stat::number_of_executed_units' "logs/$t.log" | tail -2
done
