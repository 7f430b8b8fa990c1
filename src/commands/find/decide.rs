//! `match`'s decision step: the stored vectors (through the validated cache), one decision per
//! photo (or per face with `--all`), the user's curation applied, and what the later steps list.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use rusqlite::Connection;

use super::curation::{self, Curated};
use super::references::Refs;
use super::{best, output, Ctx, RunIds};
use crate::db::{read, vectors};
use crate::matching::{self, Decision, FaceRow, Filters, Options, Reason};
use crate::output::OutputDir;

/// Rejected photos farther than this beyond the threshold are counted but not listed in
/// `rejected.csv` or stored as match results.
pub const NEAR_MISS_BAND: f32 = 0.10;
/// `--dry-run` lists photos this close to the threshold on either side.
pub(super) const DRY_RUN_BAND: f32 = 0.05;
// What a match lists or stores must lie where `matching` computes distances exactly.
const _: () = assert!(NEAR_MISS_BAND < crate::matching::EXACT_BAND && DRY_RUN_BAND < crate::matching::EXACT_BAND);

/// Every decision of the run and what the later steps need to list and crop them.
pub(super) struct Decided {
    pub decisions: Vec<Decision>,
    /// Photos too far to list or store, counted with their distances (not in `decisions`).
    pub far: matching::FarPhotos,
    pub curated: Curated,
    /// Decisions about faces this run considered (not about faces re-detected or gone since).
    pub applied: usize,
    /// The matched faces' embeddings, for `--best` (empty without it).
    pub best_vectors: HashMap<i64, Vec<f32>>,
    pub cache_refresh: vectors::Refresh,
    /// image id -> path, for the photos that get listed.
    pub paths: HashMap<i64, String>,
    /// face id -> stored quality, for the faces that get listed.
    pub quality: HashMap<i64, FaceRow>,
    /// `--all` without a reference has no distances.
    pub has_distances: bool,
}

impl Decided {
    /// The distance as recorded: none when there was nothing to measure against.
    pub fn distance_of(&self, d: &Decision) -> Option<f32> {
        self.has_distances.then_some(d.distance)
    }
}

pub(super) fn decide(conn: &Connection, ctx: &Ctx, ids: &RunIds, refs: &Refs, out: Option<&OutputDir>) -> Result<Decided> {
    let args = &ctx.args;
    let pos_vecs = refs.positive_vectors();
    let mut neg_vecs = refs.negative_vectors();
    let mut curated = curation::load(conn, out, &curation::person_of(&refs.positives), ids.embedder)?;
    neg_vecs.extend(curated.negatives.iter().cloned());
    let opts = Options {
        threshold: args.threshold,
        combine: args.combine,
        filters: ctx.filters,
        allow_ambiguous: args.allow_ambiguous,
        expand: args.expand,
    };
    // --dry-run writes nothing, not even the vector cache: a stale one is rebuilt in a temporary file.
    let cache_write = if args.dry_run { vectors::CacheWrite::Temporary } else { vectors::CacheWrite::Save };
    let timer = Timer::from_env();
    // The face records stay on disk: `decide_counting_far` streams them (`--all` lists every face).
    let mut matrix = vectors::open(conn, &ctx.db_file, ids.embedder.id.0, ids.embedder.dim, cache_write)?;
    timer.lap("vector cache loaded");
    if let Some(w) = matrix.warning.as_deref().filter(|_| !ctx.globals.quiet) {
        eprintln!("warning: {w}");
    }
    let (mut decisions, face_rows, far, applied, index_of) = if args.all {
        matrix.faces = matrix.vectors.faces()?;
        let (decisions, faces) = decide_all(conn, &mut matrix, &pos_vecs, &ctx.filters, &curated.excluded)?;
        let applied = faces.iter().filter(|f| curated.excluded.contains(&f.face_id)).count();
        let index_of = matrix.faces.iter().enumerate().map(|(i, f)| (f.face_id, i)).collect();
        (decisions, faces, matching::FarPhotos::default(), applied, index_of)
    } else {
        // Far photos are counted, except those of crops an earlier run wrote (their reason is reported).
        let keep: HashSet<i64> = out.map(|o| o.owned().filter_map(curation::face_in_name).collect()).unwrap_or_default();
        let refs = (&pos_vecs[..], &neg_vecs[..]);
        let mut records = matrix.vectors.records()?;
        let c = matching::decide_counting_far(&mut records, &mut matrix.vectors, refs, &opts, &curated.excluded, &keep)?;
        let index_of = c.rows.iter().map(|(&id, &(i, _))| (id, i)).collect();
        (c.decisions, c.rows.into_values().map(|(_, f)| f).collect(), c.far, c.rejected_faces, index_of)
    };
    timer.lap("decided");
    // --best needs the matched faces' vectors, still in the matrix.
    let best_vectors = match args.best {
        Some(_) => best::matched_vectors(&mut matrix.vectors, &index_of, &decisions)?,
        None => HashMap::new(),
    };
    // A deleted crop means "not this picture": its copies (a re-encode, a resized copy) stay out too.
    let mut copies: Vec<i64> = curation::copies_of_deleted(conn, &curated, &decisions, ids.embedder)?.into_iter().collect();
    copies.retain(|copy| !curated.excluded.contains(copy));
    copies.sort_unstable();
    for &copy in &copies {
        if let Some(d) = decisions.iter_mut().find(|d| d.face_id == copy) {
            d.reason = Some(Reason::RejectedByUser);
        }
    }
    curated.copies_of_deleted = copies;
    let cache_refresh = matrix.refresh();
    drop(matrix);
    // Every photo is kept at such a threshold (`decide_counting_far`), so this sees them all.
    if args.threshold > matching::SUSPICIOUS_THRESHOLD && !pos_vecs.is_empty() && !ctx.globals.quiet {
        warn_similarity_threshold(&decisions, args.threshold);
    }
    output::reject_smaller_than_size(conn, &mut decisions, &ctx.spec)?;
    let (paths, quality) = listed(conn, &decisions, face_rows, args.threshold, args.dry_run)?;
    timer.lap("listed");
    let has_distances = !(args.all && pos_vecs.is_empty());
    Ok(Decided { decisions, far, curated, applied, best_vectors, cache_refresh, paths, quality, has_distances })
}

/// A threshold high enough to be a similarity given by mistake.
fn warn_similarity_threshold(decisions: &[Decision], threshold: f32) {
    let best: Vec<f32> = decisions.iter().map(|d| d.distance).collect();
    let gap = matching::widest_gap(&best)
        .map(|(a, b)| format!("; this run's distances have their widest gap between {a:.2} and {b:.2}"))
        .unwrap_or_default();
    eprintln!(
        "warning: --threshold {threshold} is a cosine distance (0 = the same face, 1 = unrelated), not a similarity: at {threshold} nearly anyone matches (the default is {}){gap}",
        matching::DEFAULT_THRESHOLD
    );
}

/// Paths of the photos and quality rows of the faces that get listed (recorded, or near the
/// threshold in a dry run): a million-entry map costs more than the match.
fn listed(
    conn: &Connection,
    decisions: &[Decision],
    face_rows: Vec<FaceRow>,
    threshold: f32,
    dry_run: bool,
) -> Result<(HashMap<i64, String>, HashMap<i64, FaceRow>)> {
    let recorded: Vec<&Decision> = decisions.iter().filter(|d| is_recorded(d, threshold)).collect();
    let mut wanted_paths: Vec<i64> = recorded.iter().map(|d| d.image_id).collect();
    if dry_run {
        wanted_paths.extend(decisions.iter().filter(|d| (d.distance - threshold).abs() <= DRY_RUN_BAND).map(|d| d.image_id));
    }
    let paths = read::paths_of_images(conn, &wanted_paths)?;
    let listed: HashSet<i64> = recorded
        .iter()
        .map(|d| d.face_id)
        .chain(dry_run.then_some(decisions).into_iter().flatten().filter(|d| d.distance <= threshold).map(|d| d.face_id))
        .collect();
    let quality = face_rows.into_iter().filter(|f| listed.contains(&f.face_id)).map(|f| (f.face_id, f)).collect();
    Ok((paths, quality))
}

/// Photos far beyond the threshold are counted, not listed: at a million photos one row each
/// per run would dwarf everything else, and they say nothing a threshold change would need.
pub(super) fn is_recorded(d: &Decision, threshold: f32) -> bool {
    d.reason != Some(Reason::TooFar) || d.distance <= threshold + NEAR_MISS_BAND
}

/// `--all`: every face is its own decision (distance to the references if any were given).
fn decide_all(
    conn: &Connection,
    matrix: &mut vectors::FaceMatrix,
    refs: &[Vec<f32>],
    filters: &Filters,
    rejected: &HashSet<i64>,
) -> Result<(Vec<Decision>, Vec<FaceRow>)> {
    let (nearest, _) = matching::distances(&mut matrix.vectors, refs, &[])?;
    let embedded: HashMap<i64, f32> = matrix.faces.iter().zip(nearest).map(|(f, d)| (f.face_id, d)).collect();
    let faces = read::all_faces(conn)?;
    let decisions = faces
        .iter()
        .map(|f| {
            let distance = embedded.get(&f.face_id).copied().filter(|d| d.is_finite()).unwrap_or(f32::NAN);
            let reason = if rejected.contains(&f.face_id) { Some(Reason::RejectedByUser) } else { filters.reject(f) };
            Decision {
                image_id: f.image_id,
                face_id: f.face_id,
                distance,
                runner_up: None,
                negative_distance: None,
                ambiguous: false,
                same_face_copies: 0,
                pass: 1,
                reason,
            }
        })
        .collect();
    Ok((decisions, faces))
}

/// Stage times on stderr when `FACEDB_TIMINGS` is set, to see where a match spends its time.
struct Timer(Option<std::time::Instant>);

impl Timer {
    fn from_env() -> Self {
        Timer(std::env::var_os("FACEDB_TIMINGS").map(|_| std::time::Instant::now()))
    }

    fn lap(&self, what: &str) {
        if let Some(t) = self.0 {
            eprintln!("timing: {what} at {:.3} s", t.elapsed().as_secs_f64());
        }
    }
}
