-- 0007: `match --best N`, a small, excellent, varied training set.
-- A 64-bit perceptual hash of each face: the dHash of its aligned 112x112 crop (what SFace
-- embeds; src/pipeline/fingerprint.rs), the bits reinterpreted as a signed integer. Copies of a
-- photo (re-encoded, resized, slightly cropped) give nearly the same bits. `index` stores it for
-- new faces; `match --best` computes it once for faces indexed before (NULL until then).
ALTER TABLE faces ADD COLUMN face_hash INTEGER;

-- Per match run made with --best, one row per matched face (picked or not): its quality score,
-- the near-duplicate group it belongs to (burst shots, re-encodes, resized or cropped copies:
-- close in embedding AND in face hash), and whether it was picked.
CREATE TABLE selection (
    run_id     INTEGER NOT NULL REFERENCES runs(id),
    face_id    INTEGER NOT NULL REFERENCES faces(id),
    score      REAL NOT NULL,                      -- quality 0-1 (src/select.rs)
    group_id   INTEGER NOT NULL,                   -- the lowest face id of its near-duplicate group
    group_size INTEGER NOT NULL,                   -- faces in the group (1: no near-duplicate)
    rank       INTEGER,                            -- 1 = picked first; NULL: passed over
    reason     TEXT,                               -- why passed over; NULL when picked
    PRIMARY KEY (run_id, face_id)
) WITHOUT ROWID;
CREATE INDEX selection_group ON selection(run_id, group_id);

-- Near-duplicate groups of every --best run, with a path to look at.
CREATE VIEW near_duplicates_v AS
SELECT s.run_id, s.group_id, s.group_size, s.face_id, fc.image_id,
       (SELECT min(f.path) FROM files f WHERE f.image_id = fc.image_id AND f.missing = 0) AS path,
       s.score, s.rank, s.reason
FROM selection s JOIN faces fc ON fc.id = s.face_id;
