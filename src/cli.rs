//! Command-line definitions; the help text lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::models::runtime::Device;

#[derive(Parser, Debug)]
#[command(
    name = "facedb",
    version,
    about = "Find one person's face in a folder of photos and write training-ready crops.",
    long_about = None,
    disable_version_flag = true,
    arg_required_else_help = true,
    after_help = "Exit codes: 0 ok, 1 some files failed (see `facedb report`), 2 usage or fatal error, 130 interrupted (work so far is saved)."
)]
pub struct Cli {
    /// Print the versions of facedb, the database schema, ONNX Runtime and the models (with hashes).
    #[arg(long, short = 'V')]
    pub version: bool,

    /// Read the models and ONNX Runtime library from DIR [default: ./models, models/ beside the binary, ~/.local/share/facedb/models].
    #[arg(long, global = true, value_name = "DIR", env = "FACEDB_MODELS")]
    pub models: Option<PathBuf>,

    /// Run the models on DEVICE: cpu, or cuda (an NVIDIA GPU; needs ONNX Runtime's GPU build from `scripts/setup.sh --gpu`). Falls back to the CPU with a message when CUDA cannot start.
    #[arg(long, global = true, value_name = "DEVICE", value_enum, default_value_t = Device::Cpu, env = "FACEDB_DEVICE")]
    pub device: Device,

    /// Use the database at PATH instead of DIR/facedb.sqlite (for folders you cannot write).
    #[arg(long, global = true, value_name = "PATH", env = "FACEDB_DB")]
    pub db: Option<PathBuf>,

    /// Print no progress bar and no summary; errors still go to stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Print the summary (or report, info, query result) as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Detect, embed and score every face in a photo folder (incremental: unchanged files are skipped).
    Index(IndexArgs),
    /// Compare stored faces with a reference photo and write crops of the matches plus a manifest.
    Match(MatchArgs),
    /// Join shard databases (`index --shard K/N --db ...`) into the database given by --db.
    Merge(MergeArgs),
    /// Print totals, photos with zero or several faces, and files that failed.
    Report(ReportArgs),
    /// Show everything stored about one photo (or face id): paths, hash, faces, quality, logs.
    Info(InfoArgs),
    /// Say a face is not the person: every later match of them leaves it out and uses it as a negative.
    Reject(RejectArgs),
    /// Review a match run in the browser (local server, 127.0.0.1 only): accept, reject, re-threshold.
    Review(ReviewArgs),
    /// Group every stored face into people without a reference; name, merge and correct them.
    People(PeopleArgs),
    /// Erase a photo's faces (or one face) for good: embeddings, crops facedb wrote, cached vectors, references; then compact the database.
    Forget(ForgetArgs),
    /// Hand the stored faces to other tools: XMP face regions beside the photos, or Parquet tables.
    Export(ExportArgs),
    /// Run one SQL statement against the database (read-only unless --write) and print the rows.
    Sql(SqlArgs),
    /// Copy the models and ONNX Runtime library to the user location (~/.local/share/facedb/models).
    Models(ModelsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// Shell to generate for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    Man,
}

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: ModelsAction,
}

#[derive(Subcommand, Debug)]
pub enum ModelsAction {
    /// Copy the model files and libonnxruntime from FROM_DIR (filled by scripts/setup.sh) to the user location.
    Install {
        /// Folder holding the files [default: ./models].
        #[arg(value_name = "FROM_DIR", default_value = "models")]
        from: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Photo folder to index, searched recursively [default: current directory].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Use N worker threads, each with its own model sessions [default: number of CPUs].
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,

    /// Detect faces in photos over 800 px at long side PX when PX is over 800 (a 40 px face of a
    /// 4000 px photo is found at 960; smaller faces need more, at more detection time); faces
    /// over 480 px there are taken from a pass at a third of PX. At 800 or less, photos get one
    /// pass at 640.
    #[arg(long, value_name = "PX", default_value_t = 960, value_parser = clap::value_parser!(u32).range(320..=16384))]
    pub detect_size: u32,

    /// Keep detections scoring at least S (0-1).
    #[arg(long, value_name = "S", default_value_t = 0.6, value_parser = fraction)]
    pub min_score: f32,

    /// Try every failed file again, also those that failed because of their content (failures
    /// caused by a missing library or the runtime are retried by themselves when facedb, its
    /// libraries or its models change).
    #[arg(long)]
    pub retry_failed: bool,

    /// Index only shard K of N (K from 0 to N-1): the files whose relative path hashes (blake3)
    /// to K modulo N. Needs --db (one database per shard); `facedb merge` joins the shards.
    #[arg(long, value_name = "K/N", value_parser = shard)]
    pub shard: Option<crate::pipeline::shard::Shard>,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Shard databases made by `facedb index DIR --shard K/N --db shard-K.sqlite`.
    #[arg(value_name = "SHARD_DB", required = true)]
    pub shards: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MatchArgs {
    /// Dataset folder [default: the one whose facedb.sqlite is in the current directory or a parent].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Use this photo (or every photo in this folder, or the stored face face:ID) as a reference of the person; repeatable.
    #[arg(long = "ref", value_name = "IMG|DIR|face:ID", required_unless_present_any = ["all", "person"])]
    pub refs: Vec<PathBuf>,

    /// Use the faces of this person (`facedb people`, named with `facedb people name`) as references.
    #[arg(long, value_name = "NAME")]
    pub person: Option<String>,

    /// Reject faces closer to this person (photo, folder or face:ID) than to the references (a look-alike); repeatable.
    #[arg(long = "not", value_name = "IMG|DIR|face:ID")]
    pub negatives: Vec<PathBuf>,

    /// Accept faces within this cosine distance of the references (0-2; lower is stricter). Calibrated on
    /// the evaluation set (scripts/eval.sh): the same person 0.1-0.42, other people 0.70 and more, at every face size.
    #[arg(long, value_name = "D", default_value_t = crate::matching::DEFAULT_THRESHOLD, value_parser = distance)]
    pub threshold: f32,

    /// Combine several references by distance to the nearest one or to their mean.
    #[arg(long, value_enum, value_name = "HOW", default_value = "nearest")]
    pub combine: crate::matching::Combine,

    /// Add matches within D of the references to the references and match again, until nothing changes (at most 5 passes).
    #[arg(long, value_name = "D", num_args = 0..=1, default_missing_value = "0.35", value_parser = distance)]
    pub expand: Option<f32>,

    /// Crop a photo even when another face in it is also within the threshold (a mirror, a twin).
    #[arg(long)]
    pub allow_ambiguous: bool,

    /// Crop every detected face, whoever it is (no reference needed).
    #[arg(long)]
    pub all: bool,

    /// Write nothing; print the distance histogram, where the threshold falls and the photos near it.
    #[arg(long)]
    pub dry_run: bool,

    /// Write crops, manifest.csv, manifest.jsonl and rejected.csv to OUT [default: DIR/facedb-crops].
    #[arg(long, value_name = "OUT")]
    pub out: Option<PathBuf>,

    /// Add this fraction of the face box on every side of a crop.
    #[arg(long, value_name = "F", default_value_t = 0.3, value_parser = margin)]
    pub margin: f32,

    /// Make crops square (shrunk, and slid a little, to stay inside the photo unless --pad).
    #[arg(long)]
    pub square: bool,

    /// Resize crops to exactly N pixels on the long side (NxN with --square); a face whose crop is smaller is rejected ("smaller than --size") unless --upscale.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub size: Option<u32>,

    /// Let --size enlarge crops smaller than N (the summary says how many and by how much).
    #[arg(long, requires = "size")]
    pub upscale: bool,

    /// Rotate crops so the eyes are level (shrunk to stay inside the photo unless --pad).
    #[arg(long)]
    pub align: bool,

    /// Keep the crop region at its full size and fill what lies outside the photo: reflect, edge or black [default: none, the region shrinks to fit].
    #[arg(long, value_enum, value_name = "HOW")]
    pub pad: Option<crate::crop::Pad>,

    /// Crop file format.
    #[arg(long, value_enum, value_name = "FMT", default_value = "jpg")]
    pub format: crate::crop::Format,

    /// JPEG quality of crops (1-100).
    #[arg(long, value_name = "Q", default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,

    /// Skip faces whose shorter side is under PX pixels in the source photo.
    #[arg(long, value_name = "PX", default_value_t = 40.0, value_parser = pixels)]
    pub min_face: f32,

    /// Skip faces with sharpness under X (detail at a fixed face scale, the same for any resolution or exposure: under 25 blurred, 25-50 soft, over 50 sharp).
    #[arg(long, value_name = "X", default_value_t = crate::pipeline::quality::BLURRY, value_parser = non_negative)]
    pub min_sharpness: f32,

    /// Skip faces turned more than DEG degrees left or right.
    #[arg(long, value_name = "DEG", default_value_t = 60.0, value_parser = degrees)]
    pub max_yaw: f32,

    /// Skip faces whose detection score is under S (0-1). Off by default: YuNet's score falls with face
    /// size (which --min-face covers) and the person's correct 40-60 px faces score 0.6-0.75, while a
    /// detection that is no face does not come within the threshold of a reference.
    #[arg(long, value_name = "S", default_value_t = 0.0, value_parser = fraction)]
    pub min_score: f32,

    /// Crop at most N of the matched faces: the best (size, sharpness, pose, exposure, detection score) and most varied (look, pose, expression, light, framing), one per group of near-duplicates (burst shots, re-encoded, resized or cropped copies). The others are listed in rejected.csv with the reason.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub best: Option<u32>,
    /// Lay the crops out for a trainer: plain, kohya (`<repeats>_<token>/` with a caption .txt per image) or imagefolder (metadata.jsonl for Hugging Face datasets).
    #[arg(long, value_enum, value_name = "LAYOUT", default_value = "plain")]
    pub layout: crate::commands::find::LayoutKind,

    /// The trigger words of the person (kohya folder name and default caption), e.g. "ohwx person".
    #[arg(long, value_name = "TEXT", value_parser = token, required_if_eq_any = [("layout", "kohya"), ("layout", "imagefolder")])]
    pub token: Option<String>,

    /// Caption of every image [default: the token].
    #[arg(long, value_name = "TEXT", value_parser = caption, requires = "token")]
    pub caption: Option<String>,

    /// How often kohya repeats each image per epoch (the N of `N_<token>/`).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub repeats: u32,

    /// Print the decisions (matched and listed rejections, closest first) as CSV; write nothing, no crops.
    #[arg(long, conflicts_with = "dry_run")]
    pub list: bool,

    /// Name the run ("photos of Anna"): `report --run` and `review --run` accept the name.
    #[arg(long, value_name = "NAME", value_parser = run_name)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// Dataset folder [default: found from the current directory upwards].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Match run to review, by number or `match --name` [default: the latest].
    #[arg(long, value_name = "N|NAME", value_parser = run_name)]
    pub run: Option<String>,

    /// Port on 127.0.0.1 [default: a free one].
    #[arg(long, value_name = "P", default_value_t = 0)]
    pub port: u16,

    /// Print the page's address without opening a browser.
    #[arg(long)]
    pub no_open: bool,
}

#[derive(Args, Debug)]
pub struct RejectArgs {
    /// The face: its id (manifest.csv's face_id, `facedb info`), or a crop file match wrote (deleted or not).
    #[arg(value_name = "FACE_ID|CROP_PATH")]
    pub target: String,

    /// Whose face it is not: a reference photo or face:ID, repeatable [default: the references of the match that wrote or listed it].
    #[arg(long = "ref", value_name = "IMG|face:ID")]
    pub refs: Vec<PathBuf>,

    /// Dataset folder [default: the crop folder's dataset, else found from the current directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PeopleArgs {
    #[command(subcommand)]
    pub action: Option<PeopleAction>,

    /// Dataset folder [default: found from the current directory upwards].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Faces within this cosine distance are close neighbours (same person 0.1-0.42, others 0.70 and more).
    #[arg(long, value_name = "D", default_value_t = crate::cluster::DEFAULT_DISTANCE, value_parser = distance)]
    pub distance: f32,

    /// A face seeds a person when at least N other faces are close neighbours.
    #[arg(long, value_name = "N", default_value_t = crate::cluster::DEFAULT_MIN_NEIGHBOURS as u32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub min_neighbours: u32,
}

#[derive(Subcommand, Debug)]
pub enum PeopleAction {
    /// Name a person (`match --person NAME` then uses their faces as references).
    Name {
        #[arg(value_name = "PERSON_ID")]
        id: i64,
        #[arg(value_name = "NAME", value_parser = PersonName)]
        name: String,
        /// Dataset folder [default: found from the current directory upwards].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Move every face of person FROM into person INTO (the same person found twice).
    Merge {
        #[arg(value_name = "INTO")]
        into: i64,
        #[arg(value_name = "FROM")]
        from: i64,
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Take faces out of their people into a new person (one person found as two, split back; kept by later runs).
    Split {
        #[arg(value_name = "FACE_ID", required = true, num_args = 1..)]
        faces: Vec<i64>,
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Write the people sheet: an HTML page with each person's largest faces and count, biggest first.
    Sheet {
        /// Folder the sheet (people.html) is written into [default: DIR/facedb-people]; facedb's ledger guards it as it does crop folders.
        #[arg(long, value_name = "FOLDER")]
        out: Option<PathBuf>,
        /// Faces shown per person.
        #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
        faces: u32,
        /// People shown, the biggest first (each face shown decodes its photo).
        #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        people: u32,
        /// Dataset folder [default: found from the current directory upwards].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Put one face in another person (kept there by later runs).
    Move {
        #[arg(value_name = "FACE_ID")]
        face: i64,
        #[arg(value_name = "PERSON_ID")]
        person: i64,
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// A photo (path, or any file with the same content) or a face id (manifest.csv's face_id, `facedb info`).
    #[arg(value_name = "PHOTO|FACE_ID", required_unless_present = "person", conflicts_with = "person")]
    pub target: Option<String>,

    /// Every face of this person (`facedb people`: a name or a person id); the person goes too.
    #[arg(long, value_name = "NAME")]
    pub person: Option<String>,

    /// Dataset folder [default: the one holding PHOTO, else found from the current directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Dataset folder [default: found from the current directory upwards].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Print as an aligned table, JSON or CSV.
    #[arg(long, value_enum, value_name = "FMT", default_value = "table")]
    pub format: OutputFormat,

    /// Write a self-contained HTML contact sheet of a match run to FILE (thumbnails embedded).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Match run to show with --html, by number or `match --name` [default: the latest].
    #[arg(long, value_name = "N|NAME", requires = "html", value_parser = run_name)]
    pub run: Option<String>,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A photo (path, or any file with the same content) or a face id.
    #[arg(value_name = "PHOTO|FACE_ID")]
    pub target: String,

    /// Dataset folder [default: the one holding PHOTO, else found from the current directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub format: ExportFormat,
}

#[derive(Subcommand, Debug)]
pub enum ExportFormat {
    /// Write each photo's faces as Metadata Working Group face regions into an .xmp sidecar beside it (digiKam, Lightroom, immich, exiftool read them).
    ///
    /// One region (type Face) per stored face, named after its person when the person has a name
    /// (`facedb people name`). Photos are never touched. A sidecar facedb wrote (listed with its
    /// hash in the database) is updated in place; any other existing sidecar is refused unless you
    /// pass --merge-existing, which keeps everything in it (other metadata, regions facedb did not
    /// write) and replaces only facedb's regions. A sidecar that is a symbolic link is refused.
    ///
    /// EXIF orientation: as the MWG guidelines require, regions are given in the pixels of the
    /// image as stored in the file (AppliedToDimensions is the stored width and height), and a
    /// viewer turns them with the photo, so they land on the faces of a photo shown turned by its
    /// EXIF orientation (and of a sideways scan facedb turned itself). HEIC photos: regions are in
    /// the image as libheif shows it (HEIF's own rotation applied).
    Xmp(XmpArgs),
    /// Write images, files, faces and embeddings as Parquet files into OUT (for DuckDB, Spark, Polars, pandas).
    ///
    /// OUT/images.parquet, files.parquet, faces.parquet (box, score, landmarks, quality, person)
    /// and embeddings.parquet (face_id, embedding: 128 float32 of the latest index's embedder).
    /// The schema and a DuckDB query are in the README. OUT is written like a crop folder: only
    /// files facedb wrote there are replaced, atomically.
    Parquet(ParquetArgs),
}

/// How a sidecar is named beside `photo.jpg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarName {
    /// photo.jpg.xmp: what digiKam and darktable write and immich reads first; photo.jpg and photo.heic keep separate sidecars.
    Full,
    /// photo.xmp: what Lightroom and exiftool use (a photo whose name differs only by extension from another's is refused).
    Stem,
}

#[derive(Args, Debug)]
pub struct XmpArgs {
    /// Dataset folder [default: found from the current directory].
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Add facedb's regions to sidecars facedb did not write, keeping everything already in them.
    #[arg(long)]
    pub merge_existing: bool,

    /// Sidecar names: full (photo.jpg.xmp) or stem (photo.xmp).
    #[arg(long, value_enum, value_name = "NAMING", default_value_t = SidecarName::Full)]
    pub sidecar_name: SidecarName,
}

#[derive(Args, Debug)]
pub struct ParquetArgs {
    /// Folder for the Parquet files (new, empty, or one facedb wrote them into before).
    #[arg(value_name = "OUT")]
    pub out: PathBuf,

    /// Dataset folder [default: found from the current directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// [DIR] QUERY: an optional dataset folder, then one SQL statement.
    #[arg(value_name = "[DIR] QUERY", num_args = 1..=2, required = true)]
    pub args: Vec<String>,

    /// Allow statements that change the database (it is opened read-only otherwise).
    #[arg(long)]
    pub write: bool,

    /// Print as an aligned table, JSON (an array of objects) or CSV.
    #[arg(long, value_enum, value_name = "FMT", default_value = "table")]
    pub format: OutputFormat,
}

/// A finite number within `lo..=hi`; NaN and infinities are refused here, once, so no filter
/// downstream is silently switched off by a comparison with NaN.
fn finite_in(text: &str, lo: f32, hi: f32, what: &str) -> Result<f32, String> {
    let v: f32 = text.trim().parse().map_err(|_| format!("`{text}` is not a number ({what})"))?;
    if !v.is_finite() || v < lo || v > hi {
        return Err(format!("{text} is outside {lo}-{hi} ({what})"));
    }
    Ok(v)
}

/// A run number, or a name that is not one (names are one line, at most 200 characters).
fn run_name(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() || t.len() > 200 || t.contains(['\n', '\r']) {
        return Err(format!("`{text}` is not a run number or name (one line, 1-200 characters)"));
    }
    if t.starts_with('-') && t.parse::<i64>().is_ok() {
        return Err(format!("{t} is not a run number (runs count from 1)"));
    }
    Ok(t.to_string())
}

fn distance(text: &str) -> Result<f32, String> {
    finite_in(text, 0.0, 2.0, "a cosine distance; lower is stricter")
}

fn fraction(text: &str) -> Result<f32, String> {
    finite_in(text, 0.0, 1.0, "a detection score")
}

fn margin(text: &str) -> Result<f32, String> {
    finite_in(text, 0.0, 5.0, "a fraction of the face box")
}

fn pixels(text: &str) -> Result<f32, String> {
    finite_in(text, 0.0, 100_000.0, "pixels")
}

fn degrees(text: &str) -> Result<f32, String> {
    finite_in(text, 0.0, 180.0, "degrees")
}

fn shard(text: &str) -> Result<crate::pipeline::shard::Shard, String> {
    crate::pipeline::shard::Shard::parse(text)
}

/// A trigger token: it names a folder (`<repeats>_<token>`), so one line, no `/`, not hidden.
fn token(text: &str) -> Result<String, String> {
    let t = text.trim();
    // Counted in characters as the message says, and at most 200 bytes so `<repeats>_<token>`
    // stays under the file system's 255-byte name limit; no control characters (a tab or an
    // escape in a folder name and every caption is never meant).
    if t.is_empty()
        || t.chars().count() > 100
        || t.len() > 200
        || t.starts_with('.')
        || t.contains(['/', '\\'])
        || t.chars().any(char::is_control)
    {
        return Err(format!(
            "`{}` cannot name a folder (a token: 1-100 characters and at most 200 bytes, no control characters, no / or \\, not starting with .)",
            text.escape_debug()
        ));
    }
    Ok(t.to_string())
}

fn caption(text: &str) -> Result<String, String> {
    if text.trim().is_empty() || text.chars().count() > 2000 || text.chars().any(char::is_control) {
        return Err("a caption is one line of 1-2000 characters without control characters".to_string());
    }
    Ok(text.trim().to_string())
}

/// A person's name: one line, not a number (numbers are person ids on the command line).
/// A person's name. A parser of its own because clap's refusal of a value repeats the value,
/// and a name with control characters must not reach the terminal raw.
#[derive(Clone)]
struct PersonName;

impl clap::builder::TypedValueParser for PersonName {
    type Value = String;

    fn parse_ref(&self, cmd: &clap::Command, _arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<String, clap::Error> {
        let refuse = |msg: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{msg}\n")).with_cmd(cmd);
        let text = value.to_str().ok_or_else(|| refuse(format!("{value:?} is not UTF-8; a person's name must be")))?;
        person_name(text).map_err(refuse)
    }
}

fn person_name(text: &str) -> Result<String, String> {
    let t = text.trim();
    // Control characters would reach terminals raw (ESC sequences) and make XMP invalid XML.
    if t.is_empty() || t.chars().count() > 200 || t.chars().any(char::is_control) || t.parse::<i64>().is_ok() {
        return Err(format!(
            "{:?} cannot name a person: a name is 1-200 characters on one line, without control characters, and not a number",
            text.chars().take(60).collect::<String>()
        ));
    }
    Ok(t.to_string())
}

fn non_negative(text: &str) -> Result<f32, String> {
    finite_in(text, 0.0, f32::MAX, "a sharpness score")
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn numbers_are_validated_once_at_the_edge() {
        let parse = |extra: &[&str]| Cli::try_parse_from(["facedb", "match", "--ref", "r.jpg"].iter().chain(extra));
        assert!(parse(&[]).is_ok());
        for bad in [
            &["--threshold", "nan"][..],
            &["--threshold=-0.1"],
            &["--threshold", "inf"],
            &["--min-face", "nan"],
            &["--max-yaw", "NaN"],
            &["--expand", "nan"],
            &["--min-score", "2"],
            &["--margin", "6"],
            &["--size", "0"],
            &["--quality", "0"],
            &["--min-sharpness=-1"],
            &["--best", "0"],
            &["--best=-3"],
            &["--best", "many"],
            &["--layout", "kohya", "--token", "../x"],
            &["--layout", "kohya", "--token", ".hidden"],
            &["--layout", "kohya", "--token", "a/b"],
            &["--layout", "kohya", "--token", "ohwx", "--repeats", "0"],
            &["--layout", "kohya", "--token", "ohwx", "--caption", "two\nlines"],
            &["--layout", "kohya", "--token", "a\tb"],
            &["--layout", "kohya", "--token", "\u{1}z"],
            &["--name", ""],
            &["--name", "two\nlines"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} accepted"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}: {err}");
        }
        assert_eq!(parse(&["--pad", "zero"]).expect_err("--pad zero").kind(), clap::error::ErrorKind::InvalidValue);
        // --upscale only means something with --size.
        assert_eq!(parse(&["--upscale"]).expect_err("--upscale alone").kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(parse(&["--square", "--margin", "0", "--size", "512", "--upscale", "--align", "--pad", "reflect"]).is_ok());
        assert!(parse(&["--layout", "kohya", "--token", "ohwx person", "--repeats", "20"]).is_ok());
        assert!(parse(&["--layout", "kohya", "--token", &"語".repeat(66)]).is_ok(), "66 characters, 198 bytes");
        assert!(parse(&["--layout", "kohya", "--token", &"語".repeat(67)]).is_err(), "over the 200 bytes a folder name allows");
        let missing = parse(&["--layout", "kohya"]).expect_err("kohya without a token");
        assert_eq!(missing.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        for bad in [&["--distance", "nan"][..], &["--distance", "3"], &["--min-neighbours", "0"]] {
            let err = Cli::try_parse_from(["facedb", "people"].iter().chain(bad)).expect_err(&format!("people {bad:?} accepted"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}: {err}");
        }
        let long = "a".repeat(201);
        for bad in ["", "  ", "42", "two\nlines", "a\u{1}b\u{1b}c", "tab\there", "del\u{7f}", "c1\u{85}c2", &long] {
            let err = Cli::try_parse_from(["facedb", "people", "name", "1", bad]).expect_err(&format!("name {bad:?} accepted"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}: {err}");
            let said = err.to_string();
            assert!(said.contains("1-200 characters on one line, without control characters"), "{said}");
            assert!(!said.contains('\u{1b}') && !said.contains('\u{1}'), "the refusal echoes no raw control character: {said:?}");
        }
        assert!(Cli::try_parse_from(["facedb", "people", "name", "1", "Anna"]).is_ok());
        assert!(Cli::try_parse_from(["facedb", "people", "name", "1", &"語".repeat(200)]).is_ok(), "200 characters, whatever their bytes");
        assert!(Cli::try_parse_from(["facedb", "people", "name", "1", "José Ñúñez-O'Brien <Jr.>"]).is_ok());
        for bad in [&["--faces", "0"][..], &["--faces", "101"], &["--people", "0"], &["--faces", "many"]] {
            let err = Cli::try_parse_from(["facedb", "people", "sheet"].iter().chain(bad)).expect_err(&format!("sheet {bad:?} accepted"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}: {err}");
        }
        assert!(Cli::try_parse_from(["facedb", "people", "sheet", "--faces", "3", "--out", "sheet"]).is_ok());
        assert!(Cli::try_parse_from(["facedb", "match", "--person", "Anna"]).is_ok());
        assert!(Cli::try_parse_from(["facedb", "index", "--jobs", "0"]).is_err());
        assert!(Cli::try_parse_from(["facedb", "index", "--min-score", "nan"]).is_err());
        let review = |extra: &[&str]| Cli::try_parse_from(["facedb", "review"].iter().chain(extra));
        assert!(review(&["--port", "0", "--run", "photos of Anna"]).is_ok());
        for bad in [&["--port", "65536"][..], &["--port", "-1"], &["--run", "-3"], &["--run", " "]] {
            assert!(review(bad).is_err(), "review {bad:?} accepted");
        }
        for bad in ["3/3", "1/0", "x/2", "2", "--shard=-1/2"] {
            let args: &[&str] = if bad.starts_with("--") { &[bad] } else { &["--shard", bad] };
            let err = Cli::try_parse_from(["facedb", "index"].iter().chain(args)).expect_err(&format!("--shard {bad} accepted"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "--shard {bad}: {err}");
        }
        assert!(Cli::try_parse_from(["facedb", "index", "--shard", "2/3"]).is_ok());
        let export = |extra: &[&str]| Cli::try_parse_from(["facedb", "export"].iter().chain(extra));
        assert!(export(&["xmp", "--sidecar-name", "stem", "--merge-existing"]).is_ok());
        assert_eq!(export(&["xmp", "--sidecar-name", "jpg"]).expect_err("naming").kind(), clap::error::ErrorKind::InvalidValue);
        assert_eq!(export(&["parquet"]).expect_err("no OUT").kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
