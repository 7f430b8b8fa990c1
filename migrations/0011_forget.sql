-- 0011: `facedb forget`: faces the user asked facedb to erase stay erased.
-- One row per request: the photo's content hash and, for one face, its box (upright pixels of the
-- photo, as faces.x..h); a NULL box forgets every face of the photo. No vector is kept here.
-- `index` does not store a face of that content again (by any detector: a new face counts as
-- the forgotten one when its box overlaps the stored box by more than half, IoU > 0.5). The
-- photo's other bytes (size, hash, paths) stay, so the photo is still known and never re-read.
CREATE TABLE forgotten (
    id     INTEGER PRIMARY KEY,
    blake3 TEXT NOT NULL,                         -- images.blake3 of the photo
    x REAL, y REAL, w REAL, h REAL,               -- the face; NULL: every face of the photo
    at     TEXT NOT NULL
);
CREATE INDEX forgotten_blake3 ON forgotten(blake3);
