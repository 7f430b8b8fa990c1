-- 0002: what `match` needs to trust its cached copy of the embeddings (<db>.vectors).
-- The cache is keyed by this database's id and a generation counter that every change to
-- embeddings, or to the face columns the cache copies, bumps (triggers, so hand-written SQL
-- counts too). A second counter, rewrites, counts the changes that are not appends (an
-- update, a delete, an embedding inserted below the highest face id): while it stands still,
-- the cache can be brought up to date by appending the new faces only.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) WITHOUT ROWID;

INSERT INTO meta (key, value) VALUES
    ('database_id', lower(hex(randomblob(16)))),
    ('embeddings_generation', 0),
    ('embeddings_rewrites', 0);

CREATE TRIGGER embeddings_insert_bumps AFTER INSERT ON embeddings
BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'embeddings_generation';
    UPDATE meta SET value = value + 1 WHERE key = 'embeddings_rewrites'
        AND NEW.face_id < (SELECT max(face_id) FROM embeddings);
END;
CREATE TRIGGER embeddings_delete_bumps AFTER DELETE ON embeddings
BEGIN UPDATE meta SET value = value + 1 WHERE key IN ('embeddings_generation', 'embeddings_rewrites'); END;
CREATE TRIGGER embeddings_update_bumps AFTER UPDATE ON embeddings
BEGIN UPDATE meta SET value = value + 1 WHERE key IN ('embeddings_generation', 'embeddings_rewrites'); END;
CREATE TRIGGER faces_update_bumps AFTER UPDATE OF id, image_id, size_px, sharpness, yaw, score ON faces
BEGIN UPDATE meta SET value = value + 1 WHERE key IN ('embeddings_generation', 'embeddings_rewrites'); END;
CREATE TRIGGER faces_delete_bumps AFTER DELETE ON faces
BEGIN UPDATE meta SET value = value + 1 WHERE key IN ('embeddings_generation', 'embeddings_rewrites'); END;
