//! `meshd filter test`: try a filter/pattern and a transform on an event, offline, with the
//! same code a subscription uses. Exit code 0 when the event matches, 1 when it does not.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use meshd_core::filter::FilterSpec;
use meshd_core::transform::TransformSpec;

/// `meshd filter`
#[derive(clap::Args)]
pub struct FilterArgs {
    #[command(subcommand)]
    action: FilterAction,
}

#[derive(clap::Subcommand)]
enum FilterAction {
    /// Does the event match, and what would the sink receive?
    Test {
        /// An EventBridge-style pattern (JSON file).
        #[arg(long, conflicts_with = "filter")]
        pattern: Option<PathBuf>,
        /// A filter in any dialect (JSON file, e.g. {"cesql": "type = 'x'"}).
        #[arg(long)]
        filter: Option<PathBuf>,
        /// The event, in CloudEvents structured JSON (file).
        #[arg(long)]
        event: PathBuf,
        /// A transform (JSON file).
        #[arg(long)]
        transform: Option<PathBuf>,
    },
}

fn read_json(path: &PathBuf) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Runs the command; returns whether the event matched.
pub fn run(args: FilterArgs) -> anyhow::Result<bool> {
    let FilterAction::Test {
        pattern,
        filter,
        event,
        transform,
    } = args.action;
    let filter: Option<FilterSpec> = match (pattern, filter) {
        (Some(p), _) => Some(FilterSpec::Pattern(read_json(&p)?)),
        (None, Some(f)) => Some(
            serde_json::from_value(read_json(&f)?)
                .with_context(|| format!("{} is not a filter", f.display()))?,
        ),
        (None, None) => None,
    };
    let transform: Option<TransformSpec> = match transform {
        Some(t) => Some(
            serde_json::from_value(read_json(&t)?)
                .with_context(|| format!("{} is not a transform", t.display()))?,
        ),
        None => None,
    };
    let raw = std::fs::read(&event).with_context(|| format!("reading {}", event.display()))?;
    let ev = match meshd_core::event::parse_structured(&raw) {
        Ok(e) => e,
        Err(e) => bail!(
            "the event is invalid ({}): {e}",
            e.field.as_deref().unwrap_or("body")
        ),
    };
    let result = match meshd_core::tryout::test_filter(filter.as_ref(), transform.as_ref(), &ev) {
        Ok(r) => r,
        Err(e) => bail!("{} is invalid: {e}", e.field().unwrap_or_default()),
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(result.matched)
}
