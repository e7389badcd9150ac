//! The browser side of the console tests: noVNC pages, a Chromium profile that trusts a CA,
//! and `tests/browser/console.mjs` (playwright-core driving Debian's Chromium headless).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;
use crate::vnc::Rgb;

/// The directory with console.mjs, package.json and page/.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// A web root with our console page and noVNC 1.7's core next to it.
pub fn console_root(dir: &Path) -> PathBuf {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(
        browser_dir().join("page/console.html"),
        root.join("console.html"),
    )
    .unwrap();
    let novnc = browser_dir().join("node_modules/@novnc/novnc");
    assert!(
        novnc.join("core/rfb.js").exists(),
        "noVNC is missing: tests/setup.sh installs it (npm ci in tests/browser)"
    );
    let st = Command::new("cp")
        .arg("-r")
        .arg(&novnc)
        .arg(root.join("novnc"))
        .status()
        .unwrap();
    assert!(st.success());
    root
}

/// A HOME whose Chromium profile trusts the CA in `ca` (NSS database, as a user would add it).
pub fn browser_home(dir: &Path, ca: Option<&Path>) -> PathBuf {
    let home = dir.join("home");
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    run(Command::new("certutil").args(["-N", "--empty-password", "-d", &db_arg])).expect_ok();
    if let Some(ca) = ca {
        run(Command::new("certutil")
            .args([
                "-A",
                "-t",
                "C,,",
                "-n",
                "kvmio test CA",
                "-d",
                &db_arg,
                "-i",
            ])
            .arg(ca))
        .expect_ok();
    }
    home
}

/// What the browser saw.
pub struct Seen {
    /// `connected`, `disconnected:…`, `load failed: …`.
    pub state: String,
    /// The console's canvas once connected.
    pub canvas: Option<Rgb>,
    /// The script's stderr (the page's console).
    pub stderr: String,
}

/// Opens `url` in Chromium with `args` for console.mjs.
pub fn browse(home: &Path, url: &str, dir: &Path, args: &[&str]) -> Seen {
    let out = dir.join(format!("canvas-{}.rgba", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let o = run(Command::new("node")
        .current_dir(browser_dir())
        .env("HOME", home)
        .arg("console.mjs")
        .arg(url)
        .arg(&out)
        .args(args));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = o.stderr.clone();
    assert!(o.ok(), "the browser script failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no result line ({e}):\n{stdout}\n{stderr}"));
    let canvas = std::fs::read(&out).ok().map(|raw| {
        let nl = raw.iter().position(|&b| b == b'\n').unwrap();
        let head = std::str::from_utf8(&raw[..nl]).unwrap();
        let (w, h) = head.split_once(' ').unwrap();
        let (w, h) = (w.parse::<usize>().unwrap(), h.parse::<usize>().unwrap());
        let rgba = &raw[nl + 1..];
        assert_eq!(rgba.len(), w * h * 4);
        Rgb {
            width: w,
            height: h,
            data: rgba
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        }
    });
    Seen {
        state: v["state"].as_str().unwrap_or_default().to_string(),
        canvas,
        stderr,
    }
}
