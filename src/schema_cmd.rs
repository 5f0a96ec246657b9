//! `meshd schema put|get|list|delete|discovered`: the schema registry of a node and what
//! schema discovery inferred (docs/cli.md, "meshd schema"; the API is docs/api.md,
//! "Schemas" and "Schema discovery").

use meshd_core::api::{Compatibility, DiscoveredList, SchemaList, SchemaVersionInfo};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::client::{json_or_file, name_segment, usage, Api, GlobalArgs, Output};
use crate::table::Table;

/// `meshd schema`
#[derive(clap::Args)]
pub struct SchemaArgs {
    #[command(subcommand)]
    action: SchemaAction,
}

#[derive(clap::Subcommand)]
enum SchemaAction {
    /// Register a JSON Schema document as the schema's next version (the same document as
    /// the latest version changes nothing).
    Put {
        /// Name.
        name: String,
        /// The JSON Schema document, inline or the path of a file holding it.
        #[arg(long)]
        schema: String,
        /// Compatibility mode checked against the latest version and kept for later ones
        /// (backward, forward, full, none; default: the latest version's, else backward).
        #[arg(long, value_parser = parse_compatibility)]
        compatibility: Option<Compatibility>,
    },
    /// Show a schema: its latest version, or the one asked.
    Get {
        /// Name.
        name: String,
        /// The version (from 1).
        #[arg(long)]
        version: Option<u32>,
    },
    /// List schemas and their versions.
    List,
    /// Delete a schema, every version (refused while a topic binds it).
    Delete {
        /// Name.
        name: String,
    },
    /// What schema discovery inferred on a topic (created with `--discover`): every
    /// (source, type), or one with its versions; `--adopt NAME` registers the latest
    /// inferred version of that one as schema NAME.
    Discovered {
        /// The topic.
        topic: String,
        /// Only this source (with --type).
        #[arg(long, requires = "ty")]
        source: Option<String>,
        /// Only this type (with --source).
        #[arg(long = "type", id = "ty", requires = "source")]
        ty: Option<String>,
        /// Register the inferred schema of --source/--type as this schema's next version.
        #[arg(long, value_name = "NAME", requires = "source")]
        adopt: Option<String>,
    },
}

/// `?source=..&type=..` with both values percent-encoded.
fn discovered_query(source: &str, ty: &str) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("source", source);
    q.append_pair("type", ty);
    format!("?{}", q.finish())
}

fn parse_compatibility(s: &str) -> Result<Compatibility, String> {
    s.parse()
        .map_err(|e: meshd_core::api::InvalidField| e.message)
}

/// `--schema TYPE=SCHEMA` of `meshd topic create`.
pub fn binding_arg(s: &str) -> Result<(String, String), String> {
    match s.rsplit_once('=') {
        Some((t, n)) if !t.is_empty() && !n.is_empty() => Ok((t.to_string(), n.to_string())),
        _ => Err(format!(
            "{s:?}: give TYPE=SCHEMA (an event type and a schema name)"
        )),
    }
}

fn print_version(api: &Api, v: &SchemaVersionInfo, verb: &str) -> anyhow::Result<()> {
    match api.output {
        Output::Json => api.print_json(v),
        Output::Table => {
            println!(
                "{verb}schema {} version {} ({}, compatibility {})",
                v.name,
                v.version,
                v.uri,
                v.compatibility.as_str()
            );
            println!("{}", serde_json::to_string_pretty(&v.schema)?);
            Ok(())
        }
    }
}

/// Runs `meshd schema ...`.
pub async fn run(global: &GlobalArgs, args: SchemaArgs) -> anyhow::Result<()> {
    let api = Api::new(global)?;
    match args.action {
        SchemaAction::Put {
            name,
            schema,
            compatibility,
        } => {
            let name = name_segment("schema", &name)?;
            let doc = json_or_file("--schema", &schema)?;
            if !doc.is_object() {
                return Err(usage("--schema: a JSON Schema document is a JSON object"));
            }
            let path = match compatibility {
                Some(c) => format!("/v1/schemas/{name}?compatibility={}", c.as_str()),
                None => format!("/v1/schemas/{name}"),
            };
            let (status, info): (_, SchemaVersionInfo) =
                api.json(Method::PUT, &path, |r| r.json(&doc)).await?;
            let verb = if status == StatusCode::CREATED {
                "registered "
            } else {
                "unchanged: "
            };
            print_version(&api, &info, verb)?;
        }
        SchemaAction::Get { name, version } => {
            let name = name_segment("schema", &name)?;
            let path = match version {
                Some(v) => format!("/v1/schemas/{name}?version={v}"),
                None => format!("/v1/schemas/{name}"),
            };
            let info: SchemaVersionInfo = api.get(&path).await?;
            print_version(&api, &info, "")?;
        }
        SchemaAction::List => {
            let list: SchemaList = api.get("/v1/schemas").await?;
            match api.output {
                Output::Json => api.print_json(&list)?,
                Output::Table => {
                    let mut t = Table::new(["NAME", "LATEST", "VERSIONS", "COMPATIBILITY", "URI"]);
                    for s in &list.schemas {
                        let versions: Vec<String> = s.versions.iter().map(u32::to_string).collect();
                        t.row([
                            s.name.clone(),
                            s.latest.to_string(),
                            versions.join(","),
                            s.compatibility.as_str().to_string(),
                            s.uri.clone(),
                        ]);
                    }
                    t.print_or("no schemas");
                }
            }
        }
        SchemaAction::Discovered {
            topic,
            source,
            ty,
            adopt,
        } => {
            let topic = name_segment("topic", &topic)?;
            let query = match (&source, &ty) {
                (Some(s), Some(t)) => discovered_query(s, t),
                _ => String::new(),
            };
            let list: DiscoveredList = api
                .get(&format!("/v1/topics/{topic}/discovered{query}"))
                .await?;
            if let Some(name) = adopt {
                let name = name_segment("schema", &name)?;
                let found = list
                    .schemas
                    .first()
                    .ok_or_else(|| usage("nothing discovered for that source and type"))?;
                let (status, info): (_, SchemaVersionInfo) = api
                    .json(Method::PUT, &format!("/v1/schemas/{name}"), |r| {
                        r.json(&found.schema)
                    })
                    .await?;
                let verb = if status == StatusCode::CREATED {
                    "registered "
                } else {
                    "unchanged: "
                };
                return print_version(&api, &info, verb);
            }
            match api.output {
                Output::Json => api.print_json(&list)?,
                Output::Table if source.is_some() => {
                    for s in &list.schemas {
                        println!(
                            "source {} type {}: {} events, {} versions",
                            s.source,
                            s.ty,
                            s.events,
                            s.versions.len()
                        );
                        for v in &s.versions {
                            println!("version {}:", v.version);
                            println!("{}", serde_json::to_string_pretty(&v.schema)?);
                        }
                    }
                }
                Output::Table => {
                    let mut t = Table::new(["SOURCE", "TYPE", "LATEST", "EVENTS", "FIELDS"]);
                    for s in &list.schemas {
                        let fields = s.schema["properties"]
                            .as_object()
                            .map_or(0, serde_json::Map::len);
                        t.row([
                            s.source.clone(),
                            s.ty.clone(),
                            s.latest.to_string(),
                            s.events.to_string(),
                            fields.to_string(),
                        ]);
                    }
                    t.print_or("nothing discovered yet");
                    if list.skipped > 0 {
                        println!(
                            "({} events not inferred: sampled out under load or past the bounds)",
                            list.skipped
                        );
                    }
                }
            }
        }
        SchemaAction::Delete { name } => {
            let name = name_segment("schema", &name)?;
            api.send(Method::DELETE, &format!("/v1/schemas/{name}"), |r| r)
                .await?;
            match api.output {
                Output::Json => println!("{}", json!({"deleted": name})),
                Output::Table => println!("deleted schema {name}"),
            }
        }
    }
    Ok(())
}
