-- 0008 (issue 14): what the review page and the contact sheet need.
--
-- Each match run's distance histogram over EVERY photo it decided about, including the far ones
-- that are counted but not stored as match_results rows: 0.01-wide bins from 0 (bin i holds
-- distances in (i*0.01, (i+1)*0.01], 0 in bin 0), so a threshold on the 0.01 grid splits it
-- exactly. `within` is the exact number of photos at or under the run's threshold.
CREATE TABLE match_histograms (
    run_id      INTEGER PRIMARY KEY REFERENCES runs(id),
    bin_width   REAL NOT NULL,
    counts_json TEXT NOT NULL,            -- JSON array of counts, bin 0 first
    non_finite  INTEGER NOT NULL DEFAULT 0, -- NaN or infinite distances (damaged vectors)
    within      INTEGER NOT NULL          -- photos with distance <= the run's threshold
);

-- A run can be named (`match --name "photos of Anna"`) and named wherever a run number is.
ALTER TABLE match_runs ADD COLUMN name TEXT;

-- Every path of an image (photos_v shows one): copies and renames of the same content.
CREATE VIEW image_paths_v AS
SELECT i.id AS image_id, i.blake3, f.path, f.missing,
       (SELECT count(*) FROM files g WHERE g.image_id = i.id AND g.missing = 0) AS copies
FROM images i JOIN files f ON f.image_id = i.id;
