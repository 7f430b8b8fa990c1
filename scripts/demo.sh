#!/usr/bin/env bash
# One command from a fresh clone to results: set up, build, index the sample photos, match a
# reference, print the report. Output goes to demo/ (git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --locked
facedb=target/release/facedb

rm -rf demo && mkdir -p demo/photos
cp tests/data/photos/*.jpg tests/data/photos/*.png demo/photos/
cp tests/data/photos/obama.jpg demo/me.jpg

echo "== facedb index demo/photos"
"$facedb" index demo/photos || true   # exit code 1 would only mean some files failed
echo
echo "== facedb match demo/photos --ref demo/me.jpg"
"$facedb" match demo/photos --ref demo/me.jpg --out demo/crops
echo
echo "== demo/crops/manifest.csv"
cut -d, -f1-5 demo/crops/manifest.csv
echo
echo "== facedb report demo/photos"
"$facedb" report demo/photos
echo
echo "== facedb sql demo/photos 'SELECT path, face_count FROM photos_v'"
"$facedb" sql demo/photos "SELECT path, face_count FROM photos_v ORDER BY path"
echo
"$facedb" report demo/photos --html demo/sheet.html
echo "open demo/sheet.html in a browser for the contact sheet of this match"
