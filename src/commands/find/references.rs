//! `match`'s references: each photo (or stored face, `face:ID`) embedded once and kept in
//! `refs` by content hash, so a later run with the same references calls no model.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rusqlite::Connection;

use super::{Ctx, RunIds};
use crate::db::read::{self, RefRow};
use crate::db::write::{self, NewRef};
use crate::db::{decisions, LogLevel};
use crate::matching;
use crate::models::sface::SFace;
use crate::models::yunet::YuNet;
use crate::pipeline::detect::DetectParams;
use crate::pipeline::walk;
use crate::pipeline::{analyze, hash, largest, StageTimes};
use crate::util::{display_path, display_str, read_photo_file};

/// The run's references, positive (`--ref`) and negative (`--not`).
pub(super) struct Refs {
    pub positives: Vec<RefRow>,
    pub negatives: Vec<RefRow>,
    /// Detector and embedder calls this run made for new reference photos.
    pub model_calls: i64,
}

impl Refs {
    pub fn positive_vectors(&self) -> Vec<Vec<f32>> {
        self.positives.iter().map(|r| r.vector.clone()).collect()
    }

    pub fn negative_vectors(&self) -> Vec<Vec<f32>> {
        self.negatives.iter().map(|r| r.vector.clone()).collect()
    }
}

/// Loads (embedding new ones) every `--ref` and `--not`; refuses a run with no usable reference.
pub(super) fn load(conn: &Connection, ctx: &Ctx, ids: &RunIds) -> Result<Refs> {
    let quiet = ctx.globals.quiet;
    let mut loader = References { ids, decoders: &ctx.decoders, sessions: None, model_calls: 0, quiet };
    let positives = loader.load_all(conn, &ctx.args.refs, "--ref")?;
    let negatives = loader.load_all(conn, &ctx.args.negatives, "--not")?;
    if positives.is_empty() && !ctx.args.all {
        bail!("no usable reference face; pass --ref with a photo where the face is clearly visible and at least 40 px wide");
    }
    write::set_ref_model_calls(conn, ids.run_id, loader.model_calls)?;
    let refs = Refs { positives, negatives, model_calls: loader.model_calls };
    if !quiet {
        warn_odd_references(&refs.positives, &refs.positive_vectors(), ctx.args.threshold);
    }
    Ok(refs)
}

/// Loads reference embeddings, computing (and storing) each new reference photo's once.
struct References<'a> {
    ids: &'a RunIds,
    decoders: &'a crate::pipeline::decode::Decoders,
    sessions: Option<(YuNet, SFace)>,
    model_calls: i64,
    quiet: bool,
}

impl References<'_> {
    fn load_all(&mut self, conn: &Connection, args: &[PathBuf], flag: &str) -> Result<Vec<RefRow>> {
        let mut out: Vec<RefRow> = Vec::new();
        for arg in args {
            if arg.is_dir() {
                let (entries, _) = walk::walk(arg);
                if entries.is_empty() {
                    bail!("{flag} {}: the folder holds no photos", display_path(arg));
                }
                for e in entries {
                    match self.load(conn, &e.abs) {
                        Ok(r) => out.push(r),
                        Err(err) if !self.quiet => {
                            eprintln!("warning: skipping reference {}: {err:#}", display_path(&e.abs))
                        }
                        Err(_) => {}
                    }
                }
            } else if let Some(face_id) = face_ref(arg) {
                out.push(self.load_face(conn, face_id, flag)?);
            } else if arg.to_str().is_some_and(|a| a.starts_with("face:")) && !arg.exists() {
                bail!(
                    "{flag} {}: not a stored face; write face:ID with the face's number (face_id in manifest.csv, or `facedb info PHOTO`)",
                    display_path(arg)
                );
            } else {
                out.push(self.load(conn, arg)?);
            }
        }
        // The same photo given twice (or copied) counts once.
        let mut seen = HashSet::new();
        out.retain(|r| seen.insert(r.id));
        Ok(out)
    }

    /// A stored face as a reference (`face:ID`): its stored embedding, no model call. Stored in
    /// `refs` under the key `face:<photo blake3>:<face idx>`, which names the person in decisions.
    fn load_face(&mut self, conn: &Connection, face_id: i64, flag: &str) -> Result<RefRow> {
        let Some(key) = decisions::face_key(conn, face_id)? else {
            bail!("{flag} face:{face_id}: no such face; see the face_id column of manifest.csv or `facedb info PHOTO`");
        };
        if let Some(r) = read::find_ref(conn, &key, self.ids.detector_id, self.ids.embedder)? {
            return Ok(r);
        }
        let Some(vector) = decisions::face_vector(conn, face_id, self.ids.embedder)? else {
            bail!("{flag} face:{face_id}: the face has no embedding from the current model; run `facedb index` first");
        };
        decisions::insert_face_ref(conn, &key, face_id, (self.ids.detector_id, self.ids.embedder.id), &vector)?;
        read::find_ref(conn, &key, self.ids.detector_id, self.ids.embedder)?
            .ok_or_else(|| anyhow!("reference face:{face_id} was not stored"))
    }

    fn load(&mut self, conn: &Connection, path: &Path) -> Result<RefRow> {
        // Only a regular file under the size cap: a FIFO or /dev/zero is refused at once.
        let bytes = read_photo_file(path).context("reading a reference photo")?;
        let blake3 = hash::content_hash(&bytes);
        // Recorded by its real path (canonical, absolute) as given this time: the same content
        // passed from elsewhere later must not keep showing the path of its first use.
        let path_str = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_path_buf());
        let path_str = path_str.to_string_lossy().into_owned();
        if let Some(mut r) = read::find_ref(conn, &blake3, self.ids.detector_id, self.ids.embedder)? {
            if r.path != path_str {
                write::set_ref_path(conn, r.id, &path_str)?;
                r.path = path_str;
            }
            if r.faces_in_photo > 1 && !self.quiet {
                eprintln!("note: {} has {} faces; using the largest", display_path(path), r.faces_in_photo);
            }
            return Ok(r);
        }
        if self.sessions.is_none() {
            let models = self.ids.files.load()?;
            self.sessions = Some((models.detector()?, models.embedder()?));
        }
        let Some((detector, embedder)) = self.sessions.as_mut() else { bail!("model sessions unavailable") };
        let img = analyze(&bytes, self.decoders, detector, embedder, &DetectParams::default(), &mut StageTimes::default())
            .with_context(|| format!("reference photo {}", display_path(path)))?;
        self.model_calls += i64::from(img.detector_calls + img.embedder_calls);
        let Some(face) = largest(&img.faces) else {
            bail!("no face found in {}; pass a photo where the face is clearly visible and at least 40 px wide", display_path(path));
        };
        let Some(vector) = face.embedding else {
            bail!("the face in {} could not be aligned (landmarks degenerate); pass a clearer, more frontal photo", display_path(path));
        };
        if img.faces.len() > 1 && !self.quiet {
            eprintln!(
                "note: {} has {} faces; using the largest ({}x{} px)",
                display_path(path),
                img.faces.len(),
                face.detection.w.round(),
                face.detection.h.round()
            );
        }
        let new = NewRef {
            blake3: &blake3,
            path: &path_str,
            width: img.width,
            height: img.height,
            faces_in_photo: img.faces.len(),
            face,
            vector: &vector,
        };
        write::insert_ref(conn, &new, self.ids.detector_id, self.ids.embedder.id)?;
        write::log(
            conn,
            self.ids.run_id,
            None,
            Some(&path_str),
            LogLevel::Info,
            &format!("reference embedded: {} face(s), largest used", img.faces.len()),
        )?;
        read::find_ref(conn, &blake3, self.ids.detector_id, self.ids.embedder)?
            .ok_or_else(|| anyhow!("reference {} was not stored", display_path(path)))
    }
}

/// `face:ID` names a stored face, unless a file of that name exists (then it is a photo).
pub fn face_ref(arg: &Path) -> Option<i64> {
    let id = arg.to_str()?.strip_prefix("face:")?.parse().ok()?;
    (!arg.exists()).then_some(id)
}

/// Names the references that disagree with the others (a folder of references holding two
/// people, a reference photo of someone else): each would pull in that other person's photos.
fn warn_odd_references(refs: &[RefRow], vectors: &[Vec<f32>], threshold: f32) {
    for (i, median) in matching::odd_references(vectors, threshold) {
        if let Some(r) = refs.get(i) {
            eprintln!(
                "warning: reference {} is {median:.2} from the other references (median cosine distance, over the threshold {threshold}): is it the same person? Matches through it may be someone else",
                display_str(&r.path)
            );
        }
    }
}
