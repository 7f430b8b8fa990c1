#!/bin/bash
# Usage: submit.sh PHOTOS RESULTS N   (index N shards as an array, then merge once all succeed)
set -euo pipefail
photos="$1" results="$2" n="$3"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$results"
array=$(sbatch --parsable --array="0-$((n - 1))" --export="ALL,PHOTOS=$photos,RESULTS=$results,SHARDS=$n" "$here/index-shards.sbatch")
sbatch --dependency="afterok:$array" --export="ALL,RESULTS=$results" "$here/merge.sbatch"
