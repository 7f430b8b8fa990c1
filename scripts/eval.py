#!/usr/bin/env python3
"""Scores a match run against labels.csv of the evaluation set (scripts/eval.sh).

A photo counts as found only when the crop is of the labelled face (its centre inside the label
box); a crop of anyone else is a false match (and, where the person was there, also a miss).
    eval.py LABELS_CSV MANIFEST_CSV TITLE
"""
import csv
import os
import sys
from collections import defaultdict


def main():
    labels_csv, manifest_csv, title = sys.argv[1:4]
    labels = {r["file"]: r for r in csv.DictReader(open(labels_csv))}
    # Sources are recorded by absolute path; labels name the files of the (flat) set.
    crops = {os.path.basename(r["source_path"]): r for r in csv.DictReader(open(manifest_csv))}
    per_kind = defaultdict(lambda: {"pos": 0, "tp": 0, "fp": 0, "neg": 0})
    tp = fp = fn = 0
    misses = []
    for name, lab in sorted(labels.items()):
        k = per_kind[lab["kind"]]
        crop = crops.get(name)
        right = False
        if crop is not None and lab["person"] == "1":
            cx = float(crop["face_x"]) + float(crop["face_w"]) / 2
            cy = float(crop["face_y"]) + float(crop["face_h"]) / 2
            for suffix in ("", "2"):
                x, y, w, h = (float(lab[c + suffix]) for c in "xywh")
                right = right or (w > 0 and x <= cx <= x + w and y <= cy <= y + h)
        if lab["person"] == "1":
            k["pos"] += 1
            if right:
                k["tp"] += 1
                tp += 1
            else:
                fn += 1
                misses.append(name)
        else:
            k["neg"] += 1
        if crop is not None and not right:
            k["fp"] += 1
            fp += 1
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    print(f"\n{title}: precision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f}  ({tp} found, {fn} missed, {fp} false)")
    print(f"  {'kind':<14} {'found':>9} {'recall':>7} {'false':>6}")
    for kind, k in sorted(per_kind.items()):
        rec = f"{k['tp'] / k['pos']:.2f}" if k["pos"] else "-"
        print(f"  {kind:<14} {k['tp']:>4}/{k['pos']:<4} {rec:>7} {k['fp']:>6}")
    if misses:
        print("  missed: " + " ".join(misses))


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        # `| head`: the reader has what it wanted.
        sys.stderr.close()
