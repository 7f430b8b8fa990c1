-- 0005: who owns this file and which process is running each run.
-- application_id marks the file as a facedb database, so `--db` can refuse any other SQLite file
-- instead of adding facedb's tables to it. runs.pid lets the next run tell a run that is still
-- going from one that was killed (status left 'running').
PRAGMA application_id = 1717854769;
ALTER TABLE runs ADD COLUMN pid INTEGER;
