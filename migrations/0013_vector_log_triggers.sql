-- 0013: the change log's triggers again, with the gaps the hostile tests found closed.
-- - `INSERT OR REPLACE INTO files` deletes the old row without firing a delete trigger (SQLite
--   fires none for REPLACE unless recursive_triggers is on), and 0012's insert trigger only fired
--   for a present file: a photo marked missing that way went unlogged. Now every files insert or
--   delete naming an image is logged, whatever `missing` says (an entry for an image the cache
--   already mirrors unchanged costs a lookup, not a rebuild).
-- - facedb compares these triggers' text in sqlite_master with this file at every open, and
--   recreates them (with a baseline entry, so every cache rebuilds) when one is missing or altered.
-- - embeddings_model lets the cache prove the embedder's embedding count and highest face id
--   without reading the vectors (a count over the index, not the table).
-- facedb reads the triggers from this file: each runs from its CREATE to its END; with no
-- comment inside.

-- A table dropped by hand is recreated (its triggers on other tables would fail every index).
CREATE TABLE IF NOT EXISTS vector_log (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    id   INTEGER,
    tag  INTEGER NOT NULL
);

DROP TRIGGER IF EXISTS vector_log_update;
DROP TRIGGER IF EXISTS vector_log_embeddings_insert;
DROP TRIGGER IF EXISTS vector_log_embeddings_delete;
DROP TRIGGER IF EXISTS vector_log_embeddings_update;
DROP TRIGGER IF EXISTS vector_log_faces_insert;
DROP TRIGGER IF EXISTS vector_log_faces_update;
DROP TRIGGER IF EXISTS vector_log_faces_delete;
DROP TRIGGER IF EXISTS vector_log_images_insert;
DROP TRIGGER IF EXISTS vector_log_images_update;
DROP TRIGGER IF EXISTS vector_log_images_delete;
DROP TRIGGER IF EXISTS vector_log_files_insert;
DROP TRIGGER IF EXISTS vector_log_files_delete;
DROP TRIGGER IF EXISTS vector_log_files_update;
DROP TRIGGER IF EXISTS vector_log_models_update;
DROP TRIGGER IF EXISTS vector_log_models_delete;

CREATE INDEX IF NOT EXISTS embeddings_model ON embeddings(model_id, face_id);

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
WHEN NEW.image_id IS NOT NULL
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (2, NEW.image_id, random()); END;
CREATE TRIGGER vector_log_files_delete AFTER DELETE ON files
WHEN OLD.image_id IS NOT NULL
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (2, OLD.image_id, random()); END;
CREATE TRIGGER vector_log_files_update AFTER UPDATE OF missing, image_id ON files
WHEN OLD.missing IS NOT NEW.missing OR OLD.image_id IS NOT NEW.image_id
BEGIN
    INSERT INTO vector_log (kind, id, tag) SELECT 2, OLD.image_id, random() WHERE OLD.image_id IS NOT NULL;
    INSERT INTO vector_log (kind, id, tag) SELECT 2, NEW.image_id, random() WHERE NEW.image_id IS NOT NULL AND NEW.image_id IS NOT OLD.image_id;
END;

CREATE TRIGGER vector_log_models_update AFTER UPDATE OF id, kind, file_blake3 ON models
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (3, NULL, random()); END;
CREATE TRIGGER vector_log_models_delete AFTER DELETE ON models
BEGIN INSERT INTO vector_log (kind, id, tag) VALUES (3, NULL, random()); END;

INSERT INTO vector_log (kind, id, tag) VALUES (3, NULL, random());
