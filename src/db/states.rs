//! States stored as text, as enums: a run's status, a log line's level, a match decision. Each
//! is written and read through one table of names (the sets the CHECK constraints of
//! migrations/0001_init.sql allow), so a typo is a compile error, not a row no query finds.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                Self::parse(text).ok_or_else(|| FromSqlError::Other(format!("unknown {} {text:?}", stringify!($name)).into()))
            }
        }
    };
}

text_enum!(
    /// `runs.status`.
    RunStatus {
        Running = "running",
        Ok = "ok",
        /// Finished, with some files (or crops) failed: exit code 1.
        Failures = "failures",
        /// Ctrl-C, or the process gone (closed by the next run).
        Interrupted = "interrupted",
        /// Ended by an error after the run began.
        Error = "error",
    }
);

text_enum!(
    /// `logs.level`.
    LogLevel {
        Info = "info",
        Warn = "warn",
        Error = "error",
    }
);

text_enum!(
    /// `match_results.decision`: the face was cropped, or it was not (the reason says why).
    DecisionKind {
        Matched = "matched",
        Rejected = "rejected",
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn states_round_trip_as_their_stored_text_and_unknown_text_is_an_error() {
        let conn = Connection::open_in_memory().unwrap();
        for s in [RunStatus::Running, RunStatus::Ok, RunStatus::Failures, RunStatus::Interrupted, RunStatus::Error] {
            let text: String = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            let back: RunStatus = conn.query_row("SELECT ?1", [&text], |r| r.get(0)).unwrap();
            assert_eq!((text.as_str(), back), (s.as_str(), s));
        }
        assert_eq!(serde_json::to_string(&DecisionKind::Matched).unwrap(), "\"matched\"");
        assert_eq!(format!("{:5}|", LogLevel::Info), "info |");
        assert!(conn.query_row("SELECT 'done'", [], |r| r.get::<_, RunStatus>(0)).is_err());
    }
}
