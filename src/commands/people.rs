//! `facedb people [DIR]`: every stored face grouped into people without a reference
//! (src/cluster.rs), incrementally; `people name|merge|move` let the user correct and name them;
//! `people sheet` writes an HTML page of them (people_sheet.rs); `match --person NAME` uses a
//! person's faces as references.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use rusqlite::Connection;

use super::{find_dataset, open_database, outln, Globals};
use crate::cli::{MatchArgs, PeopleAction, PeopleArgs};
use crate::cluster::{self, Faces, Params, Plan};
use crate::db::people::{self, StoredFace, StoredFaces};
use crate::pipeline::quality::BLURRY;
use crate::util::display_str;

/// Faces smaller than this (shorter side, px) do not seed a person (match's --min-face default).
const SEED_MIN_SIZE: f32 = 40.0;
/// Faces detected less clearly than this do not seed a person: a clear face scores 0.85 and
/// more, correct small faces 0.6-0.75 (README), and a detection that is no face scores low.
const SEED_MIN_SCORE: f32 = 0.7;

pub fn run(globals: &Globals, args: PeopleArgs) -> Result<ExitCode> {
    match args.action {
        None => group(globals, args.dir, Params { distance: args.distance, min_neighbours: args.min_neighbours as usize }),
        Some(PeopleAction::Name { id, name, dir }) => {
            let db = open(globals, dir)?;
            people::name(&db.conn, id, &name)?;
            done(globals, &format!("person {id} is {name}"))
        }
        Some(PeopleAction::Merge { into, from, dir }) => {
            let mut db = open(globals, dir)?;
            let moved = people::merge(&mut db.conn, into, from)?;
            done(globals, &format!("{moved} face(s) of person {from} moved into person {into}; person {from} is gone"))
        }
        Some(PeopleAction::Split { faces, dir }) => {
            let mut db = open(globals, dir)?;
            let person = people::split(&mut db.conn, &faces)?;
            done(globals, &format!("{} face(s) are person {person} now (kept there by later runs)", faces.len()))
        }
        Some(PeopleAction::Sheet { out, faces, people, dir }) => {
            super::people_sheet::run(globals, super::people_sheet::SheetArgs { dir, out, faces: faces as usize, people: people as usize })
        }
        Some(PeopleAction::Move { face, person, dir }) => {
            let db = open(globals, dir)?;
            people::move_face(&db.conn, face, person)?;
            done(globals, &format!("face {face} is in person {person} now (kept there by later runs)"))
        }
    }
}

fn open(globals: &Globals, dir: Option<PathBuf>) -> Result<crate::db::Db> {
    let root = find_dataset(globals, dir.as_deref())?;
    open_database(globals, &root, true)
}

fn done(globals: &Globals, message: &str) -> Result<ExitCode> {
    if globals.json {
        outln!("{}", serde_json::json!({"command": "people", "done": message}));
    } else if !globals.quiet {
        eprintln!("{message}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What one grouping run did, for the summary.
#[derive(Debug, serde::Serialize)]
struct Summary {
    faces: usize,
    /// Faces already in a person: kept, not compared again among themselves.
    kept: usize,
    /// Faces no earlier run had seen (only these are compared against every face).
    new_faces: usize,
    /// Faces that joined a person by their close neighbours' vote.
    assigned: usize,
    /// Faces without a person after the vote (waiting ones and new ones), clustered together.
    clustered_among: usize,
    /// Waiting faces that became cores because new neighbours arrived.
    promoted: usize,
    new_people: usize,
    in_new_people: usize,
    waiting: usize,
    /// Pairs of faces compared (a run with nothing remembered compares every pair once).
    compared: u64,
    /// Whether the waiting faces' neighbour counts of the last run were used (false: counted again).
    remembered: bool,
    seconds: f64,
}

fn group(globals: &Globals, dir: Option<PathBuf>, params: Params) -> Result<ExitCode> {
    let started = Instant::now();
    let mut db = open(globals, dir)?;
    let Some(embedder) = people::current_embedder(&db.conn)? else {
        bail!("no faces are indexed yet; run `facedb index DIR` first");
    };
    let mut stored = people::faces(&db.conn, embedder)?;
    let basis = format!("embedder {embedder}, distance {}, min_neighbours {}", params.distance, params.min_neighbours);
    let remembered = trust_counts(&db.conn, &mut stored.faces, &basis)?;
    let plan = plan_for(&stored, params)?;
    let face = |i: usize| stored.faces[i].face_id;
    let ids = |idx: &[usize]| idx.iter().map(|&i| face(i)).collect::<Vec<i64>>();
    let changes = people::Changes {
        assigned: plan.assigned.iter().map(|&(i, t)| (face(i), t)).collect(),
        new_people: plan.new_people.iter().map(|g| ids(g)).collect(),
        waiting: plan.waiting_counts.iter().map(|&(i, n)| (face(i), n)).collect(),
        reset_waiting: !remembered,
        basis,
    };
    people::store(&mut db.conn, &changes)?;
    let summary = Summary {
        faces: stored.faces.len(),
        kept: stored.faces.iter().filter(|f| f.person.is_some()).count(),
        new_faces: plan.new_faces,
        assigned: changes.assigned.len(),
        clustered_among: plan.clustered_among,
        promoted: plan.promoted,
        new_people: changes.new_people.len(),
        in_new_people: changes.new_people.iter().map(Vec::len).sum(),
        waiting: plan.waiting,
        compared: plan.compared,
        remembered,
        seconds: started.elapsed().as_secs_f64(),
    };
    print(globals, &db.conn, &summary)?;
    Ok(ExitCode::SUCCESS)
}

/// The remembered neighbour counts are used only when made with these vectors and parameters
/// and when every remembered face is still a current waiting face (a face forgotten, moved by
/// hand or gone with its file changes its neighbours' counts); otherwise every face is counted.
fn trust_counts(conn: &Connection, stored: &mut [StoredFace], basis: &str) -> Result<bool> {
    let (stored_basis, rows) = people::waiting_basis(conn)?;
    let current = stored.iter().filter(|f| f.person.is_none() && f.waiting.is_some()).count();
    let trusted = stored_basis.as_deref() == Some(basis) && rows == current;
    if !trusted {
        stored.iter_mut().for_each(|f| f.waiting = None);
    }
    Ok(trusted)
}

fn plan_for(stored: &StoredFaces, params: Params) -> Result<Plan> {
    let faces = &stored.faces;
    let person: Vec<Option<i64>> = faces.iter().map(|f| f.person).collect();
    let waiting: Vec<Option<u32>> = faces.iter().map(|f| f.waiting).collect();
    let can_seed: Vec<bool> =
        faces.iter().map(|f| f.size_px >= SEED_MIN_SIZE && f.sharpness >= BLURRY && f.score >= SEED_MIN_SCORE).collect();
    cluster::plan(&Faces { vectors: &stored.vectors, dim: stored.dim, person: &person, can_seed: &can_seed, waiting: &waiting }, params)
}

fn print(globals: &Globals, conn: &Connection, s: &Summary) -> Result<()> {
    let list = people::list(conn, 5)?;
    if globals.json {
        outln!("{}", serde_json::json!({"command": "people", "summary": s, "people": list}));
        return Ok(());
    }
    if globals.quiet {
        return Ok(());
    }
    for p in &list {
        let sample: Vec<String> =
            p.sample.iter().map(|(id, path)| format!("{id} ({})", path.as_deref().map(display_str).unwrap_or_default())).collect();
        outln!("person {:>5}  {:<20} {:>6} faces  e.g. {}", p.person_id, p.name.as_deref().unwrap_or("-"), p.faces, sample.join(", "));
    }
    eprintln!(
        "{} faces ({} new): {} kept in their people, {} joined a person, {} new people ({} faces) clustered among {} ({} promoted), {} waiting for more photos; {} pairs compared ({:.2} s)",
        s.faces, s.new_faces, s.kept, s.assigned, s.new_people, s.in_new_people, s.clustered_among, s.promoted, s.waiting, s.compared, s.seconds
    );
    Ok(())
}

/// `match --person NAME`: the person's faces become `--ref face:ID` references.
pub fn add_person_refs(conn: &Connection, args: &mut MatchArgs) -> Result<()> {
    let Some(name) = &args.person else { return Ok(()) };
    let faces = people::faces_of(conn, name)?;
    if faces.is_empty() {
        bail!("person {name:?} has no faces left; run `facedb people` or pick another person");
    }
    args.refs.extend(faces.into_iter().map(|id| PathBuf::from(format!("face:{id}"))));
    Ok(())
}
