//! `kvmio creds generate` and `kvmio creds check`, and the development credentials of
//! `kvmio serve`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::args::creds::CredsCommand;

/// Runs a `kvmio creds` command.
pub(crate) fn run(c: CredsCommand) -> Result<()> {
    match c {
        CredsCommand::Generate {
            dir,
            hostnames,
            ips,
            client_cn,
            days,
            key,
            force,
        } => {
            let mut o = tls_glue::GenerateOptions::default();
            if !hostnames.is_empty() {
                o.hostnames = hostnames;
            }
            if !ips.is_empty() {
                o.ips = ips;
            }
            o.client_cn = client_cn;
            o.validity_days = days;
            o.overwrite = force;
            o.key_algorithm = key.algorithm();
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let g = tls_glue::generate_qemu_layout(&dir, &o)?;
            for f in &g.files {
                say!("wrote {}", f.display());
            }
            say!("client certificate DN (for --tls-authz): {}", g.client_dn);
            say!("server certificate SHA-256: {}", g.server_fingerprint);
            Ok(())
        }
        CredsCommand::Check { dir, endpoint } => {
            let report = tls_glue::check_dir(&dir, endpoint.endpoint());
            if report.diagnostics.is_empty() {
                say!(
                    "{}: the {} credentials are fine",
                    dir.display(),
                    endpoint.name()
                );
                return Ok(());
            }
            print!("{report}");
            if report.has_errors() {
                bail!(
                    "{}: the {} credentials cannot be used",
                    dir.display(),
                    endpoint.name()
                );
            }
            Ok(())
        }
    }
}

/// The per-user directory for development credentials.
pub(crate) fn dev_creds_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .context("neither XDG_DATA_HOME nor HOME is set: pass --tls-creds")?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(base.join("kvmio").join("dev-pki"))
}

/// Uses the development credentials in `dir`, generating them on first use; warns either way.
pub(crate) fn ensure_dev_creds(dir: &Path) -> Result<()> {
    if dir.join("server-cert.pem").exists() {
        eprintln!(
            "kvmio: WARNING: using DEVELOPMENT credentials from {} (made by kvmio; not for production)",
            dir.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let g = tls_glue::generate_qemu_layout(dir, &tls_glue::GenerateOptions::default())?;
    eprintln!(
        "kvmio: WARNING: generated DEVELOPMENT credentials in {}: a CA (its key is there too), a \
         server certificate for localhost/127.0.0.1/::1 and a client certificate ({}). Use them \
         for development only; for production pass --tls-creds with your own PKI.",
        dir.display(),
        g.client_dn
    );
    Ok(())
}
