#!/usr/bin/env python3
"""Peer baseline: face_recognition (dlib HOG detector, default upsample, 128-d encodings).
Prints photos/s as JSON. Usage: bench_face_recognition.py PHOTO_DIR [MAX_PHOTOS]"""
import glob, json, os, sys, time
import face_recognition

files = sorted(glob.glob(os.path.join(sys.argv[1], "*.jpg")))[: int(sys.argv[2]) if len(sys.argv) > 2 else None]
t = time.time()
faces_total = 0
for f in files:
    img = face_recognition.load_image_file(f)
    boxes = face_recognition.face_locations(img)
    face_recognition.face_encodings(img, boxes)
    faces_total += len(boxes)
dt = time.time() - t
print(json.dumps({"peer": "face_recognition", "photos": len(files), "faces": faces_total, "seconds": dt, "photos_per_s": len(files) / dt}))
