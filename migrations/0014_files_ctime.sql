-- 0014: the stat cache also proves a file unchanged by its ctime (status change time), which no
-- user tool can set: an in-place edit that restores the old mtime (`touch -r`, `exiftool -P` with
-- a same-size field) keeps size, mtime and inode but not ctime. NULL: recorded before this
-- column existed; `index` fills it in from the next stat without reading the file, so such a
-- row is trusted as it was before, once.
ALTER TABLE files ADD COLUMN ctime_ns INTEGER;
