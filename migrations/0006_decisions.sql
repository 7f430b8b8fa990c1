-- 0006: what the user decided about a face, for a person; every later match of that person
-- respects it. Written by `facedb reject`, by `match` when a crop was deleted from its output
-- folder, and (issue 14) by the review page.
--
-- The person is the set of references a decision was made against: refs.blake3 of each (a
-- photo's content hash, or `face:<photo blake3>:<face idx>` for a stored face used as a
-- reference), as a sorted JSON array. A decision applies to a later match whose references share
-- at least one of those keys (adding a reference photo keeps the person's decisions; content
-- hashes survive renames and copies). Decisions made against no reference (`match --all`) apply
-- to runs with no reference.
CREATE TABLE decisions (
    id       INTEGER PRIMARY KEY,
    face_id  INTEGER NOT NULL REFERENCES faces(id),
    person   TEXT NOT NULL,                       -- JSON array of reference keys, sorted
    verdict  TEXT NOT NULL CHECK (verdict IN ('accept', 'reject', 'different_person')),
    source   TEXT NOT NULL CHECK (source IN ('cli', 'deleted-crop', 'review')),
    run_id   INTEGER REFERENCES runs(id),         -- the match run the decision was about, if any
    detail   TEXT,                                -- e.g. the crop file that was deleted
    at       TEXT NOT NULL
);
CREATE INDEX decisions_face ON decisions(face_id);

-- One row per decision, newest first per face; the latest decision on a (face, person) wins.
CREATE VIEW decisions_v AS
SELECT d.id AS decision_id, d.face_id, fc.image_id,
       (SELECT min(f.path) FROM files f WHERE f.image_id = fc.image_id AND f.missing = 0) AS path,
       d.verdict, d.source, d.person, d.run_id, d.detail, d.at
FROM decisions d LEFT JOIN faces fc ON fc.id = d.face_id;

-- How many decisions each match run applied (rejected faces left out, negatives added).
ALTER TABLE match_runs ADD COLUMN decisions_applied INTEGER NOT NULL DEFAULT 0;
