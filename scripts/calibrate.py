#!/usr/bin/env python3
"""Genuine and impostor distance distributions by face size on the evaluation set (scripts/eval.sh).

Every stored face of the set is compared with the reference face(s) of the latest match run
(cosine distance on the stored SFace vectors, as `facedb match` computes it). A face is genuine
when its centre lies inside a labelled box of the person, an impostor otherwise (faces of photos
labelled without the person, and the other faces of photos with the person). Prints, per band of
face size, the quantiles of both distributions, the overlap, and the threshold with the fewest
errors in that band, so a threshold (or a size-aware one) is chosen on distributions.
    calibrate.py LABELS_CSV DATABASE [THRESHOLD]
"""
import csv
import json
import math
import sqlite3
import struct
import sys

BANDS = [(0, 48), (48, 80), (80, 120), (120, 1e9)]


def vector(blob):
    v = struct.unpack(f"<{len(blob) // 4}f", blob)
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


def quantile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def best_threshold(genuine, impostor):
    """The threshold with the fewest errors (misses + false matches); ties: the middle of the gap."""
    candidates = sorted(set(genuine + impostor))
    best = None
    for i, t in enumerate(candidates):
        errors = sum(d > t for d in genuine) + sum(d <= t for d in impostor)
        nxt = candidates[i + 1] if i + 1 < len(candidates) else t
        if best is None or errors < best[0]:
            best = (errors, (t + nxt) / 2)
    return best or (0, float("nan"))


def main():
    labels_csv, database = sys.argv[1:3]
    threshold = float(sys.argv[3]) if len(sys.argv) > 3 else 0.60
    labels = {r["file"]: r for r in csv.DictReader(open(labels_csv))}
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    run = db.execute("SELECT ref_ids_json FROM match_runs ORDER BY run_id DESC LIMIT 1").fetchone()
    if run is None:
        sys.exit("calibrate: no match run in the database; run `facedb match` first")
    ref_ids = json.loads(run[0])
    refs = [vector(b) for (b,) in db.execute(f"SELECT vector FROM refs WHERE id IN ({','.join('?' * len(ref_ids))})", ref_ids)]
    rows = db.execute(
        """SELECT f.x, f.y, f.w, f.h, e.vector, (SELECT path FROM files WHERE image_id = f.image_id ORDER BY path LIMIT 1)
           FROM faces f JOIN embeddings e ON e.face_id = f.id
           JOIN images i ON i.id = f.image_id AND i.detector_id = f.detector_id"""
    ).fetchall()
    by_band = {band: ([], []) for band in BANDS}
    for x, y, w, h, blob, path in rows:
        lab = labels.get(path)
        if lab is None:
            continue
        v = vector(blob)
        dist = min(1.0 - sum(a * b for a, b in zip(v, r)) for r in refs)
        cx, cy = x + w / 2, y + h / 2
        genuine = False
        if lab["person"] == "1":
            for suffix in ("", "2"):
                lx, ly, lw, lh = (float(lab[c + suffix]) for c in "xywh")
                genuine = genuine or (lw > 0 and lx <= cx <= lx + lw and ly <= cy <= ly + lh)
        size = min(w, h)
        band = next(b for b in BANDS if b[0] <= size < b[1])
        by_band[band][0 if genuine else 1].append(dist)

    print(f"\ndistances to the reference by face size (shorter side), threshold {threshold:.2f}:")
    print(f"  {'size px':<9} {'genuine n':>9} {'p50':>5} {'p95':>5} {'max':>5} | {'impostor n':>10} {'min':>5} {'p1':>5} {'p5':>5} | {'errors@t':>8} {'best t':>6} {'errors':>6}")
    all_g, all_i = [], []
    for band in BANDS:
        g, i = (sorted(v) for v in by_band[band])
        all_g += g
        all_i += i
        errors_at_t = sum(d > threshold for d in g) + sum(d <= threshold for d in i)
        errors, t = best_threshold(g, i)
        hi = "+" if band[1] > 1e8 else f"{band[1]:.0f}"
        print(
            f"  {band[0]:>3.0f}-{hi:<5} {len(g):>9} {quantile(g, .5):>5.2f} {quantile(g, .95):>5.2f} {g[-1] if g else float('nan'):>5.2f} | "
            f"{len(i):>10} {i[0] if i else float('nan'):>5.2f} {quantile(i, .01):>5.2f} {quantile(i, .05):>5.2f} | {errors_at_t:>8} {t:>6.2f} {errors:>6}"
        )
    errors, t = best_threshold(all_g, all_i)
    gap_lo = max((d for d in all_g if d < min(all_i, default=2.0)), default=float("nan"))
    print(f"  all: {len(all_g)} genuine (max {max(all_g, default=float('nan')):.2f}), {len(all_i)} impostor (min {min(all_i, default=float('nan')):.2f}); "
          f"fewest errors {errors} at {t:.2f}; largest genuine distance below every impostor {gap_lo:.2f}")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        sys.stderr.close()
