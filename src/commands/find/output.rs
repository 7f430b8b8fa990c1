//! `match`'s output: crops and manifests, written through the output folder's ledger
//! ([`crate::output`]), which refuses to touch any file facedb did not write.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::{MANIFEST_CSV, MANIFEST_JSONL, REJECTED_CSV};
use crate::commands::Progress;
use crate::crop::{self, CropPlan, CropSpec, FaceGeometry};
use crate::db::read::{self, FaceInfo, RefRow};
use crate::db::Db;
use crate::matching::{self, Decision};
use crate::output::{NewFile, OutputDir};
use crate::pipeline::{hash, walk};
use crate::util::{display_path, read_photo_file};

pub(super) struct Crop {
    pub info: FaceInfo,
    pub source: String,
    pub file_name: String,
    pub plan: CropPlan,
}

/// What every crop of a run shares.
pub(super) struct CropJob<'a> {
    pub db_file: &'a Path,
    pub root: &'a Path,
    pub out: &'a OutputDir,
    /// face id -> crop file name, checked free before anything was written.
    pub names: &'a HashMap<i64, String>,
    /// Crops the user edited since facedb wrote them: theirs, never written again.
    pub kept: &'a std::collections::BTreeSet<String>,
    pub spec: CropSpec,
    pub format: crop::Format,
    pub quality: u8,
}

/// face id -> the name of its crop: from the photo's first path, so the names can be checked
/// before any file is written (a photo without a present path gets no name and fails to crop).
pub(super) fn crop_names(chosen: &[&Decision], paths: &HashMap<i64, String>, format: crop::Format) -> HashMap<i64, String> {
    chosen.iter().filter_map(|d| paths.get(&d.image_id).map(|p| (d.face_id, crop::crop_file_name(p, d.face_id, format)))).collect()
}

impl CropJob<'_> {
    /// Crops every chosen face; each photo is read and decoded once, photos in parallel.
    pub fn run(&self, chosen: &[&Decision], bar: &Progress) -> HashMap<i64, Result<Crop>> {
        let mut by_image: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for d in chosen {
            by_image.entry(d.image_id).or_default().push(d.face_id);
        }
        let groups: Vec<(i64, Vec<i64>)> = by_image.into_iter().collect();
        groups
            .par_iter()
            .flat_map_iter(|(_, face_ids)| {
                let results = self.crop_photo(face_ids);
                bar.inc(face_ids.len() as u64);
                results
            })
            .collect()
    }

    fn crop_photo(&self, face_ids: &[i64]) -> Vec<(i64, Result<Crop>)> {
        let loaded = (|| -> Result<(Vec<FaceInfo>, String, image::RgbImage)> {
            // rusqlite connections are not shared across threads: each photo opens its own reader.
            let db = Db::open_read_only(self.db_file)?;
            let infos = face_ids.iter().map(|&id| read::face_info(&db.conn, id)).collect::<Result<Vec<_>>>()?;
            let first = infos.first().ok_or_else(|| anyhow!("no face"))?;
            let (source, bytes) = first
                .paths
                .iter()
                .find_map(|(rel, raw)| {
                    let p = walk::resolve(self.root, rel, raw.as_deref());
                    // Only a regular file (a FIFO swapped in since indexing must not hang the run).
                    read_photo_file(&p).ok().filter(|b| hash::content_hash(b) == first.blake3).map(|b| (rel.clone(), b))
                })
                .ok_or_else(|| anyhow!("no file with this content is left in the folder; re-run `facedb index`"))?;
            let rotation = first.rotation;
            Ok((infos, source, crate::pipeline::decode_as_indexed(&bytes, rotation)?))
        })();
        match loaded {
            Err(e) => {
                let msg = format!("{e:#}");
                face_ids.iter().map(|&id| (id, Err(anyhow!("{msg}")))).collect()
            }
            Ok((infos, source, rgb)) => infos
                .into_iter()
                .map(|info| {
                    let id = info.face_id;
                    let result = (|| {
                        let geometry = FaceGeometry { x: info.x, y: info.y, w: info.w, h: info.h, landmarks: info.landmarks };
                        let plan = crop::plan(&geometry, &self.spec, rgb.width(), rgb.height());
                        let file_name =
                            self.names.get(&id).ok_or_else(|| anyhow!("the photo has no present path; re-run `facedb index`"))?;
                        if !self.kept.contains(file_name) {
                            let mut file = self.out.create(file_name)?;
                            crop::encode(&crop::render(&rgb, &plan), self.format, self.quality, &mut file)
                                .with_context(|| format!("encoding {}", display_path(&self.out.path().join(file_name))))?;
                            file.finish()?;
                        }
                        Ok(Crop { info, source: source.clone(), file_name: file_name.clone(), plan })
                    })();
                    (id, result)
                })
                .collect(),
        }
    }
}

/// A reference as the manifest records it.
#[derive(Serialize)]
struct RefEntry<'a> {
    path: &'a str,
    blake3: &'a str,
    width: u32,
    height: u32,
    face: [f32; 4],
}

/// manifest.csv + manifest.jsonl (one row per crop) and rejected.csv, written to temp files and
/// renamed into place at the end so readers never see half a manifest.
pub(super) struct Manifest<'a> {
    csv: csv::Writer<NewFile<'a>>,
    jsonl: NewFile<'a>,
    rejected: csv::Writer<NewFile<'a>>,
    out_dir: &'a Path,
}

pub const MANIFEST_COLUMNS: [&str; 30] = [
    "crop_path",
    "source_path",
    "source_blake3",
    "face_id",
    "distance",
    "pass",
    "face_x",
    "face_y",
    "face_w",
    "face_h",
    "crop_x",
    "crop_y",
    "crop_w",
    "crop_h",
    "crop_angle",
    "crop_out_w",
    "crop_out_h",
    "det_score",
    "size_px",
    "sharpness",
    "yaw",
    "roll",
    "brightness",
    "source_w",
    "source_h",
    "landmarks",
    "runner_up_distance",
    "ambiguous",
    "same_face_copies",
    "references",
];
pub const REJECTED_COLUMNS: [&str; 11] = [
    "source_path",
    "face_id",
    "distance",
    "runner_up_distance",
    "negative_distance",
    "ambiguous",
    "reason",
    "pass",
    "size_px",
    "sharpness",
    "yaw",
];

fn opt(v: Option<f32>) -> String {
    v.filter(|x| x.is_finite()).map(|x| format!("{x:.4}")).unwrap_or_default()
}

impl<'a> Manifest<'a> {
    pub fn create(out: &'a OutputDir) -> Result<Self> {
        let mut csv = csv::Writer::from_writer(out.create(MANIFEST_CSV)?);
        csv.write_record(MANIFEST_COLUMNS)?;
        let mut rejected = csv::Writer::from_writer(out.create(REJECTED_CSV)?);
        rejected.write_record(REJECTED_COLUMNS)?;
        Ok(Self { csv, jsonl: out.create(MANIFEST_JSONL)?, rejected, out_dir: out.path() })
    }

    pub fn add(&mut self, c: &Crop, d: &Decision, distance: Option<f32>, refs: &[&RefRow]) -> Result<()> {
        let out_dir = self.out_dir;
        let i = &c.info;
        let p = &c.plan;
        let refs: Vec<RefEntry> =
            refs.iter().map(|r| RefEntry { path: &r.path, blake3: &r.blake3, width: r.width, height: r.height, face: r.face }).collect();
        let crop_path = out_dir.join(&c.file_name).to_string_lossy().into_owned();
        let [cx, cy, cw, ch] = p.rect;
        self.csv.write_record([
            crop_path.clone(),
            c.source.clone(),
            i.blake3.clone(),
            i.face_id.to_string(),
            opt(distance),
            d.pass.to_string(),
            format!("{:.1}", i.x),
            format!("{:.1}", i.y),
            format!("{:.1}", i.w),
            format!("{:.1}", i.h),
            cx.to_string(),
            cy.to_string(),
            cw.to_string(),
            ch.to_string(),
            format!("{:.2}", p.angle),
            p.out_w.to_string(),
            p.out_h.to_string(),
            format!("{:.3}", i.score),
            format!("{:.1}", i.size_px),
            format!("{:.1}", i.sharpness),
            format!("{:.1}", i.yaw),
            format!("{:.1}", i.roll),
            format!("{:.1}", i.brightness),
            i.width.to_string(),
            i.height.to_string(),
            serde_json::to_string(&i.landmarks)?,
            opt(d.runner_up.map(|r| r.1)),
            u8::from(d.ambiguous).to_string(),
            d.same_face_copies.to_string(),
            serde_json::to_string(&refs)?,
        ])?;
        let json = serde_json::json!({
            "crop_path": crop_path, "source_path": c.source, "source_blake3": i.blake3, "face_id": i.face_id,
            "distance": distance.filter(|x| x.is_finite()), "pass": d.pass, "ambiguous": d.ambiguous, "same_face_copies": d.same_face_copies,
            "runner_up": d.runner_up.map(|(id, dist)| serde_json::json!({"face_id": id, "distance": dist})),
            "face": {"x": i.x, "y": i.y, "w": i.w, "h": i.h, "landmarks": i.landmarks},
            "crop": {"x": cx, "y": cy, "w": cw, "h": ch, "angle": p.angle, "out_w": p.out_w, "out_h": p.out_h},
            "quality": {"det_score": i.score, "size_px": i.size_px, "sharpness": i.sharpness, "yaw": i.yaw, "roll": i.roll, "brightness": i.brightness},
            "source_size": [i.width, i.height], "references": refs,
        });
        writeln!(self.jsonl, "{json}")?;
        Ok(())
    }

    pub fn reject(
        &mut self,
        d: &Decision,
        distance: Option<f32>,
        reason: &str,
        path: Option<&String>,
        q: Option<&matching::FaceRow>,
    ) -> Result<()> {
        self.rejected.write_record([
            path.cloned().unwrap_or_default(),
            d.face_id.to_string(),
            opt(distance),
            opt(d.runner_up.map(|r| r.1)),
            opt(d.negative_distance),
            u8::from(d.ambiguous).to_string(),
            reason.to_string(),
            d.pass.to_string(),
            q.map(|q| format!("{:.1}", q.size_px)).unwrap_or_default(),
            q.map(|q| format!("{:.1}", q.sharpness)).unwrap_or_default(),
            q.map(|q| format!("{:.1}", q.yaw)).unwrap_or_default(),
        ])?;
        Ok(())
    }

    /// Renames the three files into place (each is recorded in the ledger first).
    pub fn finish(self) -> Result<()> {
        let unwrap = |w: csv::Writer<NewFile<'a>>| w.into_inner().map_err(|e| anyhow!("{}", e.error()));
        unwrap(self.csv)?.finish()?;
        self.jsonl.finish()?;
        unwrap(self.rejected)?.finish()
    }
}
