//! The integration tests, one binary (one link instead of one per file): the real binary, real
//! models, real photos, a real SQLite file, in temp dirs. Run one file's tests with
//! `cargo test --release --test it matching::`. The checks that need no models are in
//! `tests/cli_edge.rs`, a separate small binary that runs before the models are fetched.

#[path = "../common/mod.rs"]
mod common;

mod best;
mod cli;
mod crops;
mod curation;
mod dataset_discovery;
mod decoders;
mod detect_recall;
mod embedder;
mod export;
mod forget;
mod hostile;
mod interrupt;
mod matching;
mod native_cli;
mod opencv_parity;
mod people;
mod quality_scores;
mod reports;
mod review;
mod shards;
mod startup;
mod trust_cache;
mod trust_db;
mod trust_input;
mod trust_output;
