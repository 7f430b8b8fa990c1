#!/usr/bin/env python3
"""Generate tests/fixtures/opencv_sface.json: OpenCV's own YuNet landmarks and SFace embeddings
for the test photos, the reference facedb's embeddings are checked against.

Run once (not part of the test command; the output is committed):
    python3 -m venv /tmp/cvenv && /tmp/cvenv/bin/pip install "opencv-python-headless>=4.9,<5"
    scripts/setup.sh && /tmp/cvenv/bin/python scripts/make_opencv_fixture.py
Generated with opencv-python-headless 4.14.0 (recorded in the file).
"""
import json, os, sys
import cv2
import numpy as np

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
models = os.path.join(root, "models")
photos = os.path.join(root, "tests", "data", "photos")
det = cv2.FaceDetectorYN.create(os.path.join(models, "face_detection_yunet_2023mar_int8bq.onnx"), "", (640, 640), 0.6, 0.3, 5000)
rec = cv2.FaceRecognizerSF.create(os.path.join(models, "face_recognition_sface_2021dec_int8bq.onnx"), "")

out = {"opencv": cv2.__version__, "note": "landmarks in full-resolution pixels; detection on the image resized to long side 640", "photos": {}}
for name in sorted(os.listdir(photos)):
    img = cv2.imread(os.path.join(photos, name), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    s = 640.0 / max(w, h)
    small = cv2.resize(img, (round(w * s), round(h * s)))
    det.setInputSize((small.shape[1], small.shape[0]))
    _, faces = det.detect(small)
    rows = []
    for f in (faces if faces is not None else []):
        full = f.copy()
        full[:14] /= s  # box and landmarks back to full-resolution pixels
        aligned = rec.alignCrop(img, full)
        feat = rec.feature(aligned).flatten()
        feat = feat / np.linalg.norm(feat)
        rows.append({"box": [float(v) for v in full[:4]], "landmarks": [[float(full[4 + 2 * i]), float(full[5 + 2 * i])] for i in range(5)],
                     "score": float(f[14]), "embedding": [float(v) for v in feat]})
    out["photos"][name] = rows
    print(name, len(rows), file=sys.stderr)

with open(os.path.join(root, "tests", "fixtures", "opencv_sface.json"), "w") as fh:
    json.dump(out, fh, indent=1)
