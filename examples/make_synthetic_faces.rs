//! Adds N synthetic photos, each with one face, a random unit embedding and a random face hash,
//! to an indexed facedb database, to benchmark `match` (and `match --best`) at scale.
//!     cargo run --release --example make_synthetic_faces -- DATASET_DIR N

use rusqlite::params;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("usage: make_synthetic_faces DATASET_DIR N"))?);
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let db = facedb::db::Db::open(&dir.join(facedb::db::DB_FILE))?;
    let conn = &db.conn;
    // A bench set only (never facedb's own settings): a 2 GB page cache keeps the growing b-trees
    // in memory, and a rollback journal without syncs writes each page once instead of through a
    // WAL as big as the database. A crash loses the set, which is rebuilt from scratch anyway.
    conn.pragma_update(None, "journal_mode", "DELETE")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -2_000_000)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let (run_id, detector_id, embedder_id): (i64, i64, i64) =
        conn.query_row("SELECT id, detector_id, embedder_id FROM runs WHERE command = 'index' ORDER BY id LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    // Run again on the same dataset, it adds N more faces (new names, other vectors).
    let start: u64 = conn.query_row("SELECT count(*) FROM images WHERE blake3 LIKE 'synthetic%'", [], |r| r.get(0))?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ start.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let tx = conn.unchecked_transaction()?;
    {
        let mut image = tx.prepare("INSERT INTO images (blake3, size_bytes, width, height, format, orientation, status, detector_id, run_id, created_at) VALUES (?1, 1000, 4000, 3000, 'jpeg', 1, 'ok', ?2, ?3, '')")?;
        let mut face = tx.prepare("INSERT INTO faces (image_id, detector_id, idx, x, y, w, h, score, landmarks_json, size_px, sharpness, yaw, roll, brightness, face_hash) VALUES (?1, ?2, 0, 100, 100, 200, 250, 0.9, '[[0,0],[1,0],[0,1],[0,2],[1,2]]', 200, 150, 0, 0, 120, ?3)")?;
        let mut emb = tx.prepare("INSERT INTO embeddings (face_id, model_id, vector) VALUES (?1, ?2, ?3)")?;
        let mut file = tx.prepare("INSERT INTO files (path, image_id, size, mtime_ns, inode, checked_ns, first_run, last_run) VALUES (?1, ?2, 1000, 0, 0, 0, ?3, ?3)")?;
        for i in start..start + n {
            image.execute(params![format!("synthetic{i:016x}"), detector_id, run_id])?;
            let image_id = tx.last_insert_rowid();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            face.execute(params![image_id, detector_id, seed as i64])?;
            let face_id = tx.last_insert_rowid();
            let mut v = [0f32; 128];
            for x in v.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *x = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            facedb::models::sface::normalize(&mut v);
            emb.execute(params![face_id, embedder_id, facedb::db::vector_to_blob(&v)])?;
            file.execute(params![format!("synthetic/{i:07}.jpg"), image_id, run_id])?;
        }
    }
    tx.commit()?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    println!("added {n} synthetic faces to {}", dir.display());
    Ok(())
}
