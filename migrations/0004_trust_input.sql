-- 0004: what `index` needs to re-check its own past verdicts.
-- Embeddings are keyed by the model that made them: images remember which embedder last
-- embedded their faces, so a changed embedder file (a new models row) re-embeds them.
ALTER TABLE images ADD COLUMN embedder_id INTEGER REFERENCES models(id);
UPDATE images SET embedder_id = (SELECT r.embedder_id FROM runs r WHERE r.id = images.run_id) WHERE status = 'ok';
-- Failures say whether the file's content caused them (never retried) or what was installed
-- (a missing library, the runtime), retried when `failure_env` (facedb, ONNX Runtime, model
-- and libheif identities) differs from the current one. NULL (failed before 0004): retried once.
ALTER TABLE images ADD COLUMN failure_kind TEXT CHECK (failure_kind IN ('content', 'environment'));
ALTER TABLE images ADD COLUMN failure_env TEXT;
-- Keep the model and failure checks of a no-op re-index to index lookups.
CREATE INDEX images_embedder ON images(embedder_id);
CREATE INDEX images_detector ON images(detector_id);
CREATE INDEX images_failed ON images(status) WHERE status = 'failed';

ALTER TABLE runs ADD COLUMN images_reembedded INTEGER NOT NULL DEFAULT 0;   -- faces re-embedded (new embedder)
ALTER TABLE runs ADD COLUMN images_redetected INTEGER NOT NULL DEFAULT 0;   -- re-detected (new detector)
ALTER TABLE runs ADD COLUMN images_retried    INTEGER NOT NULL DEFAULT 0;   -- earlier failures tried again
ALTER TABLE runs ADD COLUMN files_skipped     INTEGER NOT NULL DEFAULT 0;   -- FIFOs, sockets, devices

-- What the last complete walk could not index, replaced by every index: folders it could not
-- list, dangling links and loops ('error'), and photo-named FIFOs, sockets and devices
-- ('skipped', never opened). Fixed paths disappear on the next index.
CREATE TABLE walk_issues (
    path     TEXT PRIMARY KEY,                    -- key as in files.path
    kind     TEXT NOT NULL CHECK (kind IN ('error', 'skipped')),
    reason   TEXT NOT NULL,
    run_id   INTEGER NOT NULL REFERENCES runs(id)
) WITHOUT ROWID;
