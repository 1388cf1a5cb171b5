//! A real nats-server for cluster tests: started on a free loopback port with
//! JetStream in a temporary directory, stopped (SIGKILL) on drop, restartable on
//! the same port and store. The binary is `$HERALD_NATS_SERVER`, else
//! `.tools/bin/nats-server` (`scripts/install-nats-server` puts it there), else
//! `nats-server` on the PATH.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/nats-server");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("nats-server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server process (optionally a member of a NATS cluster).
pub struct NatsServer {
    pub port: u16,
    pub cluster_port: u16,
    name: String,
    routes: Vec<u16>,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// A single server with JetStream.
    pub fn start() -> Self {
        Self::start_member("n0", free_port(), Vec::new())
    }

    /// Three servers routed into one NATS cluster (JetStream clustered).
    pub fn start_cluster() -> Vec<Self> {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        (0..3)
            .map(|i| Self::start_member(&format!("n{i}"), cluster_ports[i], cluster_ports.clone()))
            .collect()
    }

    fn start_member(name: &str, cluster_port: u16, routes: Vec<u16>) -> Self {
        let store = std::env::temp_dir().join(format!(
            "herald-nats-{}-{name}-{}",
            std::process::id(),
            free_port()
        ));
        let mut server = Self {
            port: free_port(),
            cluster_port,
            name: name.to_owned(),
            routes,
            store,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(&self.store)
        .args(["-n", &self.name]);
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args([
                "--cluster_name",
                "herald-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
                "--routes",
                &routes.join(","),
            ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run scripts/install-nats-server",
                    binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
