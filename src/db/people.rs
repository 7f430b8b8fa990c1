//! People (migration 0009): faces grouped without a reference by `facedb people`, named, merged
//! and corrected by the user, and used as references by `match --person`.

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use super::now_rfc3339;
use crate::cluster::Target;

/// A face the clustering sees: what decides whether it may seed a person, and where it is.
pub struct StoredFace {
    pub face_id: i64,
    pub size_px: f32,
    pub sharpness: f32,
    pub score: f32,
    pub person: Option<i64>,
    /// Close neighbours among the waiting faces, remembered by the run that left it waiting.
    pub waiting: Option<u32>,
}

/// The faces with their vectors in one row-major matrix (`dim` values a face), read straight
/// from the rows (no vector of its own per face: 100 000 faces are 51 MB once, not twice).
pub struct StoredFaces {
    pub faces: Vec<StoredFace>,
    pub vectors: Vec<f32>,
    pub dim: usize,
}

/// The embedder of the latest `index` (people are grouped by one embedder's vectors).
pub fn current_embedder(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn
        .query_row("SELECT embedder_id FROM runs WHERE command = 'index' AND embedder_id IS NOT NULL ORDER BY id DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Every current face (its image's detector, a present file) embedded by `embedder_id`.
pub fn faces(conn: &Connection, embedder_id: i64) -> Result<StoredFaces> {
    let mut stmt = conn.prepare(
        "SELECT fc.id, e.vector, fc.size_px, fc.sharpness, fc.score, pf.person_id, pw.neighbours FROM faces fc
         JOIN images i ON i.id = fc.image_id AND i.detector_id = fc.detector_id
         JOIN embeddings e ON e.face_id = fc.id AND e.model_id = ?1
         LEFT JOIN person_faces pf ON pf.face_id = fc.id LEFT JOIN people_waiting pw ON pw.face_id = fc.id
         WHERE EXISTS (SELECT 1 FROM files p WHERE p.image_id = fc.image_id AND p.missing = 0) ORDER BY fc.id",
    )?;
    let mut rows = stmt.query([embedder_id])?;
    let mut out = StoredFaces { faces: Vec::new(), vectors: Vec::new(), dim: 0 };
    while let Some(r) = rows.next()? {
        let blob = r.get_ref("vector")?.as_blob()?;
        if out.faces.is_empty() {
            out.dim = blob.len() / 4;
        }
        // A damaged vector (another length, not finite) is left out of people, as match leaves it out.
        let vector = blob.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        if blob.len() != out.dim * 4 || out.dim == 0 || !vector.clone().all(f32::is_finite) {
            continue;
        }
        out.vectors.extend(vector);
        out.faces.push(StoredFace {
            face_id: r.get("id")?,
            size_px: r.get("size_px")?,
            sharpness: r.get("sharpness")?,
            score: r.get("score")?,
            person: r.get("person_id")?,
            waiting: r.get("neighbours")?,
        });
    }
    Ok(out)
}

/// What the waiting faces' remembered counts were computed with (`meta` key `people_basis`):
/// counts made with another embedder, distance or minimum are not used.
pub fn waiting_basis(conn: &Connection) -> Result<(Option<String>, usize)> {
    let basis = conn.query_row("SELECT value FROM meta WHERE key = 'people_basis'", [], |r| r.get(0)).optional()?;
    let rows: i64 = conn.query_row("SELECT count(*) FROM people_waiting", [], |r| r.get(0))?;
    Ok((basis, rows as usize))
}

/// What one grouping run decided, in face ids.
pub struct Changes {
    pub assigned: Vec<(i64, Target)>,
    pub new_people: Vec<Vec<i64>>,
    /// Waiting faces with a new or changed neighbour count.
    pub waiting: Vec<(i64, u32)>,
    /// The remembered counts were not used: replace them all.
    pub reset_waiting: bool,
    pub basis: String,
}

/// Stores faces joining people, new people and the waiting faces' counts; one transaction.
pub fn store(conn: &mut Connection, c: &Changes) -> Result<()> {
    let tx = conn.transaction()?;
    if c.reset_waiting {
        tx.execute("DELETE FROM people_waiting", [])?;
    }
    let mut ids = Vec::with_capacity(c.new_people.len());
    for faces in &c.new_people {
        tx.execute("INSERT INTO people (created_at) VALUES (?1)", [now_rfc3339()])?;
        let person = tx.last_insert_rowid();
        ids.push(person);
        for face in faces {
            join(&tx, *face, person, "cluster")?;
        }
    }
    for &(face, target) in &c.assigned {
        let person = match target {
            Target::Existing(id) => id,
            Target::New(k) => *ids.get(k).with_context(|| format!("face {face} joins new person {k}, which the plan does not hold"))?,
        };
        join(&tx, face, person, "assigned")?;
    }
    let mut upsert = tx.prepare_cached("INSERT OR REPLACE INTO people_waiting (face_id, neighbours) VALUES (?1, ?2)")?;
    for (face, n) in &c.waiting {
        upsert.execute(params![face, n])?;
    }
    drop(upsert);
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('people_basis', ?1)", [&c.basis])?;
    tx.commit()?;
    Ok(())
}

fn join(tx: &Connection, face: i64, person: i64, source: &str) -> Result<()> {
    tx.prepare_cached("INSERT INTO person_faces (face_id, person_id, source) VALUES (?1, ?2, ?3)")?
        .execute(params![face, person, source])?;
    tx.prepare_cached("DELETE FROM people_waiting WHERE face_id = ?1")?.execute([face])?;
    Ok(())
}

/// A person with a few faces to look at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PersonRow {
    pub person_id: i64,
    pub name: Option<String>,
    pub faces: i64,
    /// Some of its faces (the largest): (face id, photo path).
    pub sample: Vec<(i64, Option<String>)>,
}

/// Every person, biggest first, with up to `per_person` of its largest faces.
pub fn list(conn: &Connection, per_person: usize) -> Result<Vec<PersonRow>> {
    let mut stmt = conn.prepare("SELECT person_id, name, faces FROM people_v")?;
    let people = stmt
        .query_map([], |r| {
            Ok(PersonRow { person_id: r.get("person_id")?, name: r.get("name")?, faces: r.get("faces")?, sample: Vec::new() })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut sample = conn.prepare(
        "SELECT v.face_id, v.path FROM face_people_v v JOIN faces fc ON fc.id = v.face_id WHERE v.person_id = ?1 ORDER BY fc.size_px DESC, v.face_id LIMIT ?2",
    )?;
    people
        .into_iter()
        .map(|mut p| {
            p.sample = sample
                .query_map(params![p.person_id, per_person as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(p)
        })
        .collect()
}

fn require_person(conn: &Connection, id: i64) -> Result<()> {
    let exists: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM people WHERE id = ?1)", [id], |r| r.get(0))?;
    if !exists {
        bail!("no person {id}; see `facedb people` for their ids");
    }
    Ok(())
}

pub fn name(conn: &Connection, id: i64, name: &str) -> Result<()> {
    require_person(conn, id)?;
    let taken: Option<i64> = conn.query_row("SELECT id FROM people WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    if let Some(other) = taken.filter(|&o| o != id) {
        bail!("person {other} is already named {name:?}; merge them (`facedb people merge {other} {id}`) or choose another name");
    }
    conn.execute("UPDATE people SET name = ?2 WHERE id = ?1", params![id, name])?;
    Ok(())
}

/// Moves every face of `from` into `into` and removes `from` (its name goes when `into` has one).
pub fn merge(conn: &mut Connection, into: i64, from: i64) -> Result<usize> {
    require_person(conn, into)?;
    require_person(conn, from)?;
    if into == from {
        bail!("person {into} cannot be merged into itself; pass two different ids");
    }
    let tx = conn.transaction()?;
    let moved = tx.execute("UPDATE person_faces SET person_id = ?1 WHERE person_id = ?2", params![into, from])?;
    let from_name: Option<String> = tx.query_row("SELECT name FROM people WHERE id = ?1", [from], |r| r.get(0))?;
    tx.execute("DELETE FROM people WHERE id = ?1", [from])?;
    tx.execute("UPDATE people SET name = coalesce(name, ?2) WHERE id = ?1", params![into, from_name])?;
    tx.commit()?;
    Ok(moved)
}

/// Puts a face in a person (the user's choice: a later `facedb people` keeps it there).
pub fn move_face(conn: &Connection, face_id: i64, person: i64) -> Result<()> {
    require_person(conn, person)?;
    let face: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM faces WHERE id = ?1)", [face_id], |r| r.get(0))?;
    if !face {
        bail!("no face {face_id}; see `facedb info PHOTO` or `facedb sql \"SELECT * FROM face_people_v\"`");
    }
    conn.execute(
        "INSERT INTO person_faces (face_id, person_id, source) VALUES (?1, ?2, 'user')
         ON CONFLICT (face_id) DO UPDATE SET person_id = excluded.person_id, source = 'user'",
        params![face_id, person],
    )?;
    // A face placed by hand may be a waiting face's neighbour: the remembered counts assume
    // none is next to a person, so the next run counts again.
    conn.execute("DELETE FROM people_waiting", [])?;
    Ok(())
}

/// Puts these faces in a new person (the user's choice, as `move_face`); a person they leave
/// empty and unnamed goes. Returns the new person's id.
pub fn split(conn: &mut Connection, faces: &[i64]) -> Result<i64> {
    let tx = conn.transaction()?;
    for face in faces {
        let known: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM faces WHERE id = ?1)", [face], |r| r.get(0))?;
        if !known {
            bail!("no face {face}; see `facedb sql \"SELECT * FROM face_people_v\"` for face ids");
        }
    }
    tx.execute("INSERT INTO people (created_at) VALUES (?1)", [now_rfc3339()])?;
    let person = tx.last_insert_rowid();
    for face in faces {
        tx.execute(
            "INSERT INTO person_faces (face_id, person_id, source) VALUES (?1, ?2, 'user')
             ON CONFLICT (face_id) DO UPDATE SET person_id = excluded.person_id, source = 'user'",
            params![face, person],
        )?;
    }
    tx.execute("DELETE FROM people WHERE name IS NULL AND NOT EXISTS (SELECT 1 FROM person_faces pf WHERE pf.person_id = people.id)", [])?;
    // As with a move: a face placed by hand may be a waiting face's neighbour.
    tx.execute("DELETE FROM people_waiting", [])?;
    tx.commit()?;
    Ok(person)
}

/// Removes a person (`facedb forget --person`, after its faces are erased): its name goes too.
pub fn remove(conn: &Connection, name: &str) -> Result<()> {
    let id = person_id(conn, name)?;
    conn.execute("DELETE FROM person_faces WHERE person_id = ?1", [id])?;
    conn.execute("DELETE FROM people WHERE id = ?1", [id])?;
    Ok(())
}

/// The faces of the person named `name` (or with this id), to use as references.
pub fn faces_of(conn: &Connection, name: &str) -> Result<Vec<i64>> {
    let id = person_id(conn, name)?;
    let mut stmt = conn.prepare("SELECT face_id FROM person_faces WHERE person_id = ?1 ORDER BY face_id")?;
    let faces = stmt.query_map([id], |r| r.get(0))?.collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(faces)
}

fn person_id(conn: &Connection, name: &str) -> Result<i64> {
    let id: Option<i64> = conn
        .query_row("SELECT id FROM people WHERE name = ?1 OR (?2 IS NOT NULL AND id = ?2)", params![name, name.parse::<i64>().ok()], |r| {
            r.get(0)
        })
        .optional()?;
    id.with_context(|| format!("no person named {name:?}; name one with `facedb people name ID {name:?}` (ids: `facedb people`)"))
}
