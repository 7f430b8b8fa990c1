#!/usr/bin/env bash
# Benchmarks facedb against its floor and its peers on the same photos, in one run, and prints
# ratios (never absolute targets in tests). Everything it builds lives in .cache/bench/.
#   scripts/bench.sh            # 40 photos of 12 MP; 100 000-file no-op; 1 000 000-face match;
#                               # match --best 50 among 100 000 matched faces; re-match of
#                               # 10 000 000 stored faces (building that set once takes long:
#                               # see README; BENCH_ARCHIVE_FACES=0 skips it)
# Each size has its own output folders (a crop folder belongs to one dataset).
# Environment: BENCH_PHOTOS (40), BENCH_NOOP_FILES (100000), BENCH_MATCH_FACES (1000000), BENCH_ADDED_FACES (1000),
#              BENCH_BEST_FACES (100000),
#              BENCH_ARCHIVE_FACES (10000000; 0 skips),
#              BENCH_FR_PHOTOS (face_recognition is slow: 6), BENCH_SKIP_PEERS=1 to skip peers,
#              BENCH_INDEX_ONLY=1: only the index step, its floor and the OpenCV script (on a loaded
#              machine, compare ratios of one run, not absolute times).
set -euo pipefail
# A step that fails says which one, instead of `set -e` ending the script without a word.
trap 'echo "bench: step failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh >/dev/null
cargo build --release --locked --bins --examples 2>&1 | grep -v "^\s*\(Compiling\|Finished\)" || true
facedb=$PWD/target/release/facedb
bench=$PWD/.cache/bench
n=${BENCH_PHOTOS:-40}
noop_files=${BENCH_NOOP_FILES:-100000}
match_faces=${BENCH_MATCH_FACES:-1000000}
fr_photos=${BENCH_FR_PHOTOS:-6}
mkdir -p "$bench"
cores=$(nproc)
echo "machine: $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# A dataset of one real photo plus N synthetic stored faces: synthetic_set DIR N.
synthetic_set() {
  rm -rf "$1" && mkdir -p "$1"
  cp tests/data/photos/obama2.jpg "$1/"
  "$facedb" -q index "$1"
  target/release/examples/make_synthetic_faces "$1" "$2" >/dev/null
}
# Peak RSS (MiB) of a command, via GNU time.
rss() { grep "Maximum resident set size" "$1" | awk '{printf "%.0f", $6/1024}'; }
# CPU time (user + system, s) of a command, via GNU time: on a loaded machine it says more than the wall time.
# Wall time (s) of a command, from GNU time's "Elapsed (wall clock) time (h:mm:ss or m:ss): M:SS.ss".
wall() { awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; printf "%.2f", s}' "$1"; }
cpu() { awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$1"; }

# 1. The photo set (deterministic; rebuilt only when missing).
set_dir=$bench/photos-$n
if [ ! -f "$bench/photos-$n.done" ]; then
  rm -rf "$set_dir"
  target/release/examples/make_bench_set "$set_dir" "$n"
  touch "$bench/photos-$n.done"
fi

# 2. facedb index, from scratch.
rm -f "$set_dir"/facedb.sqlite* "$set_dir"/facedb.lock
/usr/bin/time -v "$facedb" --json index "$set_dir" >"$bench/index.json" 2>"$bench/index.time" || true
index_rss=$(rss "$bench/index.time")
export BENCH_INDEX_WALL=$(wall "$bench/index.time")

# 2b. The same photos as BENCH_SHARDS shard tasks run one after another (each with every core),
# then merged: the overhead of sharding against the single index above (target: under 5 %).
shards=${BENCH_SHARDS:-4}
index_only=${BENCH_INDEX_ONLY:-0}
[ "$index_only" = 1 ] && shards=0
rm -f "$bench"/shard-*.sqlite* "$bench"/shard-*.lock "$bench"/merged.sqlite*
shard_t0=$(date +%s.%N)
for ((k = 0; k < shards; k++)); do
  "$facedb" -q index "$set_dir" --shard "$k/$shards" --db "$bench/shard-$k.sqlite" || [ $? -eq 1 ]
done
shard_t1=$(date +%s.%N)
[ "$shards" -eq 0 ] || "$facedb" -q merge --db "$bench/merged.sqlite" "$bench"/shard-*.sqlite
shard_t2=$(date +%s.%N)

# 3. The floor: per stage, the fastest single photo (among photos with exactly one face).
floor_json=$("$facedb" sql "$set_dir" --format json "
  SELECT min(json_extract(i.stage_ms_json, '\$.read_hash')) AS read_hash, min(json_extract(i.stage_ms_json, '\$.decode')) AS decode,
         min(json_extract(i.stage_ms_json, '\$.detect')) AS detect, min(json_extract(i.stage_ms_json, '\$.align_embed')) AS align_embed,
         min(json_extract(i.stage_ms_json, '\$.quality')) AS quality
  FROM images i WHERE (SELECT count(*) FROM faces f WHERE f.image_id = i.id) = 1")

# 4. Peers on the same photos.
opencv_json='{}'; fr_json='{}'
if [ "${BENCH_SKIP_PEERS:-0}" != 1 ]; then
  venv=$bench/venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -c "import cv2" 2>/dev/null || "$venv/bin/pip" install -q "opencv-python-headless>=4.9,<5" "numpy<2.3"
  opencv_t0=$(date +%s.%N)
  opencv_json=$("$venv/bin/python" scripts/bench_opencv.py models "$set_dir")
  # The script's own timer starts after its models are loaded, facedb's `seconds` at start-up:
  # the whole processes' wall times are the like-for-like comparison.
  opencv_json=$(python3 -c 'import json, sys; d = json.loads(sys.argv[1]); d["process_seconds"] = float(sys.argv[2]); print(json.dumps(d))' \
    "$opencv_json" "$(awk "BEGIN{print $(date +%s.%N) - $opencv_t0}")")
  if [ "$index_only" = 1 ]; then
    :
  elif "$venv/bin/python" -c "import face_recognition" 2>/dev/null || \
     { "$venv/bin/pip" install -q dlib-bin face_recognition_models pillow click "setuptools<81" && "$venv/bin/pip" install -q --no-deps face_recognition==1.3.0; } >/dev/null 2>&1; then
    fr_json=$("$venv/bin/python" scripts/bench_face_recognition.py "$set_dir" "$fr_photos" 2>/dev/null || echo '{}')
  else
    echo "face_recognition (dlib-bin) did not install; skipping that peer"
  fi
fi

if [ "$index_only" = 1 ]; then
  python3 - "$cores" "$bench/index.json" "$floor_json" "$opencv_json" "$index_rss" "$(cpu "$bench/index.time")" <<'PY'
import json, sys
cores = int(sys.argv[1]); index = json.load(open(sys.argv[2])); floor = json.loads(sys.argv[3])[0]; opencv = json.loads(sys.argv[4])
c = index["counters"]; photos = c["images_new"]; secs = index["seconds"]; rate = photos / secs
print(f"index: {photos} photos of 12 MP, {c['faces_found']} faces in {secs:.1f} s = {rate:.2f} photos/s ({cores} cores), CPU {sys.argv[6]} s, "
      f"peak RSS {sys.argv[5]} MiB = {int(sys.argv[5]) / 300:.2f}x of the 300 MiB target")
print("  per-stage CPU time per photo (ms of one core, summed over threads; read_hash is wall time):", ", ".join(f"{k} {v / photos:.1f}" for k, v in c["stage_ms"].items()))
floor_ms = sum(v for v in floor.values() if v is not None)
floor_rate = cores * 1000.0 / floor_ms if floor_ms else float("nan")
print(f"  floor: {floor_ms:.1f} ms/photo/core = {floor_rate:.2f} photos/s; facedb is at {rate / floor_rate:.2f}x of the floor")
if opencv.get("photos_per_s"):
    print(f"  OpenCV YuNet+SFace script (detect at 1280; its timer starts after its models load): {opencv['photos_per_s']:.2f} photos/s -> facedb is {rate / opencv['photos_per_s']:.2f}x")
if opencv.get("process_seconds"):
    import os
    fw = float(os.environ["BENCH_INDEX_WALL"]); ow = opencv["process_seconds"]
    print(f"  whole processes, start-up on both sides (like for like): OpenCV {ow:.1f} s, facedb {fw:.1f} s -> facedb is {ow / fw:.2f}x")
PY
  exit 0
fi

# 5. No-op re-index of a big unchanged folder (hard links to one small photo).
noop_dir=$bench/noop-$noop_files
if [ ! -f "$bench/noop-$noop_files.done" ]; then
  rm -rf "$noop_dir"
  python3 - "$noop_dir" "$noop_files" tests/data/photos/obama.jpg <<'PY'
import os, sys, shutil
d, n, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(d)
# Hard links (ext4 allows 65000 per inode, so a new seed copy every 50000), old mtimes.
for i in range(n):
    if i % 50000 == 0:
        seed = os.path.join(d, f"seed{i // 50000}.jpg")
        shutil.copy(src, seed)
        os.utime(seed, (1e9, 1e9))
        continue
    sub = os.path.join(d, f"d{i // 1000:03}")
    os.makedirs(sub, exist_ok=True)
    os.link(seed, os.path.join(sub, f"p{i:06}.jpg"))
PY
  "$facedb" -q index "$noop_dir" >/dev/null
  touch "$bench/noop-$noop_files.done"
fi
/usr/bin/time -v "$facedb" --json index "$noop_dir" >"$bench/noop.json" 2>"$bench/noop.time"
noop_rss=$(rss "$bench/noop.time")

# 6. match against a million stored faces (synthetic embeddings on top of the real set).
big=$bench/match-$match_faces
if [ ! -f "$bench/match-$match_faces.done" ]; then
  synthetic_set "$big" "$match_faces"
  # Embeds the reference once. Synthetic faces near the reference have no photo to crop from, so
  # this match exits 1 (crop failures) by design.
  "$facedb" -q match "$big" --ref tests/data/photos/obama.jpg --out "$big-out" >/dev/null || [ $? -eq 1 ]
  touch "$bench/match-$match_faces.done"
fi
# First with the vector cache removed (as after an index run changed the faces: it is rebuilt
# from SQLite), then again as a re-match with a new threshold sees it.
rm -f "$big/facedb.sqlite.vectors"
/usr/bin/time -v "$facedb" --json match "$big" --ref tests/data/photos/obama.jpg --threshold 0.35 --out "$big-out" >"$bench/match-cold.json" 2>"$bench/match-cold.time" || [ $? -eq 1 ]
match_cold_rss=$(rss "$bench/match-cold.time")
/usr/bin/time -v "$facedb" --json match "$big" --ref tests/data/photos/obama.jpg --threshold 0.3 --out "$big-out" >"$bench/match.json" 2>"$bench/match.time" || [ $? -eq 1 ]
match_rss=$(rss "$bench/match.time")
# After a change (1 000 more faces, as an index run of new photos adds): the cache is brought up
# to date first (appended; anything but new faces rebuilds it).
added_faces=${BENCH_ADDED_FACES:-1000}
target/release/examples/make_synthetic_faces "$big" "$added_faces" >/dev/null
/usr/bin/time -v "$facedb" --json match "$big" --ref tests/data/photos/obama.jpg --threshold 0.3 --out "$big-out" >"$bench/match-changed.json" 2>"$bench/match-changed.time" || [ $? -eq 1 ]
match_changed_rss=$(rss "$bench/match-changed.time")

# 6b. Re-match at archive size (issue 17): the vector cache current, twice. Building the set is
# one transaction of synthetic rows (10 M: ~6 min, 9.5 GB of database and 8.1 GB of cache); it
# is made once and kept in .cache/bench.
archive_faces=${BENCH_ARCHIVE_FACES:-10000000}
archive_line=""
if [ "$archive_faces" -gt 0 ]; then
  arch=$bench/match-$archive_faces
  if [ ! -f "$bench/match-$archive_faces.done" ]; then
    t0=$(date +%s)
    synthetic_set "$arch" "$archive_faces"
    "$facedb" -q match "$arch" --ref tests/data/photos/obama.jpg --out "$arch-out" >/dev/null || [ $? -eq 1 ]
    echo "built the $archive_faces-face set and its vector cache in $(( $(date +%s) - t0 )) s"
    touch "$bench/match-$archive_faces.done"
  fi
  "$facedb" -q match "$arch" --ref tests/data/photos/obama.jpg --threshold 0.3 --out "$arch-out" >/dev/null || [ $? -eq 1 ]
  for run in 1 2; do
    /usr/bin/time -v "$facedb" --json match "$arch" --ref tests/data/photos/obama.jpg --threshold 0.3 --out "$arch-out" >"$bench/archive.json" 2>"$bench/archive.time" || [ $? -eq 1 ]
    archive_line+=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); r=int(sys.argv[2]); print(f'  run {sys.argv[3]}: {m[\"seconds\"]:.2f} s = {m[\"seconds\"]/2:.2f}x of 2 s (CPU {sys.argv[4]} s: on a loaded machine it says more), peak RSS {r} MiB = {r/300:.2f}x of 300 MiB, cache {m[\"vector_cache\"]}')" "$bench/archive.json" "$(rss "$bench/archive.time")" "$run" "$(cpu "$bench/archive.time")")$'\n'
  done
fi

# 7. match --best 50 among 100 000 matched faces: synthetic faces that all pass --all's filters,
# each with a random embedding and face hash. Only the 50 picked are cropped; they have no photo,
# so the run exits 1 (crop failures) by design. Every matched face still gets its match_results
# and selection rows and its line in rejected.csv.
best_faces=${BENCH_BEST_FACES:-100000}
best_dir=$bench/best-$best_faces
if [ ! -f "$bench/best-$best_faces.done" ]; then
  synthetic_set "$best_dir" "$best_faces"
  "$facedb" -q match "$best_dir" --all --best 50 --out "$best_dir-out" >/dev/null 2>&1 || [ $? -eq 1 ]
  touch "$bench/best-$best_faces.done"
fi
"$facedb" --json match "$best_dir" --all --best 50 --out "$best_dir-out" >"$bench/best.json" 2>/dev/null || [ $? -eq 1 ]

python3 - "$cores" "$bench/index.json" "$floor_json" "$opencv_json" "$fr_json" "$bench/noop.json" "$bench/match.json" "$index_rss" "$noop_rss" "$match_rss" "$noop_files" "$match_faces" "$bench/match-cold.json" "$match_cold_rss" "$bench/best.json" \
  "$(awk "BEGIN{print $shard_t1 - $shard_t0}")" "$(awk "BEGIN{print $shard_t2 - $shard_t1}")" "$shards" "$bench/match-changed.json" "$match_changed_rss" "$added_faces" "$(cpu "$bench/noop.time")" <<'PY'
import json, sys
cores = int(sys.argv[1])
index = json.load(open(sys.argv[2])); floor = json.loads(sys.argv[3])[0]
opencv = json.loads(sys.argv[4]); fr = json.loads(sys.argv[5])
noop = json.load(open(sys.argv[6])); match = json.load(open(sys.argv[7]))
index_rss, noop_rss, match_rss, noop_files, match_faces = sys.argv[8:13]
match_cold = json.load(open(sys.argv[13])); match_cold_rss = sys.argv[14]
c = index["counters"]; photos = c["images_new"]; secs = index["seconds"]; rate = photos / secs
print(f"\nindex: {photos} photos of 12 MP, {c['faces_found']} faces in {secs:.1f} s = {rate:.2f} photos/s ({cores} cores), "
      f"peak RSS {index_rss} MiB = {int(index_rss) / 300:.2f}x of the 300 MiB target")
stages = c["stage_ms"]
print("  per-stage CPU time per photo (ms of one core, summed over threads; read_hash is wall time):", ", ".join(f"{k} {v / photos:.1f}" for k, v in stages.items()))
floor_ms = sum(v for v in floor.values() if v is not None)
floor_rate = cores * 1000.0 / floor_ms if floor_ms else float("nan")
print(f"  floor (fastest single photo per stage, one face): {floor_ms:.1f} ms/photo/core = {floor_rate:.2f} photos/s on {cores} cores; facedb is at {rate / floor_rate:.2f}x of the floor")
if opencv.get("photos_per_s"):
    print(f"  OpenCV YuNet+SFace script (detect at 1280; its timer starts after its models load): {opencv['photos_per_s']:.2f} photos/s -> facedb is {rate / opencv['photos_per_s']:.2f}x")
if opencv.get("process_seconds"):
    import os
    fw = float(os.environ["BENCH_INDEX_WALL"]); ow = opencv["process_seconds"]
    print(f"  whole processes, start-up on both sides (like for like): OpenCV {ow:.1f} s, facedb {fw:.1f} s -> facedb is {ow / fw:.2f}x")
if fr.get("photos_per_s"):
    print(f"  face_recognition (dlib HOG, {fr['photos']} photos): {fr['photos_per_s']:.3f} photos/s -> facedb is {rate / fr['photos_per_s']:.1f}x")
shard_index, shard_merge, shards = float(sys.argv[16]), float(sys.argv[17]), sys.argv[18]
print(f"{shards} shards one after another: index {shard_index:.1f} s + merge {shard_merge:.2f} s = {(shard_index + shard_merge) / secs - 1:+.1%} against the single index")
noop_cpu = float(sys.argv[22])
print(f"no-op re-index of {noop_files} unchanged files: {noop['seconds']:.2f} s = {noop['seconds'] / 0.3:.2f}x of the 0.3 s target "
      f"(CPU {noop_cpu:.2f} s), peak RSS {noop_rss} MiB")
changed = json.load(open(sys.argv[19])); changed_rss = sys.argv[20]
print(f"match against {int(match_faces) + 1} stored faces: {match['seconds']:.2f} s (vector cache current) = {match['seconds'] / 0.25:.2f}x of the 0.25 s target, peak RSS {match_rss} MiB")
print(f"  first match after {sys.argv[21]} faces were added (cache {changed['vector_cache']}): {changed['seconds']:.2f} s = {changed['seconds']:.2f}x of the 1 s target, peak RSS {changed_rss} MiB")
print(f"  first match with the cache file deleted (built from SQLite): {match_cold['seconds']:.2f} s, peak RSS {match_cold_rss} MiB")
best = json.load(open(sys.argv[15]))
print(f"match --all --best 50 among {best['best']['matched']} matched faces: choosing {best['best']['seconds']:.2f} s (target under 2 s), "
      f"the whole run {best['seconds']:.2f} s (with a result row, a selection row and a rejected.csv line per face)")
PY
if [ -n "$archive_line" ]; then
  echo "re-match against $((archive_faces + 1)) stored faces (targets: 2 s, 300 MiB on 2 cores):"
  printf "%s" "$archive_line"
fi

# 8. facedb people: clustering 100 000 stored faces (the synthetic faces of step 7 plus the real
# one), from no people at all, then a run after 1 000 more faces arrive. Random embeddings are
# nobody's neighbours, so every face waits: the worst case for the first run (all pairs). The
# second compares only the 1 000 new faces with the rest (the waiting faces' neighbour counts
# are remembered), so it is what adding photos to a clustered library costs.
people_dir=$bench/people-$best_faces
rm -rf "$people_dir" && cp -r "$best_dir" "$people_dir" && rm -rf "$people_dir/facedb.sqlite.vectors"
/usr/bin/time -v "$facedb" --json people "$people_dir" >"$bench/people.json" 2>"$bench/people.time"
people_rss=$(rss "$bench/people.time")
target/release/examples/make_synthetic_faces "$people_dir" 1000 >/dev/null
/usr/bin/time -v "$facedb" --json people "$people_dir" >"$bench/people-more.json" 2>"$bench/people-more.time"
people_more_rss=$(rss "$bench/people-more.time")
python3 - "$bench/people.json" "$people_rss" "$bench/people-more.json" "$people_more_rss" <<'PY'
import json, sys
first = json.load(open(sys.argv[1]))["summary"]; more = json.load(open(sys.argv[3]))["summary"]
print(f"people: grouping {first['faces']} faces {first['seconds']:.2f} s (target under 30 s: {first['seconds'] / 30:.2f} of it), "
      f"peak RSS {sys.argv[2]} MiB (target under 300: {int(sys.argv[2]) / 300:.2f} of it), {first['compared']:,} pairs compared")
print(f"  then {more['new_faces']:,} new faces: {more['seconds']:.2f} s (target under 1 s: {more['seconds'] / 1:.2f} of it), peak RSS {sys.argv[4]} MiB, "
      f"{more['compared']:,} pairs compared ({more['assigned']} joined, {more['promoted']} promoted, {more['waiting']} waiting)")
PY
