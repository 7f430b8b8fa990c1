//! Statements of the single writer. Callers batch them inside one transaction.

use anyhow::Result;
use rusqlite::{params, Connection};
use serde::Serialize;

use super::ids::{ModelId, RunId};
use super::states::{DecisionKind, LogLevel, RunStatus};
use super::{now_rfc3339, vector_to_blob};
use crate::crop::CropPlan;
use crate::matching::Decision;
use crate::pipeline::embed::FaceRecord;
use crate::pipeline::shard::Shard;
use crate::pipeline::walk::{FileEntry, Stat};
use crate::pipeline::{AnalyzedImage, StageTimes};

#[derive(Debug, Default, Clone, Serialize)]
pub struct RunCounters {
    pub files_seen: u64,
    pub files_unchanged: u64,
    pub files_linked: u64,
    pub images_new: u64,
    pub files_failed: u64,
    pub faces_found: u64,
    pub detector_calls: u64,
    pub embedder_calls: u64,
    pub bytes_read: u64,
    pub stage_ms: StageTimes,
    /// Images whose stored faces were embedded again because the embedder file changed.
    pub images_reembedded: u64,
    /// Images detected again because the detector file changed.
    pub images_redetected: u64,
    /// Earlier failures tried again (environment changed, or `--retry-failed`).
    pub images_retried: u64,
    /// Photo-named FIFOs, sockets and devices, never opened.
    pub files_skipped: u64,
}

pub fn ensure_model(conn: &Connection, kind: &str, name: &str, file_blake3: &str, params_json: &str) -> Result<ModelId> {
    conn.execute(
        "INSERT OR IGNORE INTO models (kind, name, file_blake3, params_json) VALUES (?1, ?2, ?3, ?4)",
        params![kind, name, file_blake3, params_json],
    )?;
    Ok(conn.query_row(
        "SELECT id FROM models WHERE kind = ?1 AND name = ?2 AND file_blake3 = ?3 AND params_json = ?4",
        params![kind, name, file_blake3, params_json],
        |r| r.get("id"),
    )?)
}

pub fn begin_run(
    conn: &Connection,
    command: &str,
    args_json: &str,
    ort_version: Option<&str>,
    detector_id: Option<ModelId>,
    embedder_id: Option<ModelId>,
) -> Result<RunId> {
    close_abandoned_runs(conn)?;
    conn.execute(
        "INSERT INTO runs (command, args_json, facedb_version, ort_version, detector_id, embedder_id, started_at, pid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![command, args_json, env!("CARGO_PKG_VERSION"), ort_version, detector_id, embedder_id, now_rfc3339(), std::process::id()],
    )?;
    Ok(RunId(conn.last_insert_rowid()))
}

/// Model calls a match made to embed new reference photos (0 when every reference was stored).
pub fn set_ref_model_calls(conn: &Connection, run_id: RunId, calls: i64) -> Result<()> {
    conn.execute("UPDATE runs SET ref_model_calls = ?2 WHERE id = ?1", params![run_id, calls])?;
    Ok(())
}

/// Marks runs left `running` by a process that no longer exists (killed, crashed, power cut) as
/// `interrupted`, so `report` never shows a dead run as going on. Runs from before pids were
/// recorded cannot still be going either.
pub fn close_abandoned_runs(conn: &Connection) -> Result<usize> {
    let mut stmt = conn.prepare("SELECT id, pid FROM runs WHERE status = 'running'")?;
    let running: Vec<(i64, Option<i64>)> = stmt.query_map([], |r| Ok((r.get("id")?, r.get("pid")?)))?.collect::<rusqlite::Result<_>>()?;
    let mut closed = 0;
    for (id, pid) in running {
        if pid.is_none_or(|p| !process_alive(p)) {
            closed += conn.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = coalesce(finished_at, ?2) WHERE id = ?1 AND status = 'running'",
                params![id, now_rfc3339()],
            )?;
        }
    }
    Ok(closed)
}

/// Whether a process with this id exists on this machine (signal 0 checks without sending).
fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Marks a run `error` if the command returns early (an error, a panic) after the run was
/// recorded; `finished` disarms it once the run's own status is stored.
pub struct RunGuard<'a> {
    conn: &'a Connection,
    run_id: Option<RunId>,
}

impl<'a> RunGuard<'a> {
    pub fn new(conn: &'a Connection, run_id: RunId) -> Self {
        Self { conn, run_id: Some(run_id) }
    }

    pub fn finished(&mut self) {
        self.run_id = None;
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.run_id {
            // Best effort: if even this fails, the next run closes it by its dead pid.
            let _ = abort_run(self.conn, id, RunStatus::Error);
        }
    }
}

/// Records that a run ended abnormally (an error after it began), unless it already finished.
pub fn abort_run(conn: &Connection, run_id: RunId, status: RunStatus) -> Result<()> {
    conn.execute(
        "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1 AND status = 'running'",
        params![run_id, status, now_rfc3339()],
    )?;
    Ok(())
}

pub fn finish_run(conn: &Connection, run_id: RunId, status: RunStatus, c: &RunCounters) -> Result<()> {
    conn.execute(
        "UPDATE runs SET finished_at = ?2, status = ?3, files_seen = ?4, files_unchanged = ?5, files_linked = ?6, images_new = ?7,
                files_failed = ?8, faces_found = ?9, detector_calls = ?10, embedder_calls = ?11, bytes_read = ?12, stage_ms_json = ?13
         WHERE id = ?1",
        params![
            run_id,
            now_rfc3339(),
            status,
            c.files_seen as i64,
            c.files_unchanged as i64,
            c.files_linked as i64,
            c.images_new as i64,
            c.files_failed as i64,
            c.faces_found as i64,
            c.detector_calls as i64,
            c.embedder_calls as i64,
            c.bytes_read as i64,
            serde_json::to_string(&c.stage_ms)?
        ],
    )?;
    Ok(())
}

/// The detector and embedder rows (`models.id`) a run uses.
#[derive(Debug, Clone, Copy)]
pub struct ModelIds {
    pub detector: ModelId,
    pub embedder: ModelId,
}

/// Stores an analysed image with its faces and embeddings; returns the image id.
pub fn insert_image(
    conn: &Connection,
    run_id: RunId,
    blake3: &str,
    size: u64,
    img: &AnalyzedImage,
    times: &StageTimes,
    models: ModelIds,
) -> Result<i64> {
    let ModelIds { detector: detector_id, embedder: embedder_id } = models;
    conn.prepare_cached(
        "INSERT INTO images (blake3, size_bytes, width, height, format, orientation, status, detector_id, run_id, created_at, stage_ms_json, rotation, quality_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'ok', ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        blake3,
        size as i64,
        img.width,
        img.height,
        img.format,
        img.orientation,
        detector_id,
        run_id,
        now_rfc3339(),
        serde_json::to_string(times)?,
        img.rotation,
        crate::pipeline::quality::QUALITY_VERSION
    ])?;
    let image_id = conn.last_insert_rowid();
    for (idx, face) in img.faces.iter().enumerate() {
        insert_face(conn, image_id, detector_id, embedder_id, idx, face)?;
    }
    Ok(image_id)
}

fn insert_face(conn: &Connection, image_id: i64, detector_id: ModelId, embedder_id: ModelId, idx: usize, face: &FaceRecord) -> Result<()> {
    let d = &face.detection;
    let q = &face.quality;
    // A face the user had facedb forget is not stored again (by any detector; migration 0009).
    if super::forget::is_forgotten(conn, image_id, [d.x.into(), d.y.into(), d.w.into(), d.h.into()])? {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO faces (image_id, detector_id, idx, x, y, w, h, score, landmarks_json, size_px, sharpness, yaw, roll, brightness, face_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        image_id,
        detector_id,
        idx as i64,
        d.x,
        d.y,
        d.w,
        d.h,
        d.score,
        serde_json::to_string(&d.landmarks)?,
        q.size_px,
        q.sharpness,
        q.yaw,
        q.roll,
        q.brightness,
        face.face_hash.map(|h| h as i64) // SQLite integers are signed: the bits, reinterpreted
    ])?;
    if let Some(e) = &face.embedding {
        let face_id = conn.last_insert_rowid();
        conn.prepare_cached("INSERT INTO embeddings (face_id, model_id, vector) VALUES (?1, ?2, ?3)")?.execute(params![
            face_id,
            embedder_id,
            vector_to_blob(e)
        ])?;
    }
    Ok(())
}

/// Stores content that could not be decoded, so the same bytes are never tried again.
pub fn insert_failed_image(conn: &Connection, run_id: RunId, blake3: &str, size: u64, error: &str) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO images (blake3, size_bytes, status, error, run_id, created_at) VALUES (?1, ?2, 'failed', ?3, ?4, ?5)
         ON CONFLICT (blake3) DO UPDATE SET error = excluded.error",
    )?
    .execute(params![blake3, size as i64, error, run_id, now_rfc3339()])?;
    Ok(conn.query_row("SELECT id FROM images WHERE blake3 = ?1", [blake3], |r| r.get("id"))?)
}

/// Records a path: its image (if its content could be read), stat cache and read error.
pub fn upsert_file(
    conn: &Connection,
    run_id: RunId,
    file: &FileEntry,
    stat: Option<Stat>,
    checked_ns: i64,
    image_id: Option<i64>,
    error: Option<&str>,
) -> Result<()> {
    // A `None` stat stores size -1, which never matches, so the next run reads the file again.
    let (size, mtime, inode, ctime) = stat.map_or((-1, 0, 0, None), |s| (s.size as i64, s.mtime_ns, s.inode as i64, Some(s.ctime_ns)));
    conn.prepare_cached(
        "INSERT INTO files (path, path_raw, image_id, size, mtime_ns, inode, checked_ns, error, first_run, last_run, missing, ctime_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, 0, ?10)
         ON CONFLICT (path) DO UPDATE SET path_raw = excluded.path_raw, image_id = excluded.image_id, size = excluded.size,
             mtime_ns = excluded.mtime_ns, inode = excluded.inode, checked_ns = excluded.checked_ns, error = excluded.error,
             last_run = excluded.last_run, missing = 0, ctime_ns = excluded.ctime_ns",
    )?
    .execute(params![file.rel, file.raw, image_id, size, mtime, inode, checked_ns, error, run_id, ctime])?;
    Ok(())
}

/// Records the ctime of a file found unchanged whose row predates the ctime column (migration 0014).
pub fn set_ctime(conn: &Connection, path: &str, ctime_ns: i64) -> Result<()> {
    conn.prepare_cached("UPDATE files SET ctime_ns = ?2 WHERE path = ?1")?.execute(params![path, ctime_ns])?;
    Ok(())
}

pub fn set_missing(conn: &Connection, path: &str, missing: bool) -> Result<()> {
    conn.prepare_cached("UPDATE files SET missing = ?2 WHERE path = ?1")?.execute(params![path, missing])?;
    Ok(())
}

pub fn log(conn: &Connection, run_id: RunId, image_id: Option<i64>, path: Option<&str>, level: LogLevel, message: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO logs (run_id, image_id, path, level, message, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![run_id, image_id, path, level, message, now_rfc3339()])?;
    Ok(())
}

pub struct NewRef<'a> {
    pub blake3: &'a str,
    pub path: &'a str,
    pub width: u32,
    pub height: u32,
    pub faces_in_photo: usize,
    pub face: &'a FaceRecord,
    pub vector: &'a [f32],
}

pub fn insert_ref(conn: &Connection, r: &NewRef, detector_id: ModelId, embedder_id: ModelId) -> Result<i64> {
    let d = &r.face.detection;
    conn.execute(
        "INSERT INTO refs (blake3, path, width, height, faces_in_photo, x, y, w, h, score, landmarks_json, detector_id, embedder_id, vector, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        params![
            r.blake3,
            r.path,
            r.width,
            r.height,
            r.faces_in_photo as i64,
            d.x,
            d.y,
            d.w,
            d.h,
            d.score,
            serde_json::to_string(&d.landmarks)?,
            detector_id,
            embedder_id,
            vector_to_blob(r.vector),
            now_rfc3339()
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// A reference is known by its content; its path is where it was given last (canonical).
pub fn set_ref_path(conn: &Connection, id: i64, path: &str) -> Result<()> {
    conn.execute("UPDATE refs SET path = ?2 WHERE id = ?1", rusqlite::params![id, path])?;
    Ok(())
}

pub struct NewMatchRun<'a> {
    pub mode: &'a str,
    pub threshold: f32,
    pub combine: &'a str,
    pub expand: Option<f32>,
    pub options_json: &'a str,
    pub out_dir: &'a str,
    pub ref_ids: &'a [i64],
    pub neg_ref_ids: &'a [i64],
}

pub fn insert_match_run(conn: &Connection, run_id: RunId, m: &NewMatchRun) -> Result<()> {
    conn.execute(
        "INSERT INTO match_runs (run_id, mode, threshold, combine, expand, options_json, out_dir, ref_ids_json, neg_ref_ids_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            run_id,
            m.mode,
            m.threshold,
            m.combine,
            m.expand,
            m.options_json,
            m.out_dir,
            serde_json::to_string(m.ref_ids)?,
            serde_json::to_string(m.neg_ref_ids)?
        ],
    )?;
    Ok(())
}

pub fn finish_match_run(conn: &Connection, run_id: RunId, photos: u64, matched: u64, rejected: u64, ambiguous: u64) -> Result<()> {
    conn.execute(
        "UPDATE match_runs SET photos = ?2, matched = ?3, rejected = ?4, ambiguous = ?5 WHERE run_id = ?1",
        params![run_id, photos as i64, matched as i64, rejected as i64, ambiguous as i64],
    )?;
    Ok(())
}

pub struct MatchRow<'a> {
    pub decision: &'a Decision,
    /// `None` for --all without references.
    pub distance: Option<f32>,
    pub reason: Option<&'a str>,
    pub crop_path: Option<&'a str>,
    pub plan: Option<&'a CropPlan>,
}

pub fn insert_match_result(conn: &Connection, run_id: RunId, m: &MatchRow) -> Result<()> {
    let d = m.decision;
    let rect = m.plan.map(|p| p.rect.map(i64::from));
    conn.prepare_cached(
        "INSERT OR REPLACE INTO match_results (run_id, face_id, image_id, distance, runner_up_face_id, runner_up_distance, negative_distance,
             ambiguous, pass, decision, reason, crop_path, crop_x, crop_y, crop_w, crop_h, crop_angle, crop_out_w, crop_out_h, same_face_copies)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
    )?
    .execute(params![
        run_id,
        d.face_id,
        d.image_id,
        m.distance,
        d.runner_up.map(|r| r.0),
        d.runner_up.map(|r| r.1),
        d.negative_distance,
        d.ambiguous,
        d.pass,
        if m.reason.is_none() { DecisionKind::Matched } else { DecisionKind::Rejected },
        m.reason,
        m.crop_path,
        rect.map(|r| r[0]),
        rect.map(|r| r[1]),
        rect.map(|r| r[2]),
        rect.map(|r| r[3]),
        m.plan.map(|p| p.angle),
        m.plan.map(|p| p.out_w),
        m.plan.map(|p| p.out_h),
        d.same_face_copies
    ])?;
    Ok(())
}

/// The counters `finish_run` does not know about (index only).
pub fn finish_index_run(conn: &Connection, run_id: RunId, c: &RunCounters) -> Result<()> {
    conn.execute(
        "UPDATE runs SET images_reembedded = ?2, images_redetected = ?3, images_retried = ?4, files_skipped = ?5 WHERE id = ?1",
        params![run_id, c.images_reembedded as i64, c.images_redetected as i64, c.images_retried as i64, c.files_skipped as i64],
    )?;
    Ok(())
}

/// Records which embedder last embedded an image's faces (new images, re-embedded ones).
pub fn set_image_embedder(conn: &Connection, image_id: i64, embedder_id: Option<ModelId>) -> Result<()> {
    conn.prepare_cached("UPDATE images SET embedder_id = ?2 WHERE id = ?1")?.execute(params![image_id, embedder_id])?;
    Ok(())
}

/// Stores new quality scores of existing faces and marks the image scored by the current measure.
pub fn rescore_faces(conn: &Connection, image_id: i64, quality: &[(i64, crate::pipeline::quality::Quality)]) -> Result<()> {
    for (face_id, q) in quality {
        conn.prepare_cached("UPDATE faces SET size_px = ?2, sharpness = ?3, yaw = ?4, roll = ?5, brightness = ?6 WHERE id = ?1")?
            .execute(params![face_id, q.size_px, q.sharpness, q.yaw, q.roll, q.brightness])?;
    }
    conn.prepare_cached("UPDATE images SET quality_version = ?2 WHERE id = ?1")?
        .execute(params![image_id, crate::pipeline::quality::QUALITY_VERSION])?;
    Ok(())
}

/// Turns a failed image into a decoded one, keeping its id (paths already point to it).
pub fn replace_failed_image(
    conn: &Connection,
    image_id: i64,
    run_id: RunId,
    img: &AnalyzedImage,
    times: &StageTimes,
    detector_id: ModelId,
    embedder_id: ModelId,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE images SET width = ?2, height = ?3, format = ?4, orientation = ?5, status = 'ok', error = NULL, failure_kind = NULL,
             failure_env = NULL, detector_id = ?6, embedder_id = ?7, run_id = ?8, stage_ms_json = ?9, rotation = ?10, quality_version = ?11
         WHERE id = ?1",
    )?
    .execute(params![
        image_id,
        img.width,
        img.height,
        img.format,
        img.orientation,
        detector_id,
        embedder_id,
        run_id,
        serde_json::to_string(times)?,
        img.rotation,
        crate::pipeline::quality::QUALITY_VERSION
    ])?;
    for (idx, face) in img.faces.iter().enumerate() {
        insert_face(conn, image_id, detector_id, embedder_id, idx, face)?;
    }
    Ok(())
}

/// Why an image failed: its content ('content', never retried) or what was installed
/// ('environment', retried when `env` differs from the current environment).
pub fn set_failure_kind(conn: &Connection, image_id: i64, kind: &str, env: &str) -> Result<()> {
    conn.prepare_cached("UPDATE images SET failure_kind = ?2, failure_env = ?3 WHERE id = ?1")?.execute(params![image_id, kind, env])?;
    Ok(())
}

/// Stores embeddings of existing faces made by a new embedder, and marks the image done.
pub fn add_embeddings(conn: &Connection, image_id: i64, embedder_id: ModelId, vectors: &[(i64, impl AsRef<[f32]>)]) -> Result<()> {
    for (face_id, v) in vectors {
        conn.prepare_cached("INSERT OR REPLACE INTO embeddings (face_id, model_id, vector) VALUES (?1, ?2, ?3)")?.execute(params![
            face_id,
            embedder_id,
            vector_to_blob(v.as_ref())
        ])?;
    }
    set_image_embedder(conn, image_id, Some(embedder_id))
}

/// Stores the faces a new detector found in an existing image and makes them the image's
/// faces. Faces of earlier detectors stay (old match results point to them) but lose their
/// embeddings: matched beside the new ones they would be the same face twice. If faces of this
/// detector are already stored (the detector file was changed back), they are reused, and the
/// new embeddings go to them by index (same detector, same bytes: the same faces).
pub fn replace_detection(conn: &Connection, image_id: i64, img: &AnalyzedImage, detector_id: ModelId, embedder_id: ModelId) -> Result<()> {
    let existing: i64 =
        conn.query_row("SELECT count(*) AS n FROM faces WHERE image_id = ?1 AND detector_id = ?2", params![image_id, detector_id], |r| {
            r.get("n")
        })?;
    for (idx, face) in img.faces.iter().enumerate() {
        if existing == 0 {
            insert_face(conn, image_id, detector_id, embedder_id, idx, face)?;
        } else if let Some(e) = &face.embedding {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO embeddings (face_id, model_id, vector)
                 SELECT id, ?3, ?4 FROM faces WHERE image_id = ?1 AND detector_id = ?2 AND idx = ?5",
            )?
            .execute(params![image_id, detector_id, embedder_id, vector_to_blob(e), idx as i64])?;
        }
    }
    conn.prepare_cached("DELETE FROM embeddings WHERE face_id IN (SELECT id FROM faces WHERE image_id = ?1 AND detector_id <> ?2)")?
        .execute(params![image_id, detector_id])?;
    conn.prepare_cached("UPDATE images SET detector_id = ?2, width = ?3, height = ?4, rotation = ?5, quality_version = ?6 WHERE id = ?1")?
        .execute(params![image_id, detector_id, img.width, img.height, img.rotation, crate::pipeline::quality::QUALITY_VERSION])?;
    set_image_embedder(conn, image_id, Some(embedder_id))
}

/// Replaces what the last walk could not index (see migration 0004).
pub fn replace_walk_issues(conn: &Connection, run_id: RunId, issues: &[(&str, &str, &str)]) -> Result<()> {
    conn.execute("DELETE FROM walk_issues", [])?;
    let mut stmt = conn.prepare_cached("INSERT OR REPLACE INTO walk_issues (path, kind, reason, run_id) VALUES (?1, ?2, ?3, ?4)")?;
    for (path, kind, reason) in issues {
        stmt.execute(params![path, kind, reason, run_id])?;
    }
    Ok(())
}

/// Moves a files row to its exact key (rows keyed by lossy UTF-8 before keys were exact). A
/// row already at the new key wins; the old one goes.
pub fn rekey_file(conn: &Connection, old: &str, new: &str, raw: Option<&[u8]>) -> Result<()> {
    let taken: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM files WHERE path = ?1) AS taken", [new], |r| r.get("taken"))?;
    if taken {
        conn.execute("DELETE FROM files WHERE path = ?1", [old])?;
    } else {
        conn.execute("UPDATE files SET path = ?2, path_raw = ?3 WHERE path = ?1", params![old, new, raw])?;
    }
    Ok(())
}

/// Records that every files row has its exact key, so the check is not repeated (it scans).
pub fn mark_path_keys_exact(conn: &Connection) -> Result<()> {
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('path_keys', 'exact')", [])?;
    Ok(())
}

/// Records which shard of its folder this database holds (see `Db::check_shard`).
pub fn set_shard(conn: &Connection, shard: Shard) -> Result<()> {
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('shard', ?1)", [shard.to_string()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn runs_left_running_by_a_dead_process_are_closed_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("facedb.sqlite")).unwrap();
        let conn = &db.conn;
        // A pid that existed and has exited, and a run from before pids were recorded.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        conn.execute(
            "INSERT INTO runs (command, args_json, facedb_version, started_at, pid) VALUES ('match', '{}', 'x', 't', ?1), ('index', '{}', 'x', 't', NULL)",
            [dead],
        )
        .unwrap();
        let alive = begin_run(conn, "index", "{}", None, None, None).unwrap();
        let status = |id: RunId| conn.query_row("SELECT status FROM runs WHERE id = ?1", [id], |r| r.get::<_, String>(0)).unwrap();
        assert_eq!((status(RunId(1)), status(RunId(2)), status(alive)), ("interrupted".into(), "interrupted".into(), "running".into()));
        // This process is alive: its run is left alone by another one starting.
        begin_run(conn, "match", "{}", None, None, None).unwrap();
        assert_eq!(status(alive), "running");
        abort_run(conn, alive, RunStatus::Error).unwrap();
        assert_eq!(status(alive), "error");
    }

    #[test]
    fn models_runs_and_results_are_stored_with_typed_ids_and_states() {
        let f = crate::db::fixture::indexed().unwrap();
        let conn = &f.db.conn;
        assert_eq!(ensure_model(conn, "detector", "yunet.onnx", "d0", "{}").unwrap(), f.models.detector, "registered once");
        assert_ne!(ensure_model(conn, "detector", "yunet.onnx", "d1", "{}").unwrap(), f.models.detector, "another file is another model");
        let run = begin_run(conn, "match", "{}", None, Some(f.models.detector), Some(f.models.embedder)).unwrap();
        let face_id: i64 = conn.query_row("SELECT id FROM faces WHERE idx = 1", [], |r| r.get("id")).unwrap();
        let d = crate::matching::Decision {
            image_id: f.image,
            face_id,
            distance: 0.3,
            runner_up: None,
            negative_distance: None,
            ambiguous: false,
            same_face_copies: 0,
            pass: 1,
            reason: None,
        };
        insert_match_result(
            conn,
            run,
            &MatchRow { decision: &d, distance: Some(0.3), reason: None, crop_path: Some("a_face1.jpg"), plan: None },
        )
        .unwrap();
        finish_run(conn, run, RunStatus::Failures, &RunCounters::default()).unwrap();
        let (status, decision): (RunStatus, DecisionKind) = conn
            .query_row("SELECT status, decision FROM runs JOIN match_results ON run_id = runs.id WHERE runs.id = ?1", [run], |r| {
                Ok((r.get("status")?, r.get("decision")?))
            })
            .unwrap();
        assert_eq!((status, decision), (RunStatus::Failures, DecisionKind::Matched));
        let rows = crate::db::read::match_results(conn, run).unwrap();
        assert_eq!((rows.len(), rows[0].face_id, rows[0].crop_path.as_deref()), (1, face_id, Some("a_face1.jpg")));
        // A finished run is not aborted afterwards.
        abort_run(conn, run, RunStatus::Error).unwrap();
        let text: String = conn.query_row("SELECT status FROM runs WHERE id = ?1", [run], |r| r.get(0)).unwrap();
        assert_eq!(text, "failures");
    }
}
