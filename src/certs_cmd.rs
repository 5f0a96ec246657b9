//! `meshd certs`: create the mesh CA, issue cluster bridge certificates, show a
//! certificate. Offline; the logic lives in meshd-certs.

use std::path::PathBuf;

use anyhow::Context as _;
use meshd_certs::issue::{DEFAULT_CA_DAYS, DEFAULT_CLUSTER_DAYS};
use meshd_certs::{ClusterCertRequest, Validity};

/// `meshd certs`
#[derive(clap::Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    action: CertsAction,
}

#[derive(clap::Subcommand)]
enum CertsAction {
    /// Create the mesh CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        /// Directory for the CA files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Mesh name (in the CA's common name "meshd mesh CA <name>").
        #[arg(long, default_value = "mesh")]
        mesh: String,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: u32,
        /// Replace an existing CA (every cluster certificate must then be reissued).
        #[arg(long)]
        force: bool,
    },
    /// Issue a cluster's bridge certificate: OUT/NAME.pem (leaf + CA) and OUT/NAME.key (0600).
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        dir: PathBuf,
        /// Cluster name (A-Z a-z 0-9 . _ -); becomes the SAN meshd://cluster/NAME.
        #[arg(long)]
        cluster: String,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_CLUSTER_DAYS)]
        days: u32,
        /// Output directory (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Extra SAN: an IP address or DNS name of the bridge (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Show a certificate file: cluster, serial, validity, issuer.
    Show {
        /// A PEM file (the first certificate is shown).
        file: PathBuf,
    },
}

/// Runs `meshd certs ...`.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.action {
        CertsAction::Init {
            dir,
            mesh,
            days,
            force,
        } => {
            let files =
                meshd_certs::init_ca_dir(&dir, &mesh, Validity::days_from_now(days)?, force)?;
            println!("mesh CA {mesh:?} valid {days} days");
            println!("  certificate {}", files.cert.display());
            println!("  key         {} (keep it secret)", files.key.display());
        }
        CertsAction::Issue {
            dir,
            cluster,
            days,
            out,
            sans,
        } => {
            let out = out.unwrap_or_else(|| dir.clone());
            let req = ClusterCertRequest {
                cluster: cluster.clone(),
                extra_sans: sans,
                validity: Validity::days_from_now(days)?,
            };
            let files = meshd_certs::issue_to_dir(&dir, &req, &out)?;
            let pem = std::fs::read_to_string(&files.cert)
                .with_context(|| format!("reading back {}", files.cert.display()))?;
            let info = meshd_certs::cert_info(&meshd_certs::reload::leaf_of(&pem)?)?;
            println!(
                "cluster {cluster:?} serial {} valid {days} days",
                info.serial
            );
            println!("  certificate {}", files.cert.display());
            println!("  key         {}", files.key.display());
        }
        CertsAction::Show { file } => {
            let pem = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let info = meshd_certs::cert_info(&meshd_certs::reload::leaf_of(&pem)?)?;
            println!("subject    {}", info.subject);
            println!("issuer     {}", info.issuer);
            println!("serial     {}", info.serial);
            println!(
                "not before {}",
                meshd_certs::names::rfc3339(info.not_before)
            );
            println!("not after  {}", meshd_certs::names::rfc3339(info.not_after));
            match info.cluster {
                Ok(c) => println!("cluster    {c}"),
                Err(e) if info.is_ca => println!("CA         yes ({e})"),
                Err(e) => println!("cluster    none: {e}"),
            }
        }
    }
    Ok(())
}
