//! `kvmio gadget up|down|status`, and the flags that send input to a gadget.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `kvmio gadget …`.
#[derive(Subcommand)]
pub(crate) enum GadgetCommand {
    /// Create the USB gadget in configfs (keyboard, pointer, mass-storage LUNs) and bind it
    /// to the USB device controller; prints its /dev/hidgN nodes.
    Up(GadgetUpArgs),
    /// Unbind and remove the gadget.
    Down(GadgetName),
    /// Show the gadget: UDC and its state, HID nodes, LUNs and their media.
    Status(GadgetName),
    /// List the keyboard layouts --keyboard-layout takes.
    Layouts,
}

/// The gadget's name.
#[derive(Args)]
pub(crate) struct GadgetName {
    /// The gadget's configfs directory name.
    #[arg(long, default_value = "kvmio")]
    pub(crate) name: String,
}

/// `kvmio gadget up`.
#[derive(Args)]
pub(crate) struct GadgetUpArgs {
    #[command(flatten)]
    pub(crate) name: GadgetName,
    /// The USB device controller (a name in /sys/class/udc; default: the only one).
    #[arg(long, value_name = "UDC")]
    pub(crate) udc: Option<String>,
    /// USB vendor ID.
    #[arg(long, value_name = "ID", value_parser = parse_u16, default_value = "0x1d6b")]
    pub(crate) vendor_id: u16,
    /// USB product ID.
    #[arg(long, value_name = "ID", value_parser = parse_u16, default_value = "0x0104")]
    pub(crate) product_id: u16,
    /// Manufacturer string.
    #[arg(long, default_value = "kvmio")]
    pub(crate) manufacturer: String,
    /// Product string.
    #[arg(long, default_value = "kvmio composite device")]
    pub(crate) product: String,
    /// Serial number string.
    #[arg(long, default_value = "CAFEBABE")]
    pub(crate) serial: String,
    /// No keyboard.
    #[arg(long)]
    pub(crate) no_keyboard: bool,
    /// No pointer.
    #[arg(long)]
    pub(crate) no_pointer: bool,
    /// Mass-storage LUNs, in order (repeatable; default: cdrom, disk): `cdrom` (read-only,
    /// removable), `disk` (writable, removable), `disk-ro`; add `=FILE` to insert a medium
    /// at once (e.g. cdrom=/srv/debian.iso). `none` for no mass storage.
    #[arg(long = "lun", value_name = "KIND[=FILE]")]
    pub(crate) luns: Vec<String>,
}

/// Where `kvmio serve` and `kvmio vnc serve` send keys and pointer events.
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct HidArgs {
    /// Type into the target computer through this USB gadget's keyboard and pointer (made by
    /// `kvmio gadget up`; its /dev/hidgN nodes are looked up in configfs). Without it (and
    /// without --hid-keyboard/--hid-pointer) input is only logged.
    #[arg(long, value_name = "GADGET")]
    pub(crate) hid: Option<String>,
    /// The keyboard's HID gadget node (instead of looking it up).
    #[arg(long, value_name = "DEV")]
    pub(crate) hid_keyboard: Option<PathBuf>,
    /// The absolute pointer's HID gadget node (instead of looking it up).
    #[arg(long, value_name = "DEV")]
    pub(crate) hid_pointer: Option<PathBuf>,
    /// The target computer's keyboard layout, for keysyms (QEMU keymap names: en-us, en-gb,
    /// de, fr, …; `kvmio gadget layouts` lists them). QEMU extended key events, which noVNC,
    /// TigerVNC and virt-viewer send, need none.
    #[arg(long, value_name = "NAME")]
    pub(crate) keyboard_layout: Option<String>,
}

fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

/// Virtual media of `kvmio serve` and `kvmio vnc serve`.
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct MediaArgs {
    /// Insert a medium at start: LUN=SOURCE, SOURCE a file, a block device, an http:// or
    /// https:// URL read with range requests, or an NBD export (nbd://, nbds://, nbd+unix://)
    /// (repeatable).
    #[arg(long = "media", value_name = "LUN=SOURCE")]
    pub(crate) media: Vec<String>,
    /// Credentials directory (QEMU layout: ca-cert.pem, optional client-cert.pem and
    /// client-key.pem) verifying https:// and nbds:// sources, of media and of exports
    /// (default: --tls-creds, else QEMU's default directory); an nbds URI's tls-certificates=
    /// wins.
    #[arg(long, value_name = "DIR")]
    pub(crate) remote_tls_creds: Option<PathBuf>,
    /// Accept `kvmio media insert|eject|status` on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub(crate) media_control: Option<PathBuf>,
    /// The gadget whose LUNs hold the media (default kvmio).
    #[arg(long, value_name = "GADGET")]
    pub(crate) media_gadget: Option<String>,
}

/// The capture device (`kvmio serve`, `kvmio vnc serve`).
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct VideoArgs {
    /// Show the target's screen from this V4L2 capture device (an HDMI grabber) instead of
    /// the test pattern; without a signal viewers see a NO SIGNAL card until frames return.
    #[arg(long, value_name = "DEV")]
    pub(crate) video: Option<PathBuf>,
    /// Capture pixel format: yuyv, uyvy, rgb24, bgr24, mjpeg (default: the first of these the
    /// device offers).
    #[arg(long, value_name = "FORMAT")]
    pub(crate) video_format: Option<String>,
    /// Capture size (default: what the device is set to, e.g. the source's timings).
    #[arg(long, value_name = "WxH")]
    pub(crate) video_size: Option<String>,
    /// Capture frame rate, where the device lets it be chosen (an HDMI input's follows the
    /// source's timings, which kvmio locks to).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=240))]
    pub(crate) video_fps: Option<u32>,
}

/// The default control socket.
pub(crate) const MEDIA_CONTROL: &str = "/run/kvmio/media.sock";

/// `kvmio media …`: talks to a running server.
#[derive(Subcommand)]
pub(crate) enum MediaCommand {
    /// Insert a medium (ejecting what is there): a file, block device or http:// URL.
    Insert {
        /// The LUN.
        #[arg(long)]
        lun: usize,
        /// What to insert.
        source: String,
        /// The server's control socket.
        #[arg(long, value_name = "PATH", default_value = MEDIA_CONTROL)]
        control: PathBuf,
    },
    /// Eject the medium.
    Eject {
        /// The LUN.
        #[arg(long)]
        lun: usize,
        /// The server's control socket.
        #[arg(long, value_name = "PATH", default_value = MEDIA_CONTROL)]
        control: PathBuf,
    },
    /// What every LUN holds.
    Status {
        /// The server's control socket.
        #[arg(long, value_name = "PATH", default_value = MEDIA_CONTROL)]
        control: PathBuf,
    },
}
