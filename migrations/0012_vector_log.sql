-- 0012: lets the vector cache (<db>.vectors) be brought up to date instead of rebuilt.
-- Every change the cache could see (the same events as 0003's state token) appends an entry
-- naming what changed: a face (kind 1), an image (kind 2) or everything (kind 3, a model row).
-- Each entry carries a random 64-bit tag. A cache records the last entry it mirrors (seq, tag):
-- when that entry is still there with its tag, and the entries after it are contiguous, the
-- database is the cache's state plus exactly those entries (a copy restored and changed again
-- has another tag at that seq). `match` deletes the entries before the one its saved cache
-- names; anything a cache cannot prove makes it rebuild, never trust.
-- The baseline entry gives every database its own history from here on (two copies migrated
-- apart never share it).

CREATE TABLE vector_log (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    id   INTEGER,
    tag  INTEGER NOT NULL
);
INSERT INTO vector_log (kind, id, tag) VALUES (3, NULL, random());

-- Append-only: an edited entry could hide a change.
CREATE TRIGGER vector_log_update BEFORE UPDATE ON vector_log
BEGIN SELECT RAISE(ABORT, 'vector_log is append-only'); END;

CREATE TRIGGER vector_log_embeddings_insert AFTER INSERT ON embeddings
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (1, NEW.face_id, random()); END;
CREATE TRIGGER vector_log_embeddings_delete AFTER DELETE ON embeddings
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (1, OLD.face_id, random()); END;
CREATE TRIGGER vector_log_embeddings_update AFTER UPDATE ON embeddings
BEGIN
    INSERT INTO vector_log (kind, id, tag) VALUES (1, OLD.face_id, random());
    INSERT INTO vector_log (kind, id, tag) SELECT 1, NEW.face_id, random() WHERE NEW.face_id IS NOT OLD.face_id;
END;

-- A face inserted under an id an embedding already names (hand-written SQL) counts too.
CREATE TRIGGER vector_log_faces_insert AFTER INSERT ON faces
WHEN EXISTS (SELECT 1 FROM embeddings WHERE face_id = NEW.id)
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (1, NEW.id, random()); END;
CREATE TRIGGER vector_log_faces_update AFTER UPDATE OF id, image_id, detector_id, size_px, sharpness, yaw, score ON faces
BEGIN
    INSERT INTO vector_log (kind, id, tag) VALUES (1, OLD.id, random());
    INSERT INTO vector_log (kind, id, tag) SELECT 1, NEW.id, random() WHERE NEW.id IS NOT OLD.id;
END;
CREATE TRIGGER vector_log_faces_delete AFTER DELETE ON faces
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (1, OLD.id, random()); END;

-- An image inserted under an id faces already name (hand-written SQL) counts too.
CREATE TRIGGER vector_log_images_insert AFTER INSERT ON images
WHEN EXISTS (SELECT 1 FROM faces WHERE image_id = NEW.id)
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (2, NEW.id, random()); END;
CREATE TRIGGER vector_log_images_update AFTER UPDATE OF id, detector_id ON images
WHEN OLD.id IS NOT NEW.id OR OLD.detector_id IS NOT NEW.detector_id
BEGIN
    INSERT INTO vector_log (kind, id, tag) VALUES (2, OLD.id, random());
    INSERT INTO vector_log (kind, id, tag) SELECT 2, NEW.id, random() WHERE NEW.id IS NOT OLD.id;
END;
CREATE TRIGGER vector_log_images_delete AFTER DELETE ON images
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (2, OLD.id, random()); END;

CREATE TRIGGER vector_log_files_insert AFTER INSERT ON files
WHEN NEW.missing = 0 AND NEW.image_id IS NOT NULL
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (2, NEW.image_id, random()); END;
CREATE TRIGGER vector_log_files_delete AFTER DELETE ON files
WHEN OLD.missing = 0 AND OLD.image_id IS NOT NULL
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (2, OLD.image_id, random()); END;
CREATE TRIGGER vector_log_files_update AFTER UPDATE OF missing, image_id ON files
WHEN OLD.missing IS NOT NEW.missing OR OLD.image_id IS NOT NEW.image_id
BEGIN
    INSERT INTO vector_log (kind, id, tag) SELECT 2, OLD.image_id, random() WHERE OLD.image_id IS NOT NULL;
    INSERT INTO vector_log (kind, id, tag) SELECT 2, NEW.image_id, random() WHERE NEW.image_id IS NOT NULL AND NEW.image_id IS NOT OLD.image_id;
END;

-- The cache names the embedder's file hash; any edit of a model row counts as everything.
CREATE TRIGGER vector_log_models_update AFTER UPDATE OF id, kind, file_blake3 ON models
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (3, NULL, random()); END;
CREATE TRIGGER vector_log_models_delete AFTER DELETE ON models
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (3, NULL, random()); END;
