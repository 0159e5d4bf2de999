//! A private PostgreSQL cluster started from the system's binaries: `ops up` keeps one under
//! `./.data`, `ops bench` and the tests start throwaway ones.
//!
//! The binaries are found on PATH, through `pg_config --bindir`, or under
//! `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root, so as root every command
//! runs as the `postgres` user, which then owns the data directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why a cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, via pg_config or under /usr/lib/postgresql/*/bin: \
         install them (Debian/Ubuntu: apt-get install -y postgresql) or set DATABASE_URL"
    )]
    NotInstalled,
    /// A command failed; its output is attached.
    #[error("{command} failed: {output}")]
    Command {
        /// What was run.
        command: String,
        /// Its stderr and stdout.
        output: String,
    },
    /// A file or process operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

type Result<T> = std::result::Result<T, ClusterError>;

/// How the cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// PostgreSQL's defaults (fsync on): `ops up` and benchmarks.
    Full,
    /// fsync, synchronous commit and full-page writes off: throwaway test clusters only.
    Off,
}

/// A PostgreSQL cluster in a directory of ours, started on a free loopback port.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The server options it was started with, reused on restart.
    opts: String,
}

impl Cluster {
    /// Start the cluster in `dir` (created and initialised if empty; reused otherwise) on a free
    /// port of 127.0.0.1. The server's log goes to `dir/server.log`.
    pub fn start(dir: &Path, durability: Durability) -> Result<Self> {
        let bin = find_bindir()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| ClusterError::Io(format!("create {}", dir.display()), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| ClusterError::Io(format!("resolve {}", dir.display()), e))?;
        let data = dir.join("data");
        let as_root = is_root();
        if as_root {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        if !data.join("PG_VERSION").exists() {
            run(pg_command(&bin, "initdb", as_root)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-D",
                ])
                .arg(&data))?;
        }
        let port = free_port()?;
        let mut opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c max_connections=200",
            dir.display()
        );
        if durability == Durability::Off {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        run(pg_command(&bin, "pg_ctl", as_root)
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-o", &opts]))?;
        Ok(Self {
            bin,
            dir,
            port,
            opts,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database`, as the `postgres` superuser (trust auth, loopback).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stop the server, waiting for it (fast shutdown: open sessions are ended).
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w"])
    }

    /// Start the server again after [`Cluster::stop`], on the same port.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl(&["start", "-w", "-t", "60", "-o", &self.opts])
    }

    /// Restart the server on the same port (immediate stop: as close to a crash as a test needs).
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])?;
        self.pg_ctl(&["start", "-w", "-t", "60", "-o", &self.opts])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        run(pg_command(&self.bin, "pg_ctl", is_root())
            .args(args)
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log")))
        .map(drop)
    }

    /// The directory the cluster lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The directory holding `initdb` and `pg_ctl`.
pub fn find_bindir() -> Result<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_tools(&d) {
                return Ok(d);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&d) {
            return Ok(d);
        }
    }
    // The newest major version wins.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has_tools(d))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, d)| d)
        .ok_or(ClusterError::NotInstalled)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn pg_command(bin: &Path, tool: &str, as_root: bool) -> Command {
    let exe = bin.join(tool);
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run(cmd: &mut Command) -> Result<Output> {
    let command = format!("{:?}", cmd.get_program())
        + " "
        + &cmd
            .get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ClusterError::Io(format!("run {command}"), e))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        });
    }
    Ok(out)
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ClusterError::Io("bind a free port".into(), e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| ClusterError::Io("read the free port".into(), e))
}
