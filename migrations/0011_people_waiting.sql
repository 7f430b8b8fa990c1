-- 0011: `facedb people` remembers, for each face it left waiting, how many close neighbours it
-- had among the waiting faces, so the next run compares only the new faces against the rest
-- instead of clustering every waiting face again (src/cluster.rs, "Incremental"). A cache of
-- what a run would count: it is used only when `meta.people_basis` (embedder, distance,
-- minimum) matches and every row names a current waiting face; otherwise the run counts again.
-- Deleting rows only makes the next run slower.
CREATE TABLE people_waiting (
    face_id    INTEGER PRIMARY KEY REFERENCES faces(id),
    neighbours INTEGER NOT NULL CHECK (neighbours >= 0)
) WITHOUT ROWID;
