//! A throwaway PostgreSQL server of its own for tests that need other server settings
//! (`wal_level=replica`) or another major version (the npm binaries `scripts/testbed`
//! fetches): initdb into a temp dir, run as the `postgres` user when we are root, role
//! `cdc` with the test bed's password, stopped (fast shutdown) on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PW: &str = "cdc-test-pw";

/// The apt PostgreSQL 15 binaries of the test bed.
pub fn pg15_bin() -> PathBuf {
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

/// The newest PostgreSQL binaries (`CDC_TEST_PG_NEWEST_BIN`, set by `scripts/testbed env`).
pub fn newest_bin() -> PathBuf {
    PathBuf::from(
        std::env::var("CDC_TEST_PG_NEWEST_BIN").expect("CDC_TEST_PG_NEWEST_BIN (scripts/testbed env)"),
    )
}

/// A running server.
pub struct PgServer {
    child: Child,
    /// Directory of the Unix socket (for `psql -h`).
    pub socket_dir: PathBuf,
    /// Port.
    pub port: u16,
    /// `postgres://cdc:...@127.0.0.1:port/cdc`.
    pub url: String,
    /// Data directory.
    pub data: PathBuf,
}

fn as_postgres(cmd: &str) -> Command {
    let root = is_root();
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", cmd]);
        c
    } else {
        Command::new(cmd)
    };
    c.stdin(Stdio::null());
    c
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

impl PgServer {
    /// initdb + start on `port` with `settings` (`-c` pairs), then create role and database `cdc`.
    pub fn start(bin: &Path, port: u16, settings: &[&str]) -> PgServer {
        PgServer::start_with(bin, port, settings, &[])
    }

    /// As [`PgServer::start`], with `hba` lines before the default `scram-sha-256` one.
    pub fn start_with(bin: &Path, port: u16, settings: &[&str], hba: &[&str]) -> PgServer {
        let dir = std::env::temp_dir().join("cdc-tests").join(crate::support::unique("pgserver"));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            Command::new("chown").args(["-R", "postgres:postgres", dir.to_str().unwrap()]).status().unwrap();
            Command::new("chmod")
                .args(["755", std::env::temp_dir().join("cdc-tests").to_str().unwrap()])
                .status()
                .unwrap();
        }
        let data = dir.join("data");
        let init = as_postgres(bin.join("initdb").to_str().unwrap())
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
            ])
            .args(["--auth-host=scram-sha-256"])
            .output()
            .unwrap();
        assert!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
        let mut lines = vec!["local all all trust"];
        lines.extend(hba);
        lines.push("host all all 127.0.0.1/32 scram-sha-256");
        std::fs::write(data.join("pg_hba.conf"), lines.join("\n") + "\n").unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        if is_root() {
            Command::new("chown")
                .args(["postgres:postgres", dir.join("server.log").to_str().unwrap()])
                .status()
                .unwrap();
        }
        let mut cmd = as_postgres(bin.join("postgres").to_str().unwrap());
        cmd.args([
            "-D",
            data.to_str().unwrap(),
            "-c",
            &format!("port={port}"),
            "-c",
            "listen_addresses=127.0.0.1",
        ]);
        cmd.args(["-c", &format!("unix_socket_directories={}", dir.display())]);
        for s in settings {
            cmd.args(["-c", s]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let url = format!("postgres://cdc:{PW}@127.0.0.1:{port}/cdc");
        let server = PgServer { child, socket_dir: dir.clone(), port, url, data };
        let start = Instant::now();
        let psql = bin.join("psql");
        let psql = if psql.exists() { psql } else { pg15_bin().join("psql") };
        loop {
            let out = Command::new(&psql)
                .args([
                    "-X",
                    "-q",
                    "-h",
                    dir.to_str().unwrap(),
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args([
                    "-c",
                    &format!("CREATE ROLE cdc LOGIN SUPERUSER REPLICATION PASSWORD '{PW}'"),
                    "-c",
                    "CREATE DATABASE cdc OWNER cdc",
                ])
                .output()
                .unwrap();
            if out.status.success() {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "PostgreSQL in {} did not start: {}\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT: fast shutdown.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
