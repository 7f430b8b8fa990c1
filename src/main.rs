use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    facedb::tune_allocator();
    let cli = facedb::cli::Cli::parse();
    match facedb::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("facedb: {err:#}");
            ExitCode::from(2)
        }
    }
}
