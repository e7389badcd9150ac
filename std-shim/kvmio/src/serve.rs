//! `kvmio serve`, the main job: a VNC console and NBD virtual media from one process, both over
//! TLS from one credentials object (as QEMU's `-object tls-creds-x509` shared by `-vnc` and the
//! NBD server), configured by flags or a TOML file. With no arguments it works out of the box:
//! TLS required, development credentials generated on first run, the animated test pattern on
//! 127.0.0.1:5900 and a 64 MiB RAM disk on 127.0.0.1:10809. The flags and the file are read
//! here; [`std_shim::serve`] runs the services.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::de::{self, Deserializer, EnumAccess, VariantAccess, Visitor};
use serde::{Deserialize, de::DeserializeSeed};
use std_shim::io::listen::ServerControl;
use std_shim::io::{endpoints, parse_size};
use std_shim::nbd::catalog::{Catalog, parse_export_args};
use std_shim::serve::{Serve, ServeOptions};
use std_shim::services::{Runtime, stop_on_signals};
use std_shim::tls::TlsPolicy;
use std_shim::vnc::jpeg::JpegEncoderChoice;
use std_shim::vnc::settings::VncSettings;
use std_shim::vnc::sharing::SharePolicy;

use crate::args::YesNo;
use crate::args::serve::ServeArgs;
use crate::creds::{dev_creds_dir, ensure_dev_creds};

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileConfig {
    /// `threads` or `tokio`.
    #[serde(default, deserialize_with = "by_name")]
    pub(crate) runtime: Option<Runtime>,
    /// Most connections per service.
    pub(crate) max_connections: Option<usize>,
    /// Listen backlog (default: the system's maximum).
    pub(crate) backlog: Option<u32>,
    /// Seconds to finish negotiating.
    pub(crate) handshake_timeout: Option<u64>,
    /// `[tls]`.
    #[serde(default)]
    pub(crate) tls: FileTls,
    /// `[vnc]`.
    #[serde(default)]
    pub(crate) vnc: FileVnc,
    /// `[nbd]`.
    #[serde(default)]
    pub(crate) nbd: FileNbd,
    /// `[media]`.
    #[serde(default)]
    pub(crate) media: FileMedia,
}

/// `[media]`: the target's virtual media.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileMedia {
    /// The gadget whose LUNs hold them.
    pub(crate) gadget: Option<String>,
    /// The control socket for `kvmio media`.
    pub(crate) control: Option<PathBuf>,
    /// `LUN=SOURCE` inserted at start.
    #[serde(default)]
    pub(crate) insert: Vec<String>,
    /// The CA directory verifying https:// and nbds:// sources (media and exports).
    pub(crate) remote_tls_creds: Option<PathBuf>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileTls {
    /// `require`, `on` or `off`.
    #[serde(default, deserialize_with = "by_name")]
    pub(crate) mode: Option<TlsPolicy>,
    /// Credentials directory.
    pub(crate) creds: Option<PathBuf>,
    /// Require client certificates.
    pub(crate) verify_peer: Option<bool>,
    /// DN allow-list.
    #[serde(default)]
    pub(crate) authz: Vec<String>,
    /// Allow TLS 1.2.
    #[serde(default)]
    pub(crate) tls12: bool,
}

/// `[vnc]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileVnc {
    /// Serve VNC (default true).
    pub(crate) enabled: Option<bool>,
    /// Listen addresses.
    #[serde(default)]
    pub(crate) listen: Vec<String>,
    /// Security list.
    pub(crate) security: Option<String>,
    /// Password file.
    pub(crate) password_file: Option<PathBuf>,
    /// Plain users file.
    pub(crate) plain_users: Option<PathBuf>,
    /// Still image.
    pub(crate) image: Option<PathBuf>,
    /// Pattern size.
    pub(crate) size: Option<String>,
    /// Desktop name.
    pub(crate) name: Option<String>,
    /// The USB gadget whose keyboard and pointer viewers type into.
    pub(crate) hid: Option<String>,
    /// Its keyboard node (instead of looking it up).
    pub(crate) hid_keyboard: Option<PathBuf>,
    /// Its pointer node.
    pub(crate) hid_pointer: Option<PathBuf>,
    /// The target's keyboard layout.
    pub(crate) keyboard_layout: Option<String>,
    /// View-only VNC password file.
    pub(crate) view_password_file: Option<PathBuf>,
    /// View-only Plain users.
    pub(crate) plain_view_users: Option<PathBuf>,
    /// `allow-exclusive`, `force-shared` or `ignore`.
    #[serde(default, deserialize_with = "by_name")]
    pub(crate) share: Option<SharePolicy>,
    /// `auto`, `libjpeg-turbo` or `rust`.
    #[serde(default, deserialize_with = "by_name")]
    pub(crate) jpeg_encoder: Option<JpegEncoderChoice>,
    /// Capture device.
    pub(crate) video: Option<PathBuf>,
    /// Its pixel format.
    pub(crate) video_format: Option<String>,
    /// Its size.
    pub(crate) video_size: Option<String>,
    /// Its frame rate.
    pub(crate) video_fps: Option<u32>,
    /// WebSocket listen addresses.
    #[serde(default)]
    pub(crate) websocket: Vec<String>,
    /// Static files on the WebSocket port.
    pub(crate) web: Option<PathBuf>,
}

/// `[nbd]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileNbd {
    /// Serve NBD (default true).
    pub(crate) enabled: Option<bool>,
    /// Listen addresses.
    #[serde(default)]
    pub(crate) listen: Vec<String>,
    /// Unix socket.
    pub(crate) unix: Option<PathBuf>,
    /// Refuse writes.
    #[serde(default)]
    pub(crate) read_only: bool,
    /// `[[nbd.exports]]`: `name` and either `path` or `memory`.
    #[serde(default)]
    pub(crate) exports: Vec<FileExport>,
}

/// One export in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileExport {
    /// Export name.
    pub(crate) name: String,
    /// File or block device.
    pub(crate) path: Option<PathBuf>,
    /// RAM disk size (`64M`).
    pub(crate) memory: Option<String>,
}

/// A library enum written in the file by its name: read as a derived `Deserialize` reads an enum
/// of unit variants (the same errors), made by its [`FromStr`].
trait ByName: FromStr {
    /// The type's name.
    const NAME: &'static str;
    /// The names `from_str` takes.
    const NAMES: &'static [&'static str];
}

impl ByName for Runtime {
    const NAME: &'static str = "Runtime";
    const NAMES: &'static [&'static str] = &Runtime::NAMES;
}

impl ByName for SharePolicy {
    const NAME: &'static str = "SharePolicy";
    const NAMES: &'static [&'static str] = &["allow-exclusive", "force-shared", "ignore"];
}

impl ByName for JpegEncoderChoice {
    const NAME: &'static str = "JpegEncoderChoice";
    const NAMES: &'static [&'static str] = &JpegEncoderChoice::NAMES;
}

impl ByName for TlsPolicy {
    const NAME: &'static str = "TlsPolicy";
    const NAMES: &'static [&'static str] = &TlsPolicy::NAMES;
}

/// `deserialize_with` for an optional [`ByName`] field.
fn by_name<'de, D: Deserializer<'de>, T: ByName>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_enum(T::NAME, T::NAMES, Named(PhantomData))
        .map(Some)
}

/// Visits a [`ByName`] enum, and as a seed its variant's name.
struct Named<T>(PhantomData<T>);

impl<'de, T: ByName> Visitor<'de> for Named<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "enum {}", T::NAME)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<T, A::Error> {
        let (value, variant) = data.variant_seed(Variant(PhantomData))?;
        variant.unit_variant()?;
        Ok(value)
    }
}

/// The name of a [`ByName`] enum's variant.
struct Variant<T>(PhantomData<T>);

impl<'de, T: ByName> DeserializeSeed<'de> for Variant<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de, T: ByName> Visitor<'de> for Variant<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("variant identifier")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|_| E::unknown_variant(v, T::NAMES))
    }
}

/// Runs `kvmio serve`.
pub(crate) fn run(a: ServeArgs) -> Result<()> {
    let file: FileConfig = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let runtime = a.runtime.or(file.runtime).unwrap_or(Runtime::Threads);
    let max_connections = a.max_connections.or(file.max_connections).unwrap_or(64);
    let backlog = a.backlog.or(file.backlog);
    let handshake_timeout = a.handshake_timeout.or(file.handshake_timeout).unwrap_or(10);
    let policy = a.tls.or(file.tls.mode).unwrap_or(TlsPolicy::Require);
    let verify_peer = match a.tls_verify_peer.as_deref() {
        Some(s) => s
            .parse::<YesNo>()
            .map_err(|e| anyhow::anyhow!("--tls-verify-peer {e}"))?
            .yes(),
        None => file.tls.verify_peer.unwrap_or(true),
    };
    let authz: Vec<String> = if a.tls_authz.is_empty() {
        file.tls.authz.clone()
    } else {
        a.tls_authz.clone()
    };
    let tls12 = a.tls12 || file.tls.tls12;
    let media_args = crate::args::gadget::MediaArgs {
        media: if a.media.media.is_empty() {
            file.media.insert.clone()
        } else {
            a.media.media.clone()
        },
        media_control: a.media.media_control.clone().or(file.media.control.clone()),
        media_gadget: a.media.media_gadget.clone().or(file.media.gadget.clone()),
        remote_tls_creds: a
            .media
            .remote_tls_creds
            .clone()
            .or(file.media.remote_tls_creds.clone()),
    };
    let serve_vnc = !a.no_vnc && file.vnc.enabled.unwrap_or(true);
    let serve_nbd = !a.no_nbd && file.nbd.enabled.unwrap_or(true);
    if !serve_vnc && !serve_nbd {
        bail!("nothing to serve (both VNC and NBD are disabled)");
    }

    // One credentials object, one server configuration, shared by both services.
    let (creds_dir, tls) = if policy == TlsPolicy::Off {
        (None, None)
    } else {
        let dir = match a.tls_creds.clone().or(file.tls.creds.clone()) {
            Some(d) => d,
            None => {
                let d = dev_creds_dir()?;
                ensure_dev_creds(&d)?;
                d
            }
        };
        let config = std_shim::tls::server_config(&dir, verify_peer, &authz, tls12)?;
        (Some(dir), Some(config))
    };
    let remote = crate::gadget::remote_tls(&media_args, creds_dir.as_deref(), tls12);
    let _media = crate::gadget::start_media(&media_args, remote.clone())?;

    let mut serve = Serve::new(ServeOptions {
        runtime,
        policy,
        tls,
        max_connections,
        backlog,
        handshake_timeout,
    });
    if serve_vnc {
        let listen = if a.vnc_listen.is_empty() {
            &file.vnc.listen
        } else {
            &a.vnc_listen
        };
        let size = a.size.as_ref().or(file.vnc.size.as_ref());
        let name = a.name.as_ref().or(file.vnc.name.as_ref());
        let security = a.vnc_security.as_ref().or(file.vnc.security.as_ref());
        let password_file = a.password_file.as_ref().or(file.vnc.password_file.as_ref());
        let plain_users = a.plain_users.as_ref().or(file.vnc.plain_users.as_ref());
        let image = a.image.as_ref().or(file.vnc.image.as_ref());
        let hid_args = crate::args::gadget::HidArgs {
            hid: a.hid.hid.clone().or(file.vnc.hid.clone()),
            hid_keyboard: a.hid.hid_keyboard.clone().or(file.vnc.hid_keyboard.clone()),
            hid_pointer: a.hid.hid_pointer.clone().or(file.vnc.hid_pointer.clone()),
            keyboard_layout: a
                .hid
                .keyboard_layout
                .clone()
                .or(file.vnc.keyboard_layout.clone()),
        };
        let hid = crate::gadget::hid_config(&hid_args)?;
        let video = crate::gadget::video_config(&crate::args::gadget::VideoArgs {
            video: a.video.video.clone().or(file.vnc.video.clone()),
            video_format: a
                .video
                .video_format
                .clone()
                .or(file.vnc.video_format.clone()),
            video_size: a.video.video_size.clone().or(file.vnc.video_size.clone()),
            video_fps: a.video.video_fps.or(file.vnc.video_fps),
        })?;
        let settings = VncSettings {
            security: security.map(String::as_str),
            password_file: password_file.map(PathBuf::as_path),
            plain_users: plain_users.map(PathBuf::as_path),
            image: image.map(PathBuf::as_path),
            size: size.map_or("1024x768", String::as_str),
            name: name.map_or("kvmio", String::as_str),
            hid: hid.as_ref(),
            view_password_file: a
                .viewers
                .view_password_file
                .as_ref()
                .or(file.vnc.view_password_file.as_ref())
                .map(PathBuf::as_path),
            plain_view_users: a
                .viewers
                .plain_view_users
                .as_ref()
                .or(file.vnc.plain_view_users.as_ref())
                .map(PathBuf::as_path),
            share: a.viewers.share.or(file.vnc.share).unwrap_or_default(),
            video: video.as_ref(),
            jpeg: a
                .viewers
                .jpeg_encoder
                .or(file.vnc.jpeg_encoder)
                .unwrap_or_default(),
        };
        serve.add_vnc(endpoints(listen, None, 5900)?, &settings)?;
        let websocket = if a.web.vnc_websocket.is_empty() {
            &file.vnc.websocket
        } else {
            &a.web.vnc_websocket
        };
        let web = a.web.web.as_ref().or(file.vnc.web.as_ref());
        if !websocket.is_empty() {
            let root = web.map(|d| std_shim::web::WebRoot::new(d)).transpose()?;
            serve.add_vnc_websocket(endpoints(websocket, None, 5700)?, root)?;
        } else if web.is_some() {
            bail!("--web needs --vnc-websocket (the files are served on the WebSocket port)");
        }
    }
    if serve_nbd {
        let (mut files, mut memory) = parse_export_args(&a.exports, &a.memory)?;
        if files.is_empty() && memory.is_empty() {
            for e in &file.nbd.exports {
                match (&e.path, &e.memory) {
                    (Some(p), None) => files.push((e.name.clone(), p.clone())),
                    (None, Some(s)) => memory.push((e.name.clone(), parse_size(s)?)),
                    _ => bail!("export {:?}: give exactly one of path and memory", e.name),
                }
            }
        }
        let read_only = a.read_only || file.nbd.read_only;
        let catalog = Catalog::build(&files, &memory, read_only, 64 << 20, &remote)?;
        let listen = if a.nbd_listen.is_empty() {
            &file.nbd.listen
        } else {
            &a.nbd_listen
        };
        let unix = a.nbd_unix.as_ref().or(file.nbd.unix.as_ref());
        serve.add_nbd(
            catalog,
            endpoints(listen, unix.map(PathBuf::as_path), 10809)?,
        );
    }

    let control = Arc::new(ServerControl::default());
    stop_on_signals(&control)?;
    let printed = std::sync::Once::new();
    let expected = serve.len();
    let bound_count = std::sync::atomic::AtomicUsize::new(0);
    let (vnc_addr, nbd_addr, catalog) = (serve.vnc_address(), serve.nbd_address(), serve.catalog());
    serve.run(control, |label, what, bound| {
        for b in bound {
            eprintln!("kvmio: {label} serving {what} on {b}");
        }
        if bound_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == expected {
            printed.call_once(|| {
                print_howto(
                    creds_dir.as_deref(),
                    vnc_addr,
                    nbd_addr,
                    catalog,
                    verify_peer,
                )
            });
        }
    })?;
    eprintln!("kvmio: stopped");
    Ok(())
}

/// The exact commands to connect with kvmio, nbdinfo, qemu-img and gvnccapture.
fn print_howto(
    creds: Option<&Path>,
    vnc: Option<std::net::SocketAddr>,
    nbd: Option<std::net::SocketAddr>,
    catalog: Option<&Catalog>,
    verify_peer: bool,
) {
    let mut s = String::from("\nConnect with:\n");
    let export = catalog
        .and_then(|c| c.specs().first().map(|s| s.name.clone()))
        .unwrap_or_default();
    if let Some(a) = nbd {
        let (host, port) = (a.ip(), a.port());
        let host = if a.is_ipv6() {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match creds {
            Some(d) => {
                let d = d.display();
                s += &format!("  kvmio nbd info --tls-creds {d} nbds://{host}:{port}/{export}\n");
                s += &format!(
                    "  kvmio nbd copy --tls-creds {d} nbds://{host}:{port}/{export} disk.img\n"
                );
                s += &format!("  nbdinfo 'nbds://{host}:{port}/{export}?tls-certificates={d}'\n");
                s += &format!(
                    "  qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir={d} \
                     --image-opts driver=nbd,host={},port={port},export={export},tls-creds=tls0\n",
                    a.ip()
                );
            }
            None => {
                s += &format!("  kvmio nbd info nbd://{host}:{port}/{export}\n");
                s += &format!("  nbdinfo nbd://{host}:{port}/{export}\n");
                s += &format!("  qemu-img info nbd://{host}:{port}/{export}\n");
            }
        }
    }
    if let Some(a) = vnc {
        let host = if a.is_ipv6() {
            format!("[{}]", a.ip())
        } else {
            a.ip().to_string()
        };
        match creds {
            Some(d) => {
                let d = d.display();
                s += &format!(
                    "  kvmio vnc capture --tls-creds {d} vnc://{host}:{} screen.png\n",
                    a.port()
                );
                if a.port() >= 5900 {
                    if verify_peer {
                        s += &format!(
                            "  gvnccapture reads its certificates from ~/.pki: mkdir -p ~/.pki/CA ~/.pki/gvnccapture/private \
                             && cp {d}/ca-cert.pem ~/.pki/CA/cacert.pem && cp {d}/client-cert.pem ~/.pki/gvnccapture/clientcert.pem \
                             && cp {d}/client-key.pem ~/.pki/gvnccapture/private/clientkey.pem\n"
                        );
                    } else {
                        s += &format!(
                            "  gvnccapture reads the CA from ~/.pki: mkdir -p ~/.pki/CA && cp {d}/ca-cert.pem ~/.pki/CA/cacert.pem\n"
                        );
                    }
                    s += &format!("  gvnccapture {host}:{} screen.png\n", a.port() - 5900);
                }
            }
            None => {
                s += &format!("  kvmio vnc capture vnc://{host}:{} screen.png\n", a.port());
                if a.port() >= 5900 {
                    s += &format!("  gvnccapture {host}:{} screen.png\n", a.port() - 5900);
                }
            }
        }
    }
    eprint!("{s}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let text = include_str!("../../../docs/kvmio-serve.toml");
        let c: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(c.tls.mode, Some(TlsPolicy::Require));
        assert_eq!(c.nbd.exports.len(), 2);
        assert!(c.vnc.listen.iter().any(|l| l.contains("5900")));
        // the commented keys parse too
        let uncommented = text
            .replace("# websocket = ", "websocket = ")
            .replace("# web = ", "web = ")
            .replace("# jpeg-encoder = ", "jpeg-encoder = ");
        let c: FileConfig = toml::from_str(&uncommented).unwrap();
        assert_eq!(c.vnc.jpeg_encoder, Some(JpegEncoderChoice::Auto));
        assert_eq!(c.vnc.websocket, ["0.0.0.0:5700"]);
        assert_eq!(c.vnc.web.as_deref(), Some(Path::new("/usr/share/novnc")));
    }

    #[test]
    fn enums_are_read_by_name_as_before() {
        let c: FileConfig = toml::from_str("runtime = \"tokio\"\n[tls]\nmode = \"on\"\n").unwrap();
        assert_eq!(c.runtime, Some(Runtime::Tokio));
        assert_eq!(c.tls.mode, Some(TlsPolicy::On));
        let c: FileConfig = toml::from_str("").unwrap();
        assert_eq!((c.runtime, c.tls.mode), (None, None));
        // The messages a derived `Deserialize` gave.
        let e = |t: &str| toml::from_str::<FileConfig>(t).unwrap_err().to_string();
        let policy = e("[tls]\nmode = \"Require\"\n");
        assert!(
            policy.contains("unknown variant `Require`, expected one of `require`, `on`, `off`"),
            "{policy}"
        );
        let runtime = e("runtime = \"fibers\"\n");
        assert!(
            runtime.contains("unknown variant `fibers`, expected `threads` or `tokio`"),
            "{runtime}"
        );
        assert!(e("runtime = 1\n").contains("wanted string or table"));
        assert!(e("[tls]\nmode = { x = 1 }\n").contains("unknown variant `x`"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("[tls]\nmod = \"require\"\n").is_err());
        assert!(
            toml::from_str::<FileConfig>("[nbd]\nexports = [{ name = \"x\", size = 1 }]\n")
                .is_err()
        );
    }
}
