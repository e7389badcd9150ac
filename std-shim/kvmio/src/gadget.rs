//! `kvmio gadget up|down|status`, and the gadget's HID nodes for the servers.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rfb_core::hid::Layout;
use std_shim::gadget::{self, GadgetSpec, GadgetStatus, LunSpec};
use std_shim::input::hidg::HidGadgetConfig;

use crate::args::gadget::{GadgetCommand, GadgetUpArgs, HidArgs};

/// Runs `kvmio gadget …`.
pub(crate) fn run(c: GadgetCommand) -> Result<()> {
    match c {
        GadgetCommand::Up(a) => {
            let st = gadget::up(&spec(&a)?)?;
            print_status(&a.name.name, &st)
        }
        GadgetCommand::Down(n) => {
            gadget::down(&n.name)?;
            say!("gadget {} removed", n.name);
            Ok(())
        }
        GadgetCommand::Status(n) => print_status(&n.name, &gadget::status(&n.name)?),
        GadgetCommand::Layouts => {
            for l in rfb_core::hid::layouts::ALL {
                say!("{:8} {}", l.name(), l.description());
            }
            Ok(())
        }
    }
}

fn spec(a: &GadgetUpArgs) -> Result<GadgetSpec> {
    let mut luns = Vec::new();
    let kinds: Vec<String> = if a.luns.is_empty() {
        vec!["cdrom".into(), "disk".into()]
    } else {
        a.luns.clone()
    };
    for k in &kinds {
        let (kind, file) = match k.split_once('=') {
            Some((kind, f)) => (kind, Some(PathBuf::from(f))),
            None => (k.as_str(), None),
        };
        let mut l = match kind {
            "none" if kinds.len() == 1 => break,
            "cdrom" => LunSpec::cdrom(),
            "disk" => LunSpec::disk(),
            "disk-ro" => LunSpec {
                read_only: true,
                ..LunSpec::disk()
            },
            _ => bail!("--lun {k:?}: the kinds are cdrom, disk, disk-ro (or none alone)"),
        };
        l.file = file;
        luns.push(l);
    }
    Ok(GadgetSpec {
        name: a.name.name.clone(),
        vendor_id: a.vendor_id,
        product_id: a.product_id,
        manufacturer: a.manufacturer.clone(),
        product: a.product.clone(),
        serial: a.serial.clone(),
        keyboard: !a.no_keyboard,
        pointer: !a.no_pointer,
        luns,
        udc: a.udc.clone(),
        ..GadgetSpec::default()
    })
}

fn print_status(name: &str, st: &GadgetStatus) -> Result<()> {
    say!("gadget {name} ({})", st.path.display());
    match (&st.udc, &st.udc_state) {
        (Some(u), Some(s)) => say!("udc {u} ({s})"),
        (Some(u), None) => say!("udc {u}"),
        _ => say!("udc none (not bound)"),
    }
    if let Some(k) = &st.keyboard {
        say!("keyboard {}", k.display());
    }
    if let Some(p) = &st.pointer {
        say!("pointer {}", p.display());
    }
    for l in &st.luns {
        let kind = match (l.cdrom, l.read_only) {
            (true, _) => "cdrom",
            (false, true) => "disk-ro",
            (false, false) => "disk",
        };
        let medium = l
            .file
            .as_ref()
            .map_or("(no medium)".to_string(), |f| f.display().to_string());
        say!(
            "lun {} {kind}{} {medium}",
            l.index,
            if l.removable { " removable" } else { "" }
        );
    }
    Ok(())
}

/// The HID nodes and layout the servers write to, from `--hid*` (`None`: input is logged).
pub(crate) fn hid_config(a: &HidArgs) -> Result<Option<HidGadgetConfig>> {
    let layout: &'static Layout = match &a.keyboard_layout {
        Some(n) => Layout::by_name(n).with_context(|| {
            format!("no keyboard layout {n:?} (`kvmio gadget layouts` lists them)")
        })?,
        None => &rfb_core::hid::layouts::EN_US,
    };
    let (mut keyboard, mut pointer) = (a.hid_keyboard.clone(), a.hid_pointer.clone());
    if let Some(name) = &a.hid {
        let st = gadget::status(name).with_context(|| {
            format!("--hid {name}: make it with `kvmio gadget up --name {name}`")
        })?;
        keyboard = keyboard.or(st.keyboard);
        pointer = pointer.or(st.pointer);
        if keyboard.is_none() && pointer.is_none() {
            bail!("--hid {name}: the gadget has no keyboard and no pointer");
        }
    } else if keyboard.is_none() && pointer.is_none() {
        if a.keyboard_layout.is_some() {
            bail!("--keyboard-layout needs --hid (or --hid-keyboard)");
        }
        return Ok(None);
    }
    Ok(Some(HidGadgetConfig {
        keyboard,
        pointer,
        layout,
    }))
}

/// What verifies `https://` and `nbds://` sources: `--remote-tls-creds`, else the server's
/// own credentials directory.
pub(crate) fn remote_tls(
    a: &crate::args::gadget::MediaArgs,
    server_creds: Option<&std::path::Path>,
    tls12: bool,
) -> std_shim::nbd::client::ClientTls {
    std_shim::nbd::client::ClientTls {
        creds: a
            .remote_tls_creds
            .clone()
            .or(server_creds.map(std::path::Path::to_path_buf)),
        tls12,
    }
}

/// Starts the virtual media of a server from `--media*` (`None` if none was asked for). Keep
/// the result alive as long as the server runs: dropping it ejects remote media.
pub(crate) fn start_media(
    a: &crate::args::gadget::MediaArgs,
    tls: std_shim::nbd::client::ClientTls,
) -> Result<Option<std::sync::Arc<std_shim::media::Media>>> {
    if a.media.is_empty() && a.media_control.is_none() {
        return Ok(None);
    }
    let media = std_shim::media::Media::new(a.media_gadget.as_deref().unwrap_or("kvmio"), tls)?;
    for m in &a.media {
        let (lun, source) = m
            .split_once('=')
            .with_context(|| format!("--media {m:?}: LUN=SOURCE"))?;
        let lun: usize = lun
            .parse()
            .with_context(|| format!("--media {m:?}: the LUN is a number"))?;
        media.insert(lun, &std_shim::media::Source::parse(source)?)?;
    }
    if let Some(p) = &a.media_control {
        std_shim::media::control::serve(p, media.clone())?;
    }
    Ok(Some(media))
}

/// The capture device from `--video*` (`None`: no capture).
pub(crate) fn video_config(
    a: &crate::args::gadget::VideoArgs,
) -> Result<Option<std_shim::video::VideoConfig>> {
    let Some(device) = &a.video else {
        if a.video_format.is_some() || a.video_size.is_some() || a.video_fps.is_some() {
            bail!("--video-format, --video-size and --video-fps need --video DEV");
        }
        return Ok(None);
    };
    let format = a
        .video_format
        .as_deref()
        .map(std_shim::video::v4l2::PixelFormat::parse)
        .transpose()?;
    let size = a
        .video_size
        .as_deref()
        .map(std_shim::vnc::desktop::parse_geometry)
        .transpose()?
        .map(|(w, h)| (u32::from(w), u32::from(h)));
    Ok(Some(std_shim::video::VideoConfig {
        device: device.clone(),
        capture: std_shim::video::v4l2::CaptureConfig {
            format,
            size,
            fps: a.video_fps,
        },
    }))
}

/// Runs `kvmio media …`.
pub(crate) fn media(c: crate::args::gadget::MediaCommand) -> Result<()> {
    use crate::args::gadget::MediaCommand as M;
    use std_shim::media::control::request;
    let answer = match c {
        M::Insert {
            lun,
            source,
            control,
        } => request(&control, &format!("insert {lun} {source}"))?,
        M::Eject { lun, control } => request(&control, &format!("eject {lun}"))?,
        M::Status { control } => request(&control, "status")?.replace(" | ", "\n"),
    };
    say!("{answer}");
    Ok(())
}
