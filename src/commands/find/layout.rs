//! Trainer layouts of the output folder: `plain` (crops beside the manifest), `kohya`
//! (`<repeats>_<token>/` with one caption `.txt` per image, as kohya-ss sd-scripts' DreamBooth
//! folders are read) and `imagefolder` (`metadata.jsonl` with `file_name` and `text`, as Hugging
//! Face `datasets`' imagefolder reads it). The manifest stays at the folder's root in all three.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use anyhow::Result;

use super::{MANIFEST_CSV, MANIFEST_JSONL, REJECTED_CSV};
use crate::output::OutputDir;

/// Hugging Face imagefolder's metadata file name.
pub const METADATA_JSONL: &str = "metadata.jsonl";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutKind {
    /// Crops beside the manifest.
    Plain,
    /// `<repeats>_<token>/` with a caption `.txt` beside each crop (kohya-ss sd-scripts).
    Kohya,
    /// `metadata.jsonl` beside the crops (Hugging Face datasets' imagefolder).
    Imagefolder,
}

pub(super) struct Layout<'a> {
    pub kind: LayoutKind,
    pub token: Option<&'a str>,
    pub caption: Option<&'a str>,
    pub repeats: u32,
}

impl Layout<'_> {
    /// The subfolder crops go in, if any.
    fn folder(&self) -> Option<String> {
        match (self.kind, self.token) {
            (LayoutKind::Kohya, Some(token)) => Some(format!("{}_{token}", self.repeats)),
            _ => None,
        }
    }

    /// The caption of every image: `--caption`, else the token.
    fn text(&self) -> &str {
        self.caption.or(self.token).unwrap_or_default()
    }

    /// Where a crop named `file_name` goes, relative to the output folder.
    pub fn place(&self, file_name: &str) -> String {
        match self.folder() {
            Some(dir) => format!("{dir}/{file_name}"),
            None => file_name.to_string(),
        }
    }

    /// The caption file of a crop placed at `name`.
    fn caption_name(name: &str) -> String {
        let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
        format!("{stem}.txt")
    }

    /// Every name the layout writes besides the crops, for checking before anything is written.
    fn extra_names(&self, crops: &[&String]) -> Vec<String> {
        match self.kind {
            LayoutKind::Plain => Vec::new(),
            LayoutKind::Kohya => crops.iter().map(|c| Self::caption_name(c)).collect(),
            LayoutKind::Imagefolder => vec![METADATA_JSONL.to_string()],
        }
    }

    /// Refuses, before anything is written, when a name this run writes is not facedb's to
    /// write; the files the user edited are not written at all (kept as they are).
    pub fn check_names(&self, out: &OutputDir, names: &HashMap<i64, String>) -> Result<()> {
        let kept = &out.curation().edited;
        let crops: Vec<&String> = names.values().collect();
        let fixed = [MANIFEST_CSV, MANIFEST_JSONL, REJECTED_CSV].map(String::from);
        let all: Vec<String> = crops.iter().map(|n| n.to_string()).chain(self.extra_names(&crops)).chain(fixed).collect();
        out.check_free(all.iter().filter(|n| !kept.contains(*n)).map(String::as_str))
    }

    /// Writes the captions or metadata for the crops in the folder (written or kept), sorted by
    /// name; captions the user edited are kept as they are.
    pub fn write(&self, out: &OutputDir, crops: &BTreeSet<String>, kept: &BTreeSet<String>) -> Result<()> {
        match self.kind {
            LayoutKind::Plain => {}
            LayoutKind::Kohya => {
                for crop in crops {
                    let name = Self::caption_name(crop);
                    if kept.contains(&name) {
                        continue;
                    }
                    out.write_file(&name, self.text().as_bytes())?;
                }
            }
            LayoutKind::Imagefolder => {
                let mut f = out.create(METADATA_JSONL)?;
                for crop in crops {
                    writeln!(f, "{}", serde_json::json!({"file_name": crop, "text": self.text()}))?;
                }
                f.finish()?;
            }
        }
        Ok(())
    }
}

/// Places every crop name in the layout.
pub(super) fn place_all(layout: &Layout, names: HashMap<i64, String>) -> HashMap<i64, String> {
    names.into_iter().map(|(id, n)| (id, layout.place(&n))).collect()
}
