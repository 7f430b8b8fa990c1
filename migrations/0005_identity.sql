-- 0005: who owns this file, which process is running each run, and faces seen twice.
-- application_id marks the file as a facedb database, so `--db` can refuse any other SQLite file
-- instead of adding facedb's tables to it. runs.pid lets the next run tell a run that is still
-- going from one that was killed (status left 'running').
PRAGMA application_id = 1717854769;
ALTER TABLE runs ADD COLUMN pid INTEGER;
-- Other faces of the photo within the threshold that are the chosen face again (a mirror, a
-- reflection, a photo of the photo): the photo is kept, the closest face cropped, and this says so.
ALTER TABLE match_results ADD COLUMN same_face_copies INTEGER NOT NULL DEFAULT 0;
-- Degrees (clockwise) a sideways photo without EXIF orientation was turned to find its faces;
-- width, height and face coordinates are those of the turned image.
ALTER TABLE images ADD COLUMN rotation INTEGER NOT NULL DEFAULT 0;
-- Which quality measure scored the faces: 1 measured sharpness as the variance of the Laplacian at
-- full resolution (it depended on resolution and exposure), 2 at a fixed face scale normalised
-- for contrast. `index` re-scores version-1 images (decode, no detection).
ALTER TABLE images ADD COLUMN quality_version INTEGER NOT NULL DEFAULT 1;
