//! `swarmup workshop`: a swarm per student, handout cards, and teardown by tag.
//!
//! A workshop NAME is N+S ordinary clusters `NAME-s01…` (students, then spares), each
//! with its own cluster record, tagged `swarmup-workshop:NAME` and
//! `swarmup-expires:UNIX` at its provider so that `ls`, `destroy` and `reap` find them
//! without local state; plus a workshop record (`record.rs`) with the students' logins and
//! each cluster's last error. `create.rs` makes (and resumes, and resets) clusters with
//! `create`'s own stages; `ops.rs` holds the other verbs; `plan.rs` the decisions.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

mod create;
mod ops;
mod plan;
mod record;

use crate::output::Output;

#[derive(Debug, Subcommand)]
pub enum WorkshopCommand {
    /// Create a workshop: one cluster per student (NAME-s01, …), or resume one.
    Create(WorkshopCreateArgs),
    /// Print one handout card per student: nodes, login, first commands.
    Cards {
        name: String,
        /// html (eight cards per A4 page), pdf, csv or json.
        #[arg(long, value_enum, default_value = "html")]
        format: CardFormat,
        /// Write the cards to FILE instead of standard output.
        #[arg(short = 'o', long = "output-file", value_name = "FILE")]
        output_file: Option<PathBuf>,
    },
    /// Every student's cluster: nodes ready, services, time left, last error.
    Status { name: String },
    /// Run a command as root on every node of every cluster: `workshop exec NAME -- CMD`.
    Exec {
        name: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Destroy one student's cluster and create it again (same name, login and expiry).
    Reset {
        name: String,
        /// The student: s03, 3 or NAME-s03.
        student: String,
        /// The swarm-node binary to install (default: the one next to swarmup).
        #[arg(long, env = "SWARMUP_SWARM_NODE_BINARY")]
        swarm_node_binary: Option<PathBuf>,
    },
    /// Destroy every cluster of a workshop, found by its tag, and the local records.
    Destroy {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        /// Look only at this provider (default: the workshop's, else every provider that
        /// can list clusters from here).
        #[arg(long)]
        provider: Option<String>,
    },
    /// List workshops: those providers find by tag, and those recorded here.
    Ls,
    /// Destroy every workshop whose time to live has passed (for a timer or cron).
    Reap {
        /// Only say what would be destroyed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CardFormat {
    Html,
    Pdf,
    Csv,
    Json,
}

impl From<CardFormat> for swarmup_cards::Format {
    fn from(f: CardFormat) -> Self {
        match f {
            CardFormat::Html => swarmup_cards::Format::Html,
            CardFormat::Pdf => swarmup_cards::Format::Pdf,
            CardFormat::Csv => swarmup_cards::Format::Csv,
            CardFormat::Json => swarmup_cards::Format::Json,
        }
    }
}

#[derive(Debug, Args)]
pub struct WorkshopCreateArgs {
    /// The workshop's name; clusters are NAME-s01, NAME-s02, …
    #[arg(long)]
    pub name: Option<String>,
    /// How many students (one cluster each).
    #[arg(long)]
    pub students: Option<u32>,
    /// Nodes per student.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Managers per student (odd; default 1 below 3 nodes, else 3).
    #[arg(long)]
    pub managers: Option<u32>,
    /// Where the machines come from: lab, digitalocean or virtualbox. [default: lab]
    #[arg(long)]
    pub provider: Option<String>,
    /// Extra clusters for late students. [default: 0]
    #[arg(long)]
    pub spares: Option<u32>,
    /// How long the workshop lives: 8h, 90m, 2d; `workshop reap` destroys it afterwards.
    /// [default: 8h]
    #[arg(long)]
    pub ttl: Option<String>,
    /// Students log in with a generated key pair each instead of a password.
    #[arg(long)]
    pub student_keys: bool,
    /// Show the plan and its cost, create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A workshop file (YAML) with the same settings.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Lab: drop everything the nodes send outside their cluster's subnet.
    #[arg(long)]
    pub offline: bool,
    /// DigitalOcean region.
    #[arg(long)]
    pub region: Option<String>,
    /// DigitalOcean droplet size.
    #[arg(long)]
    pub size: Option<String>,
    /// DigitalOcean or VirtualBox image.
    #[arg(long)]
    pub image: Option<String>,
    /// The swarm-node binary to install (default: the one next to swarmup).
    #[arg(long, env = "SWARMUP_SWARM_NODE_BINARY")]
    pub swarm_node_binary: Option<PathBuf>,
}

pub async fn run(out: &Output, command: WorkshopCommand) -> Result<()> {
    match command {
        WorkshopCommand::Create(args) => create::create(out, args).await,
        WorkshopCommand::Cards {
            name,
            format,
            output_file,
        } => ops::cards(out, &name, format, output_file).await,
        WorkshopCommand::Status { name } => ops::status(out, &name).await,
        WorkshopCommand::Exec { name, command } => ops::exec(out, &name, &command).await,
        WorkshopCommand::Reset {
            name,
            student,
            swarm_node_binary,
        } => create::reset(out, &name, &student, swarm_node_binary).await,
        WorkshopCommand::Destroy {
            name,
            yes,
            provider,
        } => ops::destroy(out, &name, yes, provider).await,
        WorkshopCommand::Ls => ops::ls(out).await,
        WorkshopCommand::Reap { dry_run } => ops::reap(out, dry_run).await,
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The recorded workshop NAME, or a one-line error saying where to look.
fn load(name: &str) -> Result<(record::WorkshopDir, record::WorkshopRecord)> {
    crate::records::validate_name(name).map_err(|_| {
        anyhow::anyhow!("invalid workshop name {name:?}: see `swarmup workshop ls`")
    })?;
    let dir = record::WorkshopDir::of(name)?;
    if !dir.exists() {
        anyhow::bail!(
            "no workshop named {name} is recorded here: see `swarmup workshop ls` (destroy works without a record: `swarmup workshop destroy {name}`)"
        );
    }
    let r = dir.load()?;
    Ok((dir, r))
}
