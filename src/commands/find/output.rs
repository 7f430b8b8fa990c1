//! `match`'s output: crops and manifests, written through the output folder's ledger
//! ([`crate::output`]), which refuses to touch any file facedb did not write.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use rusqlite::Connection;
use serde::Serialize;

use super::best::{self, Best};
use super::decide::Decided;
use super::layout::{self, Layout};
use super::{Ctx, MANIFEST_CSV, MANIFEST_JSONL, REJECTED_CSV};
use crate::commands::Progress;
use crate::crop::{self, CropPlan, CropSpec, FaceGeometry};
use crate::db::read::{self, FaceInfo, RefRow};
use crate::db::Db;
use crate::matching::{self, Decision, Reason};
use crate::output::{NewFile, OutputDir};
use crate::pipeline::{hash, walk};
use crate::select::Choice;
use crate::util::{display_path, read_photo_file};

pub(super) struct Crop {
    pub info: FaceInfo,
    pub source: String,
    pub file_name: String,
    pub plan: CropPlan,
    /// Fraction of the crop's pixels that lie outside the photo (0 unless `--pad`).
    pub padded_fraction: f32,
}

/// What every crop of a run shares.
struct CropJob<'a> {
    pub db_file: &'a Path,
    pub root: &'a Path,
    pub decoders: &'a crate::pipeline::decode::Decoders,
    pub out: &'a OutputDir,
    /// face id -> crop file name, checked free before anything was written.
    pub names: &'a HashMap<i64, String>,
    /// Crops the user edited since facedb wrote them: theirs, never written again.
    pub kept: &'a std::collections::BTreeSet<String>,
    pub spec: CropSpec,
    pub format: crop::Format,
    pub quality: u8,
}

/// What this run writes into the output folder: the faces to crop and every name, checked free
/// before anything is written.
pub(super) struct Plan<'a> {
    pub best: Option<Best>,
    pub to_crop: Vec<&'a Decision>,
    pub layout: Layout<'a>,
    /// face id -> crop file name (within the layout's folder).
    pub names: HashMap<i64, String>,
}

impl<'a> Plan<'a> {
    pub fn new(conn: &Connection, ctx: &'a Ctx, out: &OutputDir, decided: &'a Decided) -> Result<Self> {
        let args = &ctx.args;
        let best = args
            .best
            .map(|n| best::choose(conn, &ctx.root, &ctx.decoders, ctx.best_params(n), &decided.decisions, &decided.best_vectors))
            .transpose()?;
        let to_crop: Vec<&Decision> =
            decided.decisions.iter().filter(|d| d.matched() && best.as_ref().is_none_or(|b| b.picked(d.face_id))).collect();
        let layout = Layout { kind: args.layout, token: args.token.as_deref(), caption: args.caption.as_deref(), repeats: args.repeats };
        let names = layout::place_all(&layout, crop_names(&to_crop, &decided.paths, args.format));
        layout.check_names(out, &names)?;
        Ok(Self { best, to_crop, layout, names })
    }

    /// Crops every chosen face (photos in parallel); the user's edited crops are left as they are.
    pub fn crop(&self, ctx: &Ctx, out: &OutputDir, bar: &Progress) -> HashMap<i64, Result<Crop>> {
        let job = CropJob {
            db_file: &ctx.db_file,
            root: &ctx.root,
            decoders: &ctx.decoders,
            out,
            names: &self.names,
            kept: &out.curation().edited,
            spec: ctx.spec,
            format: ctx.args.format,
            quality: ctx.args.quality,
        };
        job.run(&self.to_crop, bar)
    }
}

/// face id -> the name of its crop: from the photo's first path, so the names can be checked
/// before any file is written (a photo without a present path gets no name and fails to crop).
fn crop_names(chosen: &[&Decision], paths: &HashMap<i64, String>, format: crop::Format) -> HashMap<i64, String> {
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
            Ok((infos, source, crate::pipeline::decode_as_indexed(&bytes, rotation, self.decoders)?))
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
                        let plan = crop::plan(&geometry(&info), &self.spec, rgb.width(), rgb.height());
                        // Decided before cropping from the stored size; the photo on disk may differ.
                        if plan.enlarges() && !self.spec.upscale {
                            bail!(
                                "{} (the photo is not the size it was indexed at; re-run `facedb index`)",
                                Reason::SmallerThanSize.as_str()
                            );
                        }
                        let file_name =
                            self.names.get(&id).ok_or_else(|| anyhow!("the photo has no present path; re-run `facedb index`"))?;
                        let (image, padded_fraction) = crop::render(&rgb, &plan);
                        if !self.kept.contains(file_name) {
                            // Encoded first: a crop with the bytes already in place is not rewritten.
                            let mut bytes = Vec::new();
                            crop::encode(&image, self.format, self.quality, &mut bytes)
                                .with_context(|| format!("encoding {}", display_path(&self.out.path().join(file_name))))?;
                            self.out.write_file(file_name, &bytes)?;
                        }
                        Ok(Crop { info, source: source.clone(), file_name: file_name.clone(), plan, padded_fraction })
                    })();
                    (id, result)
                })
                .collect(),
        }
    }
}

fn geometry(i: &FaceInfo) -> FaceGeometry {
    FaceGeometry { x: i.x, y: i.y, w: i.w, h: i.h, landmarks: i.landmarks }
}

/// `--size` without `--upscale`: a chosen face whose crop would have to be enlarged to reach the
/// size is rejected with its own reason, planned from the stored geometry before any photo is
/// decoded (so `--dry-run` counts it too).
pub(super) fn reject_smaller_than_size(conn: &Connection, decisions: &mut [Decision], spec: &CropSpec) -> Result<()> {
    if spec.size.is_none() || spec.upscale {
        return Ok(());
    }
    for d in decisions.iter_mut().filter(|d| d.matched()) {
        let i = read::face_info(conn, d.face_id)?;
        if crop::plan(&geometry(&i), spec, i.width, i.height).enlarges() {
            d.reason = Some(Reason::SmallerThanSize);
        }
    }
    Ok(())
}

/// How many written crops `--upscale` enlarged, and the largest factor.
pub(super) fn upscaled(crops: &HashMap<i64, Result<Crop>>) -> (u64, f32) {
    crops
        .values()
        .filter_map(|c| c.as_ref().ok())
        .filter(|c| c.plan.enlarges())
        .fold((0, 1.0), |(n, max), c| (n + 1, max.max(c.plan.upscale)))
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
///
/// Every path in them follows one rule: relative to the output folder when the file is inside it
/// (the crops: the folder can be moved or uploaded with its manifest), else absolute (sources,
/// under the canonical dataset folder; references, canonical).
pub(super) struct Manifest<'a> {
    csv: csv::Writer<NewFile<'a>>,
    jsonl: NewFile<'a>,
    rejected: csv::Writer<NewFile<'a>>,
    /// The dataset folder (canonical), which source paths are stored relative to.
    root: &'a Path,
}

pub const MANIFEST_COLUMNS: [&str; 36] = [
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
    "padded_fraction",
    "upscale",
    // --best N (empty without it): order of picking, quality 0-1, near-duplicate group (its lowest
    // face id) and how many matched faces it holds; the rest of a group is in rejected.csv.
    "rank",
    "best_score",
    "dup_group",
    "dup_group_size",
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
    pub fn create(out: &'a OutputDir, root: &'a Path) -> Result<Self> {
        let mut csv = csv::Writer::from_writer(out.create(MANIFEST_CSV)?);
        csv.write_record(MANIFEST_COLUMNS)?;
        let mut rejected = csv::Writer::from_writer(out.create(REJECTED_CSV)?);
        rejected.write_record(REJECTED_COLUMNS)?;
        Ok(Self { csv, jsonl: out.create(MANIFEST_JSONL)?, rejected, root })
    }

    pub fn add(&mut self, c: &Crop, d: &Decision, distance: Option<f32>, refs: &[&RefRow], best: Option<&Choice>) -> Result<()> {
        let i = &c.info;
        let p = &c.plan;
        let refs: Vec<RefEntry> =
            refs.iter().map(|r| RefEntry { path: &r.path, blake3: &r.blake3, width: r.width, height: r.height, face: r.face }).collect();
        let crop_path = c.file_name.clone();
        let source_path = self.root.join(&c.source).to_string_lossy().into_owned();
        let [cx, cy, cw, ch] = p.rect;
        self.csv.write_record([
            crop_path.clone(),
            source_path.clone(),
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
            format!("{:.4}", c.padded_fraction),
            format!("{:.4}", p.upscale),
            best.and_then(|b| b.rank).map(|r| r.to_string()).unwrap_or_default(),
            best.map(|b| format!("{:.4}", b.score)).unwrap_or_default(),
            best.map(|b| b.group_id.to_string()).unwrap_or_default(),
            best.map(|b| b.group_size.to_string()).unwrap_or_default(),
        ])?;
        let json = serde_json::json!({
            "crop_path": crop_path, "source_path": source_path, "source_blake3": i.blake3, "face_id": i.face_id,
            "distance": distance.filter(|x| x.is_finite()), "pass": d.pass, "ambiguous": d.ambiguous, "same_face_copies": d.same_face_copies,
            "runner_up": d.runner_up.map(|(id, dist)| serde_json::json!({"face_id": id, "distance": dist})),
            "face": {"x": i.x, "y": i.y, "w": i.w, "h": i.h, "landmarks": i.landmarks},
            "crop": {"x": cx, "y": cy, "w": cw, "h": ch, "angle": p.angle, "out_w": p.out_w, "out_h": p.out_h,
                "pad": p.pad, "padded_fraction": c.padded_fraction, "upscale": p.upscale},
            "quality": {"det_score": i.score, "size_px": i.size_px, "sharpness": i.sharpness, "yaw": i.yaw, "roll": i.roll, "brightness": i.brightness},
            "source_size": [i.width, i.height], "references": refs,
            "best": best.map(|b| serde_json::json!({"rank": b.rank, "score": b.score, "dup_group": b.group_id, "dup_group_size": b.group_size})),
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
            path.map(|p| self.root.join(p).to_string_lossy().into_owned()).unwrap_or_default(),
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

    /// Renames the three files into place (each is recorded in the ledger first), once all three
    /// are written: a failed write (a full disk) leaves the earlier manifests as they were.
    pub fn finish(self) -> Result<()> {
        let unwrap = |w: csv::Writer<NewFile<'a>>| w.into_inner().map_err(|e| anyhow!("{}", e.error()));
        let staged = [unwrap(self.csv)?.stage()?, self.jsonl.stage()?, unwrap(self.rejected)?.stage()?];
        for file in staged {
            file.place()?;
        }
        Ok(())
    }
}
