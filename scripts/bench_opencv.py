#!/usr/bin/env python3
"""Peer baseline: the same YuNet + SFace ONNX files through OpenCV (opencv-python-headless 4.x),
detecting at long side 1280 as a typical script does, embedding every face at full resolution.
Prints photos/s as JSON. Usage: bench_opencv.py MODELS_DIR PHOTO_DIR"""
import glob, json, os, sys, time
import cv2

models, photos = sys.argv[1], sys.argv[2]
det = cv2.FaceDetectorYN.create(os.path.join(models, "face_detection_yunet_2023mar_int8bq.onnx"), "", (640, 640), 0.6, 0.3, 5000)
rec = cv2.FaceRecognizerSF.create(os.path.join(models, "face_recognition_sface_2021dec_int8bq.onnx"), "")
files = sorted(glob.glob(os.path.join(photos, "*.jpg")))
t = time.time()
faces_total = 0
for f in files:
    img = cv2.imread(f)
    h, w = img.shape[:2]
    s = 1280.0 / max(w, h)
    small = cv2.resize(img, (round(w * s), round(h * s)))
    det.setInputSize((small.shape[1], small.shape[0]))
    _, faces = det.detect(small)
    for face in faces if faces is not None else []:
        face = face.copy()
        face[:14] /= s
        rec.feature(rec.alignCrop(img, face))
        faces_total += 1
dt = time.time() - t
print(json.dumps({"peer": "opencv", "photos": len(files), "faces": faces_total, "seconds": dt, "photos_per_s": len(files) / dt}))
