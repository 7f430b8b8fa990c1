-- 0009: `facedb forget`: faces the user asked facedb to erase stay erased.
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

-- `facedb people`: every stored face grouped into people without a reference (src/cluster.rs).
-- A face is in at most one person; a face in none waits (too few close neighbours yet) and is
-- tried again by the next `facedb people`.
CREATE TABLE people (
    id         INTEGER PRIMARY KEY,
    name       TEXT UNIQUE,                         -- NULL until `facedb people name ID NAME`
    created_at TEXT NOT NULL
);
CREATE TABLE person_faces (
    face_id   INTEGER PRIMARY KEY REFERENCES faces(id),
    person_id INTEGER NOT NULL REFERENCES people(id),
    source    TEXT NOT NULL CHECK (source IN ('cluster', 'assigned', 'user')),  -- seeded a person, joined one later, or moved by the user
    run_id    INTEGER REFERENCES runs(id)
) WITHOUT ROWID;
CREATE INDEX person_faces_person ON person_faces(person_id);

-- Every face with its person (NULL: not in one yet), with a path to look at.
CREATE VIEW face_people_v AS
SELECT fc.id AS face_id, fc.image_id,
       (SELECT min(f.path) FROM files f WHERE f.image_id = fc.image_id AND f.missing = 0) AS path,
       pf.person_id, p.name, pf.source
FROM faces fc LEFT JOIN person_faces pf ON pf.face_id = fc.id LEFT JOIN people p ON p.id = pf.person_id;

-- People, biggest first.
CREATE VIEW people_v AS
SELECT p.id AS person_id, p.name, count(pf.face_id) AS faces, p.created_at
FROM people p LEFT JOIN person_faces pf ON pf.person_id = p.id GROUP BY p.id ORDER BY faces DESC, p.id;
