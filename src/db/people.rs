//! People (migration 0009): faces grouped without a reference by `facedb people`, named, merged
//! and corrected by the user, and used as references by `match --person`.

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use super::{blob_to_vector, now_rfc3339};

/// A face the clustering sees: its vector and what decides whether it may seed a person.
pub struct StoredFace {
    pub face_id: i64,
    pub vector: Vec<f32>,
    pub size_px: f32,
    pub sharpness: f32,
    pub score: f32,
    pub person: Option<i64>,
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
pub fn faces(conn: &Connection, embedder_id: i64) -> Result<Vec<StoredFace>> {
    let mut stmt = conn.prepare(
        "SELECT fc.id, e.vector, fc.size_px, fc.sharpness, fc.score, pf.person_id FROM faces fc
         JOIN images i ON i.id = fc.image_id AND i.detector_id = fc.detector_id
         JOIN embeddings e ON e.face_id = fc.id AND e.model_id = ?1
         LEFT JOIN person_faces pf ON pf.face_id = fc.id
         WHERE EXISTS (SELECT 1 FROM files p WHERE p.image_id = fc.image_id AND p.missing = 0) ORDER BY fc.id",
    )?;
    let rows = stmt.query_map([embedder_id], |r| {
        Ok((
            r.get::<_, i64>("id")?,
            r.get::<_, Vec<u8>>("vector")?,
            r.get::<_, f32>("size_px")?,
            r.get::<_, f32>("sharpness")?,
            r.get::<_, f32>("score")?,
            r.get::<_, Option<i64>>("person_id")?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (face_id, blob, size_px, sharpness, score, person) = row?;
        // A damaged vector (wrong length) is left out of people, as match leaves it out.
        if let Some(vector) = blob_to_vector(&blob).filter(|v| v.iter().all(|x| x.is_finite())) {
            out.push(StoredFace { face_id, vector, size_px, sharpness, score, person });
        }
    }
    Ok(out)
}

/// Stores faces joining existing people and new people (lists of face ids); one transaction.
pub fn store(conn: &mut Connection, assigned: &[(i64, i64)], new_people: &[Vec<i64>]) -> Result<()> {
    let tx = conn.transaction()?;
    for (face, person) in assigned {
        tx.execute("INSERT INTO person_faces (face_id, person_id, source) VALUES (?1, ?2, 'assigned')", params![face, person])?;
    }
    for faces in new_people {
        tx.execute("INSERT INTO people (created_at) VALUES (?1)", [now_rfc3339()])?;
        let person = tx.last_insert_rowid();
        for face in faces {
            tx.execute("INSERT INTO person_faces (face_id, person_id, source) VALUES (?1, ?2, 'cluster')", params![face, person])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A person with a few faces to look at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PersonRow {
    pub person_id: i64,
    pub name: Option<String>,
    pub faces: i64,
    /// Up to 5 of its faces (the largest): (face id, photo path).
    pub sample: Vec<(i64, Option<String>)>,
}

/// Every person, biggest first.
pub fn list(conn: &Connection) -> Result<Vec<PersonRow>> {
    let mut stmt = conn.prepare("SELECT person_id, name, faces FROM people_v")?;
    let people = stmt
        .query_map([], |r| {
            Ok(PersonRow { person_id: r.get("person_id")?, name: r.get("name")?, faces: r.get("faces")?, sample: Vec::new() })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut sample = conn.prepare(
        "SELECT v.face_id, v.path FROM face_people_v v JOIN faces fc ON fc.id = v.face_id WHERE v.person_id = ?1 ORDER BY fc.size_px DESC LIMIT 5",
    )?;
    people
        .into_iter()
        .map(|mut p| {
            p.sample = sample.query_map([p.person_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
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
    Ok(())
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
