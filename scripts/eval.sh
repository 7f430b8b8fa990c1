#!/usr/bin/env bash
# Recall and precision of `facedb match` on an identity-labelled set built from public photos
# (examples/make_eval_set.rs): the test portraits (the person: Obama; Biden as a distractor) and
# the group photos of the npm package @vladmandic/face-api (23 more people), as originals, EXIF-
# and pixel-rotated, mirror pairs, dark, blurred, JPEG quality 15, grey, upscaled, covered mouth,
# 48 px faces and 4000x3000 group photos with 40-120 px faces. Prints precision, recall, F1 and a
# per-kind table at the defaults and with the quality filters off, and the speed of `index`.
#   scripts/eval.sh          # everything lives in .cache/eval/
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh >/dev/null
cargo build --release --locked --bins --examples 2>&1 | grep -v "^\s*\(Compiling\|Finished\)" || true
facedb=$PWD/target/release/facedb
cache=$PWD/.cache/eval
mkdir -p "$cache"

# The group photos, from the npm registry, pinned by version and sha256.
pkg=vladmandic-face-api-1.7.15.tgz
sha=0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031
if [ ! -f "$cache/$pkg" ] || ! echo "$sha  $cache/$pkg" | sha256sum -c --quiet 2>/dev/null; then
  (cd "$cache" && npm pack --silent @vladmandic/face-api@1.7.15 >/dev/null)
  echo "$sha  $cache/$pkg" | sha256sum -c --quiet || { echo "eval: $pkg does not have the pinned sha256" >&2; exit 1; }
fi
if [ ! -f "$cache/samples/sample6.jpg" ]; then
  mkdir -p "$cache/samples"
  tar -xzf "$cache/$pkg" -C "$cache/samples" --strip-components=2 package/demo/sample1.jpg package/demo/sample2.jpg \
    package/demo/sample3.jpg package/demo/sample4.jpg package/demo/sample5.jpg package/demo/sample6.jpg
fi

set_dir=$cache/set
rm -rf "$set_dir"
target/release/examples/make_eval_set tests/data/photos "$cache/samples" "$set_dir" >/dev/null
mv "$set_dir/labels.csv" "$cache/labels.csv"
echo "evaluation set: $(($(wc -l <"$cache/labels.csv") - 1)) photos, $(grep -c ',1,' "$cache/labels.csv") with the person"

"$facedb" --json index "$set_dir" >"$cache/index.json" || true
python3 -c "import json,sys; s=json.load(open(sys.argv[1])); c=s['counters']; print(f\"index: {c['images_new']} photos in {s['seconds']:.1f} s ({s['new_photos_per_second']:.2f} photos/s), {c['faces_found']} faces\")" "$cache/index.json"

run() {
  local title=$1; shift
  rm -rf "$cache/out"
  "$facedb" -q match "$set_dir" --ref tests/data/photos/obama.jpg --out "$cache/out" "$@" || true
  python3 scripts/eval.py "$cache/labels.csv" "$cache/out/manifest.csv" "$title"
}
run "defaults"
run "quality filters off" --min-face 0 --min-sharpness 0 --min-score 0 --max-yaw 90
# The distributions behind the threshold: genuine and impostor distances by face size.
python3 scripts/calibrate.py "$cache/labels.csv" "$set_dir/facedb.sqlite"
