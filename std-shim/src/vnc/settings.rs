//! A VNC server's settings as a user states them (TigerVNC security names, a password file, a
//! users file, an image or the size of the test pattern, a desktop name), made into a
//! [`VncServerConfig`]: the files read, the default security list picked, the image loaded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::input::Input;
use crate::input::hidg::{HidGadget, HidGadgetConfig};
use crate::vnc::desktop::{Desktop, Image, parse_geometry};
use crate::vnc::jpeg::JpegEncoderChoice;
use crate::vnc::security::{
    PlainUsers, SecName, parse_password_file, parse_security_list, view_password_of,
};
use crate::vnc::server::VncServerConfig;
use crate::vnc::sharing::SharePolicy;

/// What a VNC server offers (`kvmio vnc serve`'s flags, the `[vnc]` table of `kvmio serve`).
#[derive(Debug, Clone, Copy)]
pub struct VncSettings<'a> {
    /// Security types, most preferred first, with TigerVNC's names (see
    /// [`parse_security_list`]); `None`: the default from what is given.
    pub security: Option<&'a str>,
    /// The VNC password file (`vncpasswd -f` format or a text line).
    pub password_file: Option<&'a Path>,
    /// The Plain users file (`user:password` lines).
    pub plain_users: Option<&'a Path>,
    /// A PNG shown instead of the test pattern.
    pub image: Option<&'a Path>,
    /// The size of the test pattern, `WxH` (see [`parse_geometry`]; unused with an image).
    pub size: &'a str,
    /// The desktop name.
    pub name: &'a str,
    /// The target computer's USB HID gadget (`None`: input is only logged).
    pub hid: Option<&'a HidGadgetConfig>,
    /// The view-only VNC password file (same formats as `password_file`; a 16-byte
    /// `vncpasswd -f` password file also holds one in its second half).
    pub view_password_file: Option<&'a Path>,
    /// View-only Plain users (`user:password` lines).
    pub plain_view_users: Option<&'a Path>,
    /// What the ClientInit shared flag does.
    pub share: SharePolicy,
    /// Frames from a capture device instead of the pattern or the image.
    pub video: Option<&'a crate::video::VideoConfig>,
    /// The JPEG compressor for Tight viewers that ask for JPEG.
    pub jpeg: JpegEncoderChoice,
}

impl Default for VncSettings<'_> {
    /// The test pattern at 1024×768 named "kvmio", the default security list, input logged,
    /// viewers may ask for exclusive access.
    fn default() -> Self {
        Self {
            security: None,
            password_file: None,
            plain_users: None,
            image: None,
            size: "1024x768",
            name: "kvmio",
            hid: None,
            view_password_file: None,
            plain_view_users: None,
            share: SharePolicy::AllowExclusive,
            video: None,
            jpeg: JpegEncoderChoice::Auto,
        }
    }
}

impl VncSettings<'_> {
    /// Builds the server configuration: reads the password and users files, picks the default
    /// security list (with `tls`, TLS credentials are available: the X509 types), loads the
    /// image. Clients get `handshake_timeout` seconds (at least 1) to finish the handshake. The
    /// configuration's `security` says whether TLS is needed; check it with
    /// [`VncServerConfig::validate`].
    pub fn server_config(&self, tls: bool, handshake_timeout: u64) -> Result<VncServerConfig> {
        let read = |p: &Path| {
            std::fs::read(p).with_context(|| format!("read password file {}", p.display()))
        };
        let mut view_password = None;
        let password = match self.password_file {
            Some(p) => {
                let bytes = read(p)?;
                let pw = parse_password_file(&bytes);
                if pw.len() > 8 {
                    log::warn!("VNC authentication uses only the first 8 bytes of the password");
                }
                view_password = view_password_of(&bytes);
                Some(pw)
            }
            None => None,
        };
        if let Some(p) = self.view_password_file {
            view_password = Some(parse_password_file(&read(p)?));
        }
        if view_password.is_some() && password.is_none() {
            bail!("a view-only password needs the full one too (--password-file)");
        }
        if view_password.is_some() && view_password == password {
            bail!("the view-only password is the same as the full one");
        }
        let plain_view_users = self.plain_view_users.map(PlainUsers::load).transpose()?;
        let plain_users = self.plain_users.map(PlainUsers::load).transpose()?;
        let security = match self.security {
            Some(s) => parse_security_list(s)?,
            None => {
                let mut l = Vec::new();
                if tls {
                    if password.is_some() {
                        l.push(SecName::X509Vnc);
                    }
                    if plain_users.is_some() {
                        l.push(SecName::X509Plain);
                    }
                    if l.is_empty() {
                        l.push(SecName::X509None);
                    }
                } else if password.is_some() {
                    l.push(SecName::VncAuth);
                } else if plain_users.is_some() {
                    bail!(
                        "Plain sends passwords in the clear: give --tls-creds, or --security Plain"
                    );
                } else {
                    l.push(SecName::None);
                }
                l
            }
        };
        if security.contains(&SecName::None) {
            log::warn!("security type None: anyone who can connect sees the desktop");
        }
        if security.contains(&SecName::Plain) {
            log::warn!("security type Plain sends user names and passwords in the clear");
        }
        let desktop = match (self.video, self.image) {
            (Some(_), Some(_)) => bail!("give a capture device or an image, not both"),
            (Some(v), None) => Desktop::Video(crate::video::Hub::start(v.clone())),
            (None, Some(p)) => Desktop::Still(Arc::new(Image::load(p)?)),
            (None, None) => {
                let (width, height) = parse_geometry(self.size)?;
                Desktop::Pattern { width, height }
            }
        };
        let (jpeg, jpeg_name) = self.jpeg.factory()?;
        Ok(VncServerConfig {
            jpeg,
            jpeg_name,
            security,
            password,
            plain_users,
            desktop,
            name: self.name.to_string(),
            fps: 15,
            handshake_timeout: Duration::from_secs(handshake_timeout.max(1)),
            throttle_threshold: 5,
            view_password,
            plain_view_users,
            share: self.share,
            input: Arc::new(match self.hid {
                Some(h) => Input::new(Box::new(HidGadget::open(h)?)),
                None => Input::log(),
            }),
        })
    }
}
