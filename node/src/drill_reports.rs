//! The last drill reports a node keeps: `POST /v1/drills/reports` stores one as a JSON file
//! in `DATA/drill-reports/`, `GET /v1/drills/reports` lists them newest first, and the
//! console shows them. At most [`DRILL_REPORTS_KEPT`] are kept: storing one more deletes
//! the oldest.
//!
//! The choice of file names and of what to delete is pure ([`report_id`], [`to_prune`]);
//! [`DrillReports`] is the thin file-system shell around it.

use std::path::{Path, PathBuf};

use meshd_core::api::{DrillReport, DrillReportList, StoredDrillReport, DRILL_REPORTS_KEPT};

/// Why a report was not stored or not read.
#[derive(Debug, thiserror::Error)]
pub enum DrillReportError {
    /// The report is not acceptable (the field at fault and why).
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// The data dir could not be written or read.
    #[error("drill reports in {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Longest scenario name accepted.
const MAX_SCENARIO_LEN: usize = 128;

/// The id (and file stem) of a report received at `at_ms`: the time, zero-padded so that
/// ids sort by time, and the scenario reduced to `[a-z0-9-]`.
pub fn report_id(at_ms: u64, scenario: &str) -> String {
    let slug: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    format!("{at_ms:015}-{}", slug.trim_matches('-'))
}

/// Checks a report before it is stored.
pub fn validate(report: &DrillReport) -> Result<(), DrillReportError> {
    let scenario = report.scenario.trim();
    if scenario.is_empty() || report.scenario.len() > MAX_SCENARIO_LEN {
        return Err(DrillReportError::Invalid {
            field: "scenario",
            message: format!("must be 1 to {MAX_SCENARIO_LEN} characters"),
        });
    }
    Ok(())
}

/// Of the stored ids, those to delete so that at most `keep` remain (the oldest go).
pub fn to_prune(ids: &[String], keep: usize) -> Vec<String> {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let excess = sorted.len().saturating_sub(keep);
    sorted.truncate(excess);
    sorted
}

/// The reports of one node, in `DATA/drill-reports/`.
#[derive(Debug, Clone)]
pub struct DrillReports {
    dir: PathBuf,
}

impl DrillReports {
    /// The reports kept under `data_dir`.
    pub fn new(data_dir: &Path) -> DrillReports {
        DrillReports {
            dir: data_dir.join("drill-reports"),
        }
    }

    fn io(&self, source: std::io::Error) -> DrillReportError {
        DrillReportError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    fn ids(&self) -> Result<Vec<String>, DrillReportError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io(e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    /// Stores `report` as received at `at_ms` (written to a temporary file, then renamed:
    /// a crash leaves no half report) and deletes the oldest past the limit.
    pub fn store(
        &self,
        at_ms: u64,
        report: DrillReport,
    ) -> Result<StoredDrillReport, DrillReportError> {
        validate(&report)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let stored = StoredDrillReport {
            id: report_id(at_ms, &report.scenario),
            received_at_ms: at_ms,
            report,
        };
        let body = serde_json::to_vec_pretty(&stored).expect("a report serializes");
        let tmp = self.dir.join(format!(".{}.tmp", stored.id));
        std::fs::write(&tmp, body).map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, self.dir.join(format!("{}.json", stored.id)))
            .map_err(|e| self.io(e))?;
        for old in to_prune(&self.ids()?, DRILL_REPORTS_KEPT) {
            let _ = std::fs::remove_file(self.dir.join(format!("{old}.json")));
        }
        tracing::info!(id = %stored.id, "drill report stored");
        Ok(stored)
    }

    /// The reports kept, newest first (a file that does not parse is skipped and logged).
    pub fn list(&self) -> Result<DrillReportList, DrillReportError> {
        let mut ids = self.ids()?;
        ids.sort_by(|a, b| b.cmp(a));
        let mut reports = Vec::new();
        for id in ids.into_iter().take(DRILL_REPORTS_KEPT) {
            let path = self.dir.join(format!("{id}.json"));
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => reports.push(r),
                Err(e) => tracing::warn!(path = %path.display(), "skipping a drill report: {e}"),
            }
        }
        Ok(DrillReportList { reports })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scenario: &str) -> DrillReport {
        DrillReport {
            scenario: scenario.to_string(),
            mode: "mesh".into(),
            acknowledged: 10,
            keys: 2,
            lost: 0,
            duplicated: 1,
            reordered: 0,
            clusters: Default::default(),
            detection_ms: Some(5),
            recovery_ms: None,
            duration_ms: Some(100),
            notes: vec![],
            facts: Default::default(),
        }
    }

    #[test]
    fn ids_sort_by_time_and_carry_a_safe_scenario() {
        assert_eq!(
            report_id(1_764_770_000_000, "link-partition"),
            "001764770000000-link-partition"
        );
        assert_eq!(report_id(5, "../<x> Y"), "000000000000005-x--y");
        assert!(report_id(9, "b") < report_id(10, "a"));
    }

    #[test]
    fn the_oldest_are_pruned() {
        let ids: Vec<String> = (0..23).map(|i| report_id(i, "d")).collect();
        let gone = to_prune(&ids, 20);
        assert_eq!(gone, ids[..3].to_vec());
        assert!(to_prune(&ids[..5], 20).is_empty());
    }

    #[test]
    fn keeps_the_last_twenty_newest_first_and_refuses_bad_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = DrillReports::new(dir.path());
        assert!(store.list().unwrap().reports.is_empty());
        for i in 0..22u64 {
            store
                .store(1000 + i, report(&format!("drill {i}")))
                .unwrap();
        }
        let list = store.list().unwrap();
        assert_eq!(list.reports.len(), DRILL_REPORTS_KEPT);
        assert_eq!(list.reports[0].report.scenario, "drill 21");
        assert_eq!(list.reports[19].report.scenario, "drill 2");
        assert_eq!(list.reports[0].received_at_ms, 1021);
        let err = store.store(5000, report(" ")).unwrap_err();
        assert!(matches!(
            err,
            DrillReportError::Invalid {
                field: "scenario",
                ..
            }
        ));
        assert_eq!(
            store.list().unwrap(),
            list,
            "a refused report changes nothing"
        );
    }
}
