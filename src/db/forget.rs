//! `facedb forget`: the SQL that erases faces (migration 0009) and keeps them erased.
//!
//! Erased per face: its embeddings, the face row (box, landmarks, face hash, quality), its match
//! results, selection rows and decisions, and every reference made from it (`refs` keeps a copy
//! of a reference's vector). The photo itself stays known by content hash, so `index` neither
//! re-reads nor re-detects it; `forgotten` stops any later detection storing the face again.

use std::collections::BTreeSet;

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::now_rfc3339;

/// Intersection over union of two boxes given as SQL expressions `x, y, w, h`, in SQL.
fn iou_sql(a: [&str; 4], b: [&str; 4]) -> String {
    let [ax, ay, aw, ah] = a;
    let [bx, by, bw, bh] = b;
    let inter =
        format!("(max(0, min({ax} + {aw}, {bx} + {bw}) - max({ax}, {bx})) * max(0, min({ay} + {ah}, {by} + {bh}) - max({ay}, {by})))");
    format!("({inter} / max(1e-9, {aw} * {ah} + {bw} * {bh} - {inter}))")
}

/// Faces counting as the forgotten one when their boxes overlap it this much (a new detector
/// moves a box by a few pixels; two different faces barely overlap).
const SAME_FACE_IOU: f64 = 0.5;

/// What a forget request names, resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub image_id: i64,
    pub blake3: String,
    /// The face's box (x, y, w, h); `None`: every face of the photo.
    pub face_box: Option<[f64; 4]>,
}

/// The photo with this content hash, every face of it.
pub fn photo_target(conn: &Connection, image_id: i64) -> Result<Option<Target>> {
    Ok(conn
        .query_row("SELECT blake3 FROM images WHERE id = ?1", [image_id], |r| r.get::<_, String>("blake3"))
        .optional()?
        .map(|blake3| Target { image_id, blake3, face_box: None }))
}

/// One stored face.
pub fn face_target(conn: &Connection, face_id: i64) -> Result<Option<Target>> {
    Ok(conn
        .query_row(
            "SELECT fc.image_id, i.blake3, fc.x, fc.y, fc.w, fc.h FROM faces fc JOIN images i ON i.id = fc.image_id WHERE fc.id = ?1",
            [face_id],
            |r| {
                Ok(Target {
                    image_id: r.get("image_id")?,
                    blake3: r.get("blake3")?,
                    face_box: Some([r.get("x")?, r.get("y")?, r.get("w")?, r.get("h")?]),
                })
            },
        )
        .optional()?)
}

/// A crop a match run wrote of a face being forgotten: its output folder and name there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WrittenCrop {
    pub out_dir: String,
    pub name: String,
}

/// Fills the temp table `forget_faces` with the faces `target` names (of every detector).
fn select_faces(tx: &Transaction, t: &Target) -> Result<()> {
    tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS forget_faces (id INTEGER PRIMARY KEY); DELETE FROM forget_faces;")?;
    let b = t.face_box.unwrap_or_default();
    let iou = iou_sql(["x", "y", "w", "h"], ["?2", "?3", "?4", "?5"]);
    tx.execute(
        &format!("INSERT INTO forget_faces (id) SELECT id FROM faces WHERE image_id = ?1 AND (?6 OR {iou} > ?7)"),
        params![t.image_id, b[0], b[1], b[2], b[3], t.face_box.is_none(), SAME_FACE_IOU],
    )?;
    Ok(())
}

/// The crops match runs wrote of the faces in `forget_faces`.
fn written_crops(tx: &Transaction) -> Result<Vec<WrittenCrop>> {
    let mut stmt = tx.prepare(
        "SELECT DISTINCT m.out_dir, r.crop_path FROM match_results r JOIN match_runs m ON m.run_id = r.run_id
         WHERE r.crop_path IS NOT NULL AND r.face_id IN (SELECT id FROM forget_faces) ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map([], |r| Ok(WrittenCrop { out_dir: r.get("out_dir")?, name: r.get("crop_path")? }))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The crops that forgetting `target` will remove (for the caller to remove first: a run killed
/// after that and before the database commit just forgets again).
pub fn crops_of(conn: &mut Connection, target: &Target) -> Result<Vec<WrittenCrop>> {
    let tx = conn.transaction()?;
    select_faces(&tx, target)?;
    let crops = written_crops(&tx)?;
    tx.rollback()?;
    Ok(crops)
}

/// The faces forgetting `target` erases (of every detector).
pub fn faces_of(conn: &mut Connection, target: &Target) -> Result<BTreeSet<i64>> {
    let tx = conn.transaction()?;
    select_faces(&tx, target)?;
    let faces = {
        let mut stmt = tx.prepare("SELECT id FROM forget_faces")?;
        let ids = stmt.query_map([], |r| r.get::<_, i64>("id"))?;
        ids.collect::<rusqlite::Result<BTreeSet<i64>>>()?
    };
    tx.rollback()?;
    Ok(faces)
}

/// How much one forget erased.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Erased {
    pub faces: usize,
    pub embeddings: usize,
    pub references: usize,
    pub match_results: usize,
    pub decisions: usize,
}

impl std::ops::AddAssign for Erased {
    fn add_assign(&mut self, o: Erased) {
        self.faces += o.faces;
        self.embeddings += o.embeddings;
        self.references += o.references;
        self.match_results += o.match_results;
        self.decisions += o.decisions;
    }
}

/// Erases the faces `target` names and every row derived from them, and records the request
/// so that `index` never stores them again. One transaction: all of it or nothing.
pub fn erase(conn: &mut Connection, target: &Target) -> Result<Erased> {
    // Deleted content is overwritten with zeros in the pages that held it (VACUUM then drops
    // the free pages; see `compact`).
    conn.pragma_update(None, "secure_delete", "ON")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    select_faces(&tx, target)?;
    let references = erase_references(&tx, target)?;
    let match_results = tx.execute("DELETE FROM match_results WHERE face_id IN (SELECT id FROM forget_faces)", [])?;
    tx.execute("UPDATE match_results SET runner_up_face_id = NULL WHERE runner_up_face_id IN (SELECT id FROM forget_faces)", [])?;
    tx.execute("DELETE FROM selection WHERE face_id IN (SELECT id FROM forget_faces)", [])?;
    let decisions = tx.execute("DELETE FROM decisions WHERE face_id IN (SELECT id FROM forget_faces)", [])?;
    tx.execute("DELETE FROM person_faces WHERE face_id IN (SELECT id FROM forget_faces)", [])?;
    // The waiting faces' remembered neighbour counts may include an erased face: counted again.
    tx.execute("DELETE FROM people_waiting", [])?;
    let embeddings = tx.execute("DELETE FROM embeddings WHERE face_id IN (SELECT id FROM forget_faces)", [])?;
    let faces = tx.execute("DELETE FROM faces WHERE id IN (SELECT id FROM forget_faces)", [])?;
    let erased = Erased { faces, embeddings, references, match_results, decisions };
    let b = target.face_box.map(|b| b.map(Some)).unwrap_or([None; 4]);
    tx.execute(
        "INSERT INTO forgotten (blake3, x, y, w, h, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![target.blake3, b[0], b[1], b[2], b[3], now_rfc3339()],
    )?;
    tx.execute("DELETE FROM forget_faces", [])?;
    tx.commit()?;
    Ok(erased)
}

/// Erases every stored face a `forgotten` row names, with the rows derived from it (`facedb
/// merge`: a face one shard forgot, which the target held already). Runs inside the caller's
/// transaction. Returns how many faces went.
pub fn erase_forgotten_faces(tx: &Connection) -> Result<usize> {
    tx.pragma_update(None, "secure_delete", "ON")?;
    tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS forget_faces (id INTEGER PRIMARY KEY); DELETE FROM forget_faces;")?;
    let iou = iou_sql(["fc.x", "fc.y", "fc.w", "fc.h"], ["fo.x", "fo.y", "fo.w", "fo.h"]);
    tx.execute(
        &format!(
            "INSERT OR IGNORE INTO forget_faces (id) SELECT fc.id FROM faces fc JOIN images i ON i.id = fc.image_id
             JOIN forgotten fo ON fo.blake3 = i.blake3 WHERE fo.w IS NULL OR {iou} > ?1"
        ),
        [SAME_FACE_IOU],
    )?;
    let faces: i64 = tx.query_row("SELECT count(*) FROM forget_faces", [], |r| r.get(0))?;
    if faces > 0 {
        tx.execute(
            "DELETE FROM refs WHERE blake3 IN (SELECT 'face:' || i.blake3 || ':' || fc.idx FROM faces fc JOIN images i ON i.id = fc.image_id
                                              WHERE fc.id IN (SELECT id FROM forget_faces))
                OR blake3 IN (SELECT blake3 FROM forgotten WHERE w IS NULL)",
            [],
        )?;
        for table in ["match_results", "selection", "decisions", "person_faces", "embeddings"] {
            tx.execute(&format!("DELETE FROM {table} WHERE face_id IN (SELECT id FROM forget_faces)"), [])?;
        }
        tx.execute("UPDATE match_results SET runner_up_face_id = NULL WHERE runner_up_face_id IN (SELECT id FROM forget_faces)", [])?;
        tx.execute("DELETE FROM people_waiting", [])?;
        tx.execute("DELETE FROM faces WHERE id IN (SELECT id FROM forget_faces)", [])?;
    }
    tx.execute("DELETE FROM forget_faces", [])?;
    Ok(faces as usize)
}

/// References made from the forgotten faces: a stored face used as `face:ID` (keyed
/// `face:<photo blake3>:<idx>`), and the photo given as `--ref` (its largest face, when that is
/// the one forgotten).
fn erase_references(tx: &Transaction, t: &Target) -> Result<usize> {
    let by_face = tx.execute(
        "DELETE FROM refs WHERE blake3 IN (SELECT 'face:' || i.blake3 || ':' || fc.idx FROM faces fc JOIN images i ON i.id = fc.image_id
                                          WHERE fc.id IN (SELECT id FROM forget_faces))",
        [],
    )?;
    let b = t.face_box.unwrap_or_default();
    let iou = iou_sql(["x", "y", "w", "h"], ["?2", "?3", "?4", "?5"]);
    let by_photo = tx.execute(
        &format!("DELETE FROM refs WHERE (blake3 = ?1 OR (?6 AND blake3 LIKE 'face:' || ?1 || ':%')) AND (?6 OR {iou} > ?7)"),
        params![t.blake3, b[0], b[1], b[2], b[3], t.face_box.is_none(), SAME_FACE_IOU],
    )?;
    Ok(by_face + by_photo)
}

/// Whether a face found in `image_id` at this box was forgotten (then `index` does not store it).
pub fn is_forgotten(conn: &Connection, image_id: i64, face_box: [f64; 4]) -> Result<bool> {
    let iou = iou_sql(["fo.x", "fo.y", "fo.w", "fo.h"], ["?2", "?3", "?4", "?5"]);
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM forgotten fo JOIN images i ON i.blake3 = fo.blake3
                        WHERE i.id = ?1 AND (fo.w IS NULL OR {iou} > ?6))"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![image_id, face_box[0], face_box[1], face_box[2], face_box[3], SAME_FACE_IOU], |r| r.get(0))?)
}

/// Rewrites the database without its free pages and folds the write-ahead log back and empties
/// it, so no erased byte is left in the file or in its `-wal`. Fails (with the reason) while
/// another process reads the database, since the log cannot be emptied under a reader.
pub fn compact(conn: &Connection) -> Result<()> {
    conn.execute_batch("VACUUM")?;
    let (busy, _, _): (i64, i64, i64) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if busy != 0 {
        anyhow::bail!("another facedb is reading the database, so its write-ahead log still holds erased bytes; run `facedb forget` again when it has finished");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_overlapping_by_more_than_half_are_the_same_face() -> Result<()> {
        let conn = Connection::open_in_memory()?;
        let iou = |a: [f64; 4], b: [f64; 4]| -> Result<f64> {
            let sql = format!("SELECT {}", iou_sql(["?1", "?2", "?3", "?4"], ["?5", "?6", "?7", "?8"]));
            Ok(conn.query_row(&sql, params![a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]], |r| r.get(0))?)
        };
        assert!((iou([0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0])? - 1.0).abs() < 1e-9);
        assert!((iou([0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 10.0])? - 50.0 / 150.0).abs() < 1e-9);
        assert_eq!(iou([0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 10.0, 10.0])?, 0.0);
        // A box moved by a few pixels (another detector) is still the same face.
        assert!(iou([100.0, 100.0, 80.0, 90.0], [104.0, 97.0, 78.0, 92.0])? > SAME_FACE_IOU);
        Ok(())
    }
}
