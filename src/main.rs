use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    facedb::tune_allocator();
    let cli = facedb::cli::Cli::parse();
    match facedb::commands::run(cli) {
        Ok(code) => code,
        // The reader went away (`facedb report | head -1`): what it wanted was printed.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("facedb: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether the error is a write to a closed pipe, as `io::Error` or inside a CSV writer's error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = |io: &std::io::Error| io.kind() == std::io::ErrorKind::BrokenPipe;
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(broken)
            || e.downcast_ref::<csv::Error>().is_some_and(|c| matches!(c.kind(), csv::ErrorKind::Io(io) if broken(io)))
    })
}
