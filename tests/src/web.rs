//! A range-capable web server for the virtual-media tests: Debian's nginx on 127.0.0.1, its
//! configuration and temporary files in a test directory. Its worker processes run as
//! `nobody`: the served files and their directories must be readable by all.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, tool};

/// nginx; dropping it stops master and workers (killing only the master would leave its
/// workers serving).
pub struct Nginx {
    proc: Proc,
    conf: std::path::PathBuf,
    prefix: std::path::PathBuf,
}

impl Nginx {
    /// Stops master and workers.
    pub fn stop(&mut self) {
        let _ = Command::new(tool("nginx"))
            .arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .arg(&self.prefix)
            .args(["-s", "stop"])
            .status();
        self.proc.wait_exit(Duration::from_secs(20));
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.proc.exit_status().is_none() {
            self.stop();
        }
    }
}

/// nginx serving `root` on 127.0.0.1:`port` (static files answer range requests).
pub fn nginx(dir: &Path, root: &Path, port: u16) -> Nginx {
    nginx_on(dir, root, &format!("127.0.0.1:{port}"), port, None)
}

/// nginx serving `root` over HTTPS on 127.0.0.1:`port` with the server certificate and key of
/// the QEMU-layout credentials directory `creds`.
pub fn nginx_tls(dir: &Path, root: &Path, port: u16, creds: &Path) -> Nginx {
    nginx_on(dir, root, &format!("127.0.0.1:{port}"), port, Some(creds))
}

fn nginx_on(dir: &Path, root: &Path, listen: &str, port: u16, creds: Option<&Path>) -> Nginx {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    let listen = match creds {
        None => listen.to_string(),
        Some(c) => format!(
            "{listen} ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate {}; ssl_certificate_key {}",
            c.join("server-cert.pem").display(),
            c.join("server-key.pem").display()
        ),
    };
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/cb;\n\
             proxy_temp_path {d}/px;\n fastcgi_temp_path {d}/fc;\n uwsgi_temp_path {d}/uw;\n\
             scgi_temp_path {d}/sc;\n server {{ listen {listen}; root {}; }}\n}}\n",
            root.display()
        ),
    )
    .unwrap();
    let mut c = Command::new(tool("nginx"));
    c.arg("-c").arg(&conf).arg("-p").arg(dir);
    let mut p = Proc::spawn("nginx", c);
    let end = Instant::now() + Duration::from_secs(20);
    while !crate::is_listening(port) {
        p.assert_alive();
        assert!(Instant::now() < end, "nginx did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        proc: p,
        conf,
        prefix: dir.to_path_buf(),
    }
}
