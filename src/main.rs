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

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
