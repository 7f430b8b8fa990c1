-- 0010: `facedb export xmp` writes face regions into .xmp sidecars beside the photos. This is the
-- ledger of the sidecars it wrote (as .facedb-output is for crops): a sidecar is facedb's to
-- replace only while it still holds the bytes facedb wrote there; anything else at that name is
-- someone else's and is merged into only when the user asks (--merge-existing).
CREATE TABLE xmp_sidecars (
    path       TEXT PRIMARY KEY,   -- relative to the dataset root, keyed as files.path is
    blake3     TEXT NOT NULL,      -- of the bytes facedb last wrote there
    pending    TEXT,               -- of the bytes being written: set before the rename, cleared after,
                                   -- so a run killed in between still knows the file is its own
    regions    INTEGER NOT NULL,   -- face regions facedb wrote into it
    written_at TEXT NOT NULL
) WITHOUT ROWID;
