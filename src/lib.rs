//! facedb: an incremental face index of a photo folder, kept in one SQLite file.

pub mod cli;
pub mod commands;
pub mod crop;
pub mod db;
pub mod matching;
pub mod models;
pub mod pipeline;
