-- facedb schema v1. Append-only: never edit a shipped migration; add 0002_… instead.
-- Coordinates are pixels of the upright (EXIF-oriented) full-resolution image.

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    command         TEXT NOT NULL,                 -- index | match
    args_json       TEXT NOT NULL,
    facedb_version  TEXT NOT NULL,
    ort_version     TEXT,
    detector_id     INTEGER REFERENCES models(id),
    embedder_id     INTEGER REFERENCES models(id),
    started_at      TEXT NOT NULL,                 -- RFC 3339 UTC
    finished_at     TEXT,                          -- NULL: still running or was killed
    status          TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ok', 'failures', 'interrupted', 'error')),
    files_seen      INTEGER NOT NULL DEFAULT 0,
    files_unchanged INTEGER NOT NULL DEFAULT 0,    -- stat cache hit: not read at all
    files_linked    INTEGER NOT NULL DEFAULT 0,    -- content already known: path linked, no decode
    images_new      INTEGER NOT NULL DEFAULT 0,
    files_failed    INTEGER NOT NULL DEFAULT 0,
    faces_found     INTEGER NOT NULL DEFAULT 0,
    detector_calls  INTEGER NOT NULL DEFAULT 0,    -- YuNet invocations on dataset photos
    embedder_calls  INTEGER NOT NULL DEFAULT 0,    -- SFace invocations on dataset photos
    ref_model_calls INTEGER NOT NULL DEFAULT 0,    -- YuNet + SFace invocations on new reference photos
    bytes_read      INTEGER NOT NULL DEFAULT 0,
    stage_ms_json   TEXT                           -- summed milliseconds per pipeline stage
);

CREATE TABLE models (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('detector', 'embedder')),
    name        TEXT NOT NULL,
    file_blake3 TEXT NOT NULL,                     -- of the file as shipped, before any load-time patch
    params_json TEXT NOT NULL DEFAULT '{}',
    UNIQUE (kind, name, file_blake3, params_json)
);

CREATE TABLE images (
    id          INTEGER PRIMARY KEY,
    blake3      TEXT NOT NULL UNIQUE,
    size_bytes  INTEGER NOT NULL,
    width       INTEGER,
    height      INTEGER,
    format      TEXT,
    orientation INTEGER,                           -- EXIF 1-8 as found in the file
    status      TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error       TEXT,
    detector_id INTEGER REFERENCES models(id),     -- set when faces were detected with this model
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    stage_ms_json TEXT,                            -- milliseconds per pipeline stage for this image
    created_at  TEXT NOT NULL
);

-- One row per path seen in the dataset; the stat columns are the cache that lets a re-run skip
-- unchanged files without reading them.
CREATE TABLE files (
    path        TEXT PRIMARY KEY,                  -- relative to the dataset root, '/'-separated
    path_raw    BLOB,                              -- exact bytes when the name is not valid UTF-8
    image_id    INTEGER REFERENCES images(id),     -- NULL when the file could not be read
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    checked_ns  INTEGER NOT NULL,                  -- wall clock when stat was taken (racy-mtime rule)
    error       TEXT,                              -- why the file could not be read, if so
    first_run   INTEGER NOT NULL REFERENCES runs(id),
    last_run    INTEGER NOT NULL REFERENCES runs(id),
    missing     INTEGER NOT NULL DEFAULT 0         -- 1 when the last index did not find it
) WITHOUT ROWID;
CREATE INDEX files_image ON files(image_id);

CREATE TABLE faces (
    id          INTEGER PRIMARY KEY,
    image_id    INTEGER NOT NULL REFERENCES images(id),
    detector_id INTEGER NOT NULL REFERENCES models(id),
    idx         INTEGER NOT NULL,                  -- 0 = highest detection score
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL,
    score       REAL NOT NULL,
    landmarks_json TEXT NOT NULL,                  -- [[x,y] x5]: right eye, left eye, nose, right mouth, left mouth
    size_px     REAL NOT NULL,                     -- shorter side of the box
    sharpness   REAL NOT NULL,                     -- variance of Laplacian on the face at full resolution
    yaw         REAL NOT NULL,                     -- degrees
    roll        REAL NOT NULL,                     -- degrees
    brightness  REAL NOT NULL,                     -- mean luma 0-255
    UNIQUE (image_id, detector_id, idx)
);

CREATE TABLE embeddings (
    face_id  INTEGER NOT NULL REFERENCES faces(id),
    model_id INTEGER NOT NULL REFERENCES models(id),
    vector   BLOB NOT NULL,                        -- 128 little-endian f32, L2-normalised
    PRIMARY KEY (face_id, model_id)
) WITHOUT ROWID;

CREATE TABLE logs (
    id       INTEGER PRIMARY KEY,
    run_id   INTEGER NOT NULL REFERENCES runs(id),
    image_id INTEGER REFERENCES images(id),
    path     TEXT,
    level    TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message  TEXT NOT NULL,
    at       TEXT NOT NULL
);
CREATE INDEX logs_image ON logs(image_id);

-- Reference photos: hashed, embedded once, reused by every later match.
CREATE TABLE refs (
    id          INTEGER PRIMARY KEY,
    blake3      TEXT NOT NULL,
    path        TEXT NOT NULL,                     -- as given when first used
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    faces_in_photo INTEGER NOT NULL,
    x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL,  -- the face used (the largest)
    score       REAL NOT NULL,
    landmarks_json TEXT NOT NULL,
    detector_id INTEGER NOT NULL REFERENCES models(id),
    embedder_id INTEGER NOT NULL REFERENCES models(id),
    vector      BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (blake3, detector_id, embedder_id)
);

CREATE TABLE match_runs (
    run_id        INTEGER PRIMARY KEY REFERENCES runs(id),
    mode          TEXT NOT NULL CHECK (mode IN ('match', 'all')),
    threshold     REAL NOT NULL,
    combine       TEXT NOT NULL,                   -- nearest | mean
    expand        REAL,                            -- NULL: no --expand
    options_json  TEXT NOT NULL,                   -- filters and crop settings
    out_dir       TEXT NOT NULL,
    ref_ids_json      TEXT NOT NULL,               -- positive references (refs.id)
    neg_ref_ids_json  TEXT NOT NULL,               -- negative references (refs.id)
    photos     INTEGER NOT NULL DEFAULT 0,         -- photos with at least one embedded face
    matched    INTEGER NOT NULL DEFAULT 0,
    rejected   INTEGER NOT NULL DEFAULT 0,
    ambiguous  INTEGER NOT NULL DEFAULT 0
);

-- One row per decided face per match run: the closest face of every photo (or, with --all,
-- every face).
CREATE TABLE match_results (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    face_id     INTEGER NOT NULL REFERENCES faces(id),
    image_id    INTEGER NOT NULL REFERENCES images(id),
    distance    REAL,                                   -- cosine distance to the reference set (NULL: --all without --ref)
    runner_up_face_id  INTEGER REFERENCES faces(id),
    runner_up_distance REAL,
    negative_distance  REAL,                            -- to the nearest --not reference
    ambiguous   INTEGER NOT NULL DEFAULT 0,             -- another face in the photo is within the threshold
    pass        INTEGER NOT NULL DEFAULT 1,             -- --expand pass that found it
    decision    TEXT NOT NULL CHECK (decision IN ('matched', 'rejected')),
    reason      TEXT,                                   -- why rejected
    crop_path   TEXT,                                   -- file name inside out_dir
    crop_x INTEGER, crop_y INTEGER, crop_w INTEGER, crop_h INTEGER,  -- source pixels (bounding box when rotated)
    crop_angle  REAL,                                   -- degrees rotated by --align
    crop_out_w INTEGER, crop_out_h INTEGER,             -- the crop file's size
    PRIMARY KEY (run_id, face_id)
) WITHOUT ROWID;
CREATE INDEX match_results_image ON match_results(image_id);

-- Views for people and ad-hoc SQL.
CREATE VIEW photos_v AS
SELECT i.id AS image_id,
       (SELECT min(f.path) FROM files f WHERE f.image_id = i.id AND f.missing = 0) AS path,
       i.blake3, i.width, i.height, i.format, i.orientation, i.status, i.error,
       (SELECT count(*) FROM faces fc WHERE fc.image_id = i.id) AS face_count
FROM images i;

CREATE VIEW faces_v AS
SELECT fc.id AS face_id, fc.image_id,
       (SELECT min(f.path) FROM files f WHERE f.image_id = fc.image_id AND f.missing = 0) AS path,
       fc.idx, fc.x, fc.y, fc.w, fc.h, fc.score, fc.size_px, fc.sharpness, fc.yaw, fc.roll, fc.brightness
FROM faces fc;

CREATE VIEW matches_v AS
SELECT r.run_id, r.image_id,
       (SELECT min(f.path) FROM files f WHERE f.image_id = r.image_id AND f.missing = 0) AS path,
       r.face_id, r.distance, r.runner_up_distance, r.ambiguous, r.pass, r.decision, r.reason, r.crop_path,
       m.threshold, m.ref_ids_json, m.neg_ref_ids_json
FROM match_results r JOIN match_runs m ON m.run_id = r.run_id;
