//! The log: tracing to stderr, filtered by `MESHD_LOG` (default `info`), as text or as one
//! JSON object per line (`--log-format`, env `MESHD_LOG_FORMAT`). Colour only when stderr
//! is a terminal (and `NO_COLOR` is not set), so log files never hold escape codes.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's
    /// fields, and its spans.
    Json,
}

impl LogFormat {
    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The logging options every subcommand takes.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format on stderr: `text`, or `json` (one object per line). The level filter is
    /// `MESHD_LOG` (e.g. `info`, `meshd_proxy=debug,info`).
    #[arg(
        long,
        global = true,
        env = "MESHD_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format chosen at start (for child processes, which log the same way).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Installs the global subscriber (once, first thing after parsing the command line).
pub fn init(args: &LogArgs) {
    use tracing_subscriber::prelude::*;
    let _ = FORMAT.set(args.log_format);
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match args.log_format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            fmt.with_ansi(colour).boxed()
        }
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_ansi(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .with(BenignLibraryWarnings)
        .init();
}

/// Drops library warnings that report no problem, so that a warning in the log always
/// means something. Each entry says why it is benign.
///
/// - openraft 0.9 (`core/raft_core.rs`, `Command::SaveVote`): every member that saves a
///   vote sends a vote response to itself; on a member that is not a candidate (every
///   follower, at every election) the response is stale by construction and openraft warns
///   "A message will be ignored because vote changed ... when (VoteResponse)". The message
///   is ignored, as it should be. (Its `HigherVote` and replication cases stay warnings.)
struct BenignLibraryWarnings;

const BENIGN: &[(&str, &str, &str)] = &[(
    "openraft::core::raft_core",
    "A message will be ignored because vote changed",
    "when (VoteResponse)",
)];

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BenignLibraryWarnings {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::WARN
            || !BENIGN.iter().any(|(target, _, _)| meta.target() == *target)
        {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        !BENIGN.iter().any(|(target, starts, ends)| {
            meta.target() == *target && message.0.starts_with(starts) && message.0.ends_with(ends)
        })
    }
}

/// The `message` field of an event.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::prelude::*;

    use super::*;

    /// Counts the events that reach it.
    struct Count(Arc<Mutex<usize>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    #[test]
    fn only_the_known_benign_library_warning_is_dropped() {
        let seen = Arc::new(Mutex::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(Count(seen.clone()))
            .with(BenignLibraryWarnings);
        tracing::subscriber::with_default(subscriber, || {
            let (vote, mine) = ("T2-N1:uncommitted", "None");
            // Dropped: openraft's stale self vote response.
            tracing::warn!(target: "openraft::core::raft_core", "A message will be ignored because vote changed: msg sent by vote: {}; current my vote: {}; when ({})", vote, mine, "VoteResponse");
            // Kept: the same words for another message kind, another target, another level.
            tracing::warn!(target: "openraft::core::raft_core", "A message will be ignored because vote changed: msg sent by vote: {}; current my vote: {}; when ({})", vote, mine, "HigherVote");
            tracing::warn!(target: "meshd", "A message will be ignored because vote changed: when (VoteResponse)");
            tracing::error!(target: "openraft::core::raft_core", "A message will be ignored because vote changed: when (VoteResponse)");
            tracing::warn!(target: "openraft::core::raft_core", "while requesting vote");
        });
        assert_eq!(*seen.lock().unwrap(), 4);
    }
}
