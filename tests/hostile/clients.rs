//! What the hostile-client test and bench share: the binaries started with resource
//! limits, a big inventory, and the clients that misbehave.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pullwatch_testbench::{free_port, http_request, process_status_kib, workspace_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A child process with resource limits, its output in a file; killed on drop.
pub struct Process {
    child: std::process::Child,
    log: PathBuf,
}

impl Process {
    pub fn start(
        binary: &str,
        args: &[String],
        dir: &Path,
        nofile: Option<u64>,
        address_space: Option<u64>,
    ) -> Process {
        use std::os::unix::process::CommandExt;
        let binary = workspace_binary(binary).unwrap();
        let log = dir.join(format!(
            "{}-{}.log",
            binary.file_name().unwrap().to_string_lossy(),
            free_port()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = std::process::Command::new(binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let set = |resource, value: u64| {
                    let limit = libc::rlimit {
                        rlim_cur: value,
                        rlim_max: value,
                    };
                    if libc::setrlimit(resource, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                };
                if let Some(n) = nofile {
                    set(libc::RLIMIT_NOFILE, n)?;
                }
                if let Some(bytes) = address_space {
                    set(libc::RLIMIT_AS, bytes)?;
                }
                Ok(())
            });
        }
        Process {
            child: command.spawn().unwrap(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn rss_kib(&self) -> u64 {
        process_status_kib(self.pid(), "VmRSS:").unwrap_or(0)
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path`: status and how long it took (None: no answer within 5 s).
pub async fn timed_get(addr: SocketAddr, path: &str) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        http_request(addr, http::Method::GET, path, &[], Vec::new()),
    )
    .await;
    let status = match answer {
        Ok(Ok(response)) => Some(response.status),
        _ => None,
    };
    (status, started.elapsed())
}

pub async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http_request(addr, http::Method::GET, path, &[], Vec::new())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    (response.status, response.text())
}

pub async fn wait_ready(addr: SocketAddr, process: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(process.alive(), "exited before ready:\n{}", process.log());
        if let (Some(200), _) = timed_get(addr, "/readyz").await {
            return;
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", process.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `count` deployments of 10 containers each, images on a closed port (every check
/// fails at once, with a reason), in one file.
pub fn big_inventory(dir: &Path, deployments: usize) -> PathBuf {
    let mut yaml = String::new();
    for d in 0..deployments {
        let containers: String = (0..10)
            .map(|c| {
                format!(
                    "        - name: c{c}\n          image: \"127.0.0.1:9/team/app{}:v{c}\"\n",
                    d % 50
                )
            })
            .collect();
        yaml.push_str(&format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: w{d:05}, namespace: ns{}}}\nspec:\n  selector: {{matchLabels: {{app: w}}}}\n  template:\n    metadata: {{labels: {{app: w}}}}\n    spec:\n      containers:\n{containers}",
            d % 20
        ));
    }
    let path = dir.join("inventory.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `pullwatch-aggregator serve` over the `manifests` inventory on a free loopback port,
/// with `flags` after the bind address and the given fd / address-space limits; the
/// process and the address it serves on.
pub fn serve_manifests(
    dir: &Path,
    manifests: &Path,
    flags: &[String],
    nofile: Option<u64>,
    address_space: Option<u64>,
) -> (Process, SocketAddr) {
    let port = free_port();
    let mut args = vec![
        "serve".to_string(),
        format!("--manifests={}", manifests.display()),
        format!("--bind-address=127.0.0.1:{port}"),
    ];
    args.extend_from_slice(flags);
    let process = Process::start("pullwatch-aggregator", &args, dir, nofile, address_space);
    (process, format!("127.0.0.1:{port}").parse().unwrap())
}

/// One slow client: connects (within 2 s; None if it cannot), sends `partial` (the
/// start of a request, if any) and no more, and watches from its own task how long the
/// server takes to close the connection (None: still open after 30 s).
pub async fn slow_connection(
    addr: SocketAddr,
    partial: Option<&[u8]>,
) -> Option<JoinHandle<Option<Duration>>> {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
    else {
        return None;
    };
    let opened = Instant::now();
    if let Some(partial) = partial {
        let _ = stream.write_all(partial).await;
    }
    Some(tokio::spawn(async move {
        closed_within(&mut stream, Duration::from_secs(30))
            .await
            .map(|_| opened.elapsed())
    }))
}

/// The `i`th of the HTTP/1.1 clients that never read: a connection with a 4 KiB
/// receive buffer that sends `GET /api/v1/images` (even `i`) or `GET /` (odd) and
/// reads nothing of the answer, so the server's writes stall.
pub async fn unread_get(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr).await?;
    let path = if i.is_multiple_of(2) {
        "/api/v1/images"
    } else {
        "/"
    };
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    Ok(stream)
}

/// Until `closed` says the connection was closed (a read gives EOF or an error),
/// reading and discarding at most `budget` bytes; how long it took (None: still open
/// at `deadline`).
pub async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One h2c connection with a zero stream window that opens as many streams of `path`
/// as the server allows (up to `want`) and never reads. Returns how many it opened
/// and a handle that ends when the server closes the connection.
pub async fn zero_window_h2(
    addr: SocketAddr,
    path: &str,
    want: usize,
) -> (
    usize,
    tokio::task::JoinHandle<Instant>,
    Vec<h2::client::ResponseFuture>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    // Ends, with the moment, when the server closes the connection.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
        Instant::now()
    });
    // The server's SETTINGS (its stream cap) arrive first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut opened = Vec::new();
    let mut client = client;
    for _ in 0..want {
        // One handle: ready() waits until its previous stream is open, which the
        // server's stream cap holds back.
        let ready = tokio::time::timeout(Duration::from_millis(300), client.ready()).await;
        let Ok(Ok(mut ready)) = ready else {
            // The last request sent waits in the client for a stream the server does
            // not grant: it was never opened.
            let queued = opened.len().saturating_sub(1);
            return (queued, driver, opened);
        };
        let request = http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .unwrap();
        match ready.send_request(request, true) {
            Ok((response, _)) => opened.push(response),
            Err(_) => break,
        }
        client = ready;
        // Let the server see the stream before asking for the next slot.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (opened.len(), driver, opened)
}
