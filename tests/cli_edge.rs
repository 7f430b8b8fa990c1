//! The CLI checks that need no models and no photos (flag validation, completions, man page,
//! usage): a small binary of its own, which CI runs in its first tier, before the models are
//! fetched.

#[path = "common/mod.rs"]
mod common;

use common::facedb;
use predicates::prelude::*;

#[test]
fn invalid_flag_values_get_one_message_each() {
    for (flag, value) in [("--threshold", "nan"), ("--min-face", "nan"), ("--max-yaw", "nan"), ("--expand", "nan"), ("--min-score", "2")] {
        facedb()
            .args(["match", "--ref", "r.jpg", flag, value])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!("invalid value '{value}' for '{flag}")));
    }
}

#[test]
fn completions_man_page_and_usage() {
    facedb().args(["completions", "bash"]).assert().success().stdout(predicate::str::contains("_facedb()"));
    facedb().args(["completions", "zsh"]).assert().success().stdout(predicate::str::contains("#compdef facedb"));
    facedb().arg("man").assert().success().stdout(predicate::str::contains(".TH facedb").and(predicate::str::contains("match")));
    facedb().assert().code(2).stderr(predicate::str::contains("Exit codes"));
}
