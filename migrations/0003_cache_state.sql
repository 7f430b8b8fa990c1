-- 0003: the vector cache (<db>.vectors) proves it mirrors this exact database state.
-- 0002's counters could not: a database restored from a copy and changed again reaches the same
-- counter with different content. Instead every change that can alter what the cache holds sets
-- a new random state token, so two histories that diverge never share one (a rolled-back change
-- rolls its token back with it). Triggers, so hand-written SQL counts too.
--
-- The cache holds the embeddings of faces found by their image's current detector, of images
-- with at least one present file; so besides embeddings and faces, an image's detector and a
-- file's presence or image change the token too.

DROP TRIGGER embeddings_insert_bumps;
DROP TRIGGER embeddings_delete_bumps;
DROP TRIGGER embeddings_update_bumps;
DROP TRIGGER faces_update_bumps;
DROP TRIGGER faces_delete_bumps;
DELETE FROM meta WHERE key IN ('embeddings_generation', 'embeddings_rewrites');
INSERT INTO meta (key, value) VALUES ('cache_state', lower(hex(randomblob(16))));

CREATE TRIGGER cache_state_embeddings_insert AFTER INSERT ON embeddings
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;
CREATE TRIGGER cache_state_embeddings_delete AFTER DELETE ON embeddings
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;
CREATE TRIGGER cache_state_embeddings_update AFTER UPDATE ON embeddings
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;

CREATE TRIGGER cache_state_faces_update AFTER UPDATE OF id, image_id, detector_id, size_px, sharpness, yaw, score ON faces
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;
CREATE TRIGGER cache_state_faces_delete AFTER DELETE ON faces
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;

CREATE TRIGGER cache_state_images_update AFTER UPDATE OF id, detector_id ON images
WHEN OLD.id IS NOT NEW.id OR OLD.detector_id IS NOT NEW.detector_id
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;
CREATE TRIGGER cache_state_images_delete AFTER DELETE ON images
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;

-- Only changes to presence or to the image a path shows: a no-op re-index rewrites neither.
CREATE TRIGGER cache_state_files_insert AFTER INSERT ON files
WHEN NEW.missing = 0 AND NEW.image_id IS NOT NULL
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;
CREATE TRIGGER cache_state_files_delete AFTER DELETE ON files
WHEN OLD.missing = 0 AND OLD.image_id IS NOT NULL
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;
CREATE TRIGGER cache_state_files_update AFTER UPDATE OF missing, image_id ON files
WHEN OLD.missing IS NOT NEW.missing OR OLD.image_id IS NOT NEW.image_id
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;

-- The cache also names the embedder's file hash; a hand edit of a model row changes it too.
CREATE TRIGGER cache_state_models_update AFTER UPDATE OF id, kind, file_blake3 ON models
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;
CREATE TRIGGER cache_state_models_delete AFTER DELETE ON models
BEGIN UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'cache_state'; END;
