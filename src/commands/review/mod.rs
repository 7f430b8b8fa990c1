//! `facedb review [DIR] [--run N|NAME] [--port P] [--no-open]`: a match run in the browser. A
//! local server (127.0.0.1 only, every request carrying a random token) serves one
//! self-contained page (no script or font from the network), the run's data as JSON, the faces
//! and their photos; decisions go into the `decisions` table at once (source `review`), and
//! "apply" runs the same match again with another threshold.

mod api;
mod rematch;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::{anyhow, Context, Result};

use super::report::view;
use super::{find_dataset, open_database, outln, Globals};
use crate::cli::ReviewArgs;
use crate::util::display_path;

pub fn run(globals: &Globals, args: ReviewArgs) -> Result<ExitCode> {
    let root = find_dataset(globals, args.dir.as_deref())?;
    let db = open_database(globals, &root, true)?;
    // Refuse a run that does not exist before listening.
    let run_id = view::resolve(&db.conn, args.run.as_deref())?.run_id;
    // Faces are cut from photos, decoded with the libraries beside the models (libheif for HEIC).
    let decoders = crate::pipeline::decode::Decoders::new(crate::models::runtime::models_dir(globals.models.as_deref()).as_deref());
    let server = tiny_http::Server::http(("127.0.0.1", args.port))
        .map_err(|e| anyhow!("cannot listen on 127.0.0.1:{}: {e}; pass another --port (0 picks a free one)", args.port))?;
    let port = server.server_addr().to_ip().map(|a| a.port()).context("the server has no TCP address")?;
    let token = random_token()?;
    let url = format!("http://127.0.0.1:{port}/?t={token}");
    outln!("{url}");
    if !globals.quiet {
        eprintln!("reviewing match run {run_id} of {} at {url} (Ctrl-C stops)", display_path(&root));
    }
    if !args.no_open {
        open_browser(&url, globals.quiet);
    }
    // Ctrl-C ends the server even where the shell started it with SIGINT ignored (a background
    // job of a script); nothing is half-written between requests.
    let _ = ctrlc::set_handler(|| std::process::exit(i32::from(super::EXIT_INTERRUPTED)));
    let state = api::State::new(api::Setup { root, db, decoders, token, run_id, child_globals: rematch::global_flags(globals) });
    for request in server.incoming_requests() {
        state.handle(request);
    }
    Ok(ExitCode::SUCCESS)
}

/// 128 random bits from the kernel, as hex.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom for the page token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The desktop's browser through xdg-open, when there is one; without, the address printed is
/// the way in.
fn open_browser(url: &str, quiet: bool) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("xdg-open")).any(|f: PathBuf| f.is_file()))
        .unwrap_or(false);
    let opened = found
        && std::process::Command::new("xdg-open").arg(url).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().is_ok();
    if !opened && !quiet {
        eprintln!("no browser to open (xdg-open not found); open the address above");
    }
}
