//! V4L2 video capture (single-planar, mmap streaming): what an HDMI capture card or a
//! USB grabber gives a KVM-over-IP device.
//!
//! The ioctl structures are laid out here by hand for 64-bit Linux (x86_64, aarch64:
//! `linux/videodev2.h`); the offsets are checked by their sizes in the ioctl numbers.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

#[cfg(not(target_pointer_width = "64"))]
compile_error!("the V4L2 structures are laid out for 64-bit Linux");

const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | ((b'V' as u64) << 8) | nr
}
const R: u64 = 2;
const W: u64 = 1;
const VIDIOC_QUERYCAP: u64 = ioc(R, 0, 104);
const VIDIOC_ENUM_FMT: u64 = ioc(R | W, 2, 64);
const VIDIOC_G_FMT: u64 = ioc(R | W, 4, 208);
const VIDIOC_S_FMT: u64 = ioc(R | W, 5, 208);
const VIDIOC_REQBUFS: u64 = ioc(R | W, 8, 20);
const VIDIOC_QUERYBUF: u64 = ioc(R | W, 9, 88);
const VIDIOC_QBUF: u64 = ioc(R | W, 15, 88);
const VIDIOC_DQBUF: u64 = ioc(R | W, 17, 88);
const VIDIOC_STREAMON: u64 = ioc(W, 18, 4);
const VIDIOC_STREAMOFF: u64 = ioc(W, 19, 4);
const VIDIOC_G_PARM: u64 = ioc(R | W, 21, 204);
const VIDIOC_S_PARM: u64 = ioc(R | W, 22, 204);
const VIDIOC_S_DV_TIMINGS: u64 = ioc(R | W, 87, 132);
const VIDIOC_G_DV_TIMINGS: u64 = ioc(R | W, 88, 132);
const VIDIOC_QUERY_DV_TIMINGS: u64 = ioc(R, 99, 132);

const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const MEMORY_MMAP: u32 = 1;
const CAP_VIDEO_CAPTURE: u32 = 0x1;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;

/// Largest frame side accepted from a device.
pub const MAX_SIDE: u32 = 8192;
/// Buffers asked for.
const BUFFERS: u32 = 4;

/// A pixel format, by its fourcc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// YUYV 4:2:2 (`YUYV`).
    Yuyv,
    /// UYVY 4:2:2 (`UYVY`).
    Uyvy,
    /// 24-bit R, G, B (`RGB3`).
    Rgb24,
    /// 24-bit B, G, R (`BGR3`).
    Bgr24,
    /// Motion JPEG (`MJPG`): one JPEG per frame, decoded on capture.
    Mjpeg,
}

impl PixelFormat {
    /// In the order a capture prefers them.
    pub const PREFERRED: [PixelFormat; 5] = [
        Self::Yuyv,
        Self::Rgb24,
        Self::Bgr24,
        Self::Uyvy,
        Self::Mjpeg,
    ];

    /// The fourcc.
    pub const fn fourcc(self) -> u32 {
        let b = match self {
            Self::Yuyv => *b"YUYV",
            Self::Uyvy => *b"UYVY",
            Self::Rgb24 => *b"RGB3",
            Self::Bgr24 => *b"BGR3",
            Self::Mjpeg => *b"MJPG",
        };
        u32::from_le_bytes(b)
    }

    /// The format of a fourcc, if supported.
    pub fn from_fourcc(f: u32) -> Option<Self> {
        Self::PREFERRED.into_iter().find(|p| p.fourcc() == f)
    }

    /// By name: `yuyv`, `uyvy`, `rgb24` (or `RGB3`), `bgr24` (or `BGR3`).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "yuyv" => Self::Yuyv,
            "uyvy" => Self::Uyvy,
            "rgb24" | "rgb3" => Self::Rgb24,
            "bgr24" | "bgr3" => Self::Bgr24,
            "mjpeg" | "mjpg" => Self::Mjpeg,
            _ => bail!("pixel format {s:?}: yuyv, uyvy, rgb24, bgr24 or mjpeg"),
        })
    }

    /// Bytes per pixel (0: compressed).
    pub const fn bytes_per_pixel(self) -> u32 {
        match self {
            Self::Yuyv | Self::Uyvy => 2,
            Self::Rgb24 | Self::Bgr24 => 3,
            Self::Mjpeg => 0,
        }
    }
}

fn fourcc_name(f: u32) -> String {
    f.to_le_bytes()
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

/// What to ask the device for.
#[derive(Debug, Clone, Default)]
pub struct CaptureConfig {
    /// A pixel format (`None`: the first of [`PixelFormat::PREFERRED`] the device has).
    pub format: Option<PixelFormat>,
    /// A frame size (`None`: what the device is set to, e.g. the HDMI source's timings).
    pub size: Option<(u32, u32)>,
    /// Frames per second (`None`: the device's rate; an HDMI input's follows its timings).
    pub fps: Option<u32>,
}

/// The DV timings of a digital input (HDMI, DVI) as the receiver detects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Active width.
    pub width: u32,
    /// Active height.
    pub height: u32,
    /// Interlaced.
    pub interlaced: bool,
    /// Pixel clock in Hz.
    pub pixelclock: u64,
    /// Total width and height, blanking included.
    pub total: (u32, u32),
}

impl Timings {
    // struct v4l2_dv_timings (packed, 132 bytes): type 0, bt at 4: width 4, height 8,
    // interlaced 12, polarities 16, pixelclock 20 (u64), hfrontporch 28, hsync 32,
    // hbackporch 36, vfrontporch 40, vsync 44, vbackporch 48, il_vfrontporch 52, il_vsync 56,
    // il_vbackporch 60.
    fn parse(b: &[u8; 132]) -> Self {
        let u = |at| get_u32(b, at);
        let interlaced = u(12) != 0;
        let htotal = u(4) + u(28) + u(32) + u(36);
        let mut vtotal = u(8) + u(40) + u(44) + u(48);
        if interlaced {
            vtotal += u(52) + u(56) + u(60);
        }
        Self {
            width: u(4),
            height: u(8),
            interlaced,
            pixelclock: u64::from_ne_bytes(b[20..28].try_into().expect("8 bytes")),
            total: (htotal, vtotal),
        }
    }

    /// Frames (fields for interlaced) per second.
    pub fn rate(&self) -> f64 {
        let pixels = u64::from(self.total.0) * u64::from(self.total.1);
        if pixels == 0 {
            0.0
        } else {
            self.pixelclock as f64 / pixels as f64
        }
    }
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.interlaced { 'i' } else { 'p' };
        write!(f, "{}x{}{kind}{:.2}", self.width, self.height, self.rate())
    }
}

/// What a digital input's receiver sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A signal with these timings (and the raw structure, to set them).
    Locked(Timings, [u8; 132]),
    /// No usable signal: why (no link, no lock, out of range).
    NoSignal(&'static str),
    /// The input has no DV timings (a webcam, a USB grabber that scales by itself).
    NotDigital,
}

/// Asks the receiver what it sees (`VIDIOC_QUERY_DV_TIMINGS`).
pub fn query_timings(f: &File) -> Detected {
    let mut t = [0u8; 132];
    match ioctl(f, VIDIOC_QUERY_DV_TIMINGS, &mut t) {
        Ok(()) => {
            let timings = Timings::parse(&t);
            if timings.width == 0
                || timings.height == 0
                || timings.width > MAX_SIDE
                || timings.height > MAX_SIDE
            {
                return Detected::NoSignal("absurd timings");
            }
            Detected::Locked(timings, t)
        }
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOLINK) => Detected::NoSignal("no link"),
            Some(libc::ENOLCK) => Detected::NoSignal("no lock"),
            Some(libc::ERANGE) => Detected::NoSignal("timings out of range"),
            _ => Detected::NotDigital,
        },
    }
}

/// Makes the receiver use the timings it detected (they take effect while not streaming),
/// as `v4l2-ctl --set-dv-bt-timings query` does. Returns them; `None` for an input without
/// DV timings.
fn lock_timings(f: &File, path: &Path) -> Result<Option<Timings>> {
    match query_timings(f) {
        Detected::NotDigital => Ok(None),
        Detected::NoSignal(why) => bail!("{}: no signal ({why})", path.display()),
        Detected::Locked(t, mut raw) => {
            let mut cur = [0u8; 132];
            let same = ioctl(f, VIDIOC_G_DV_TIMINGS, &mut cur).is_ok() && Timings::parse(&cur) == t;
            if !same {
                ioctl(f, VIDIOC_S_DV_TIMINGS, &mut raw)
                    .with_context(|| format!("{}: VIDIOC_S_DV_TIMINGS {t}", path.display()))?;
                log::info!("{}: source timings {t}", path.display());
            }
            Ok(Some(t))
        }
    }
}

// struct v4l2_streamparm (204 bytes): type 0, parm.capture at 4: capability 4, capturemode 8,
// timeperframe 12 (numerator) and 16 (denominator).
const CAP_TIMEPERFRAME: u32 = 0x1000;

/// Asks for `fps` frames per second if the device lets the rate be chosen; returns the rate
/// in effect (`None`: the device does not say).
fn frame_rate(f: &File, path: &Path, fps: Option<u32>) -> Option<f64> {
    let mut p = [0u8; 204];
    put_u32(&mut p, 0, BUF_TYPE_VIDEO_CAPTURE);
    ioctl(f, VIDIOC_G_PARM, &mut p).ok()?;
    if let Some(fps) = fps {
        if get_u32(&p, 4) & CAP_TIMEPERFRAME != 0 {
            put_u32(&mut p, 12, 1);
            put_u32(&mut p, 16, fps);
            if let Err(e) = ioctl(f, VIDIOC_S_PARM, &mut p) {
                log::warn!("{}: VIDIOC_S_PARM {fps} fps: {e}", path.display());
            }
        } else {
            log::warn!(
                "{}: the frame rate cannot be chosen on this input (it follows the source)",
                path.display()
            );
        }
    }
    let (num, den) = (get_u32(&p, 12), get_u32(&p, 16));
    (num != 0 && den != 0).then(|| f64::from(den) / f64::from(num))
}

/// The format the device agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Pixel format.
    pub format: PixelFormat,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Bytes per row (with the device's padding).
    pub stride: u32,
    /// Bytes per frame.
    pub size_image: u32,
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{} {:?}", self.width, self.height, self.format)
    }
}

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

/// A streaming capture device.
pub struct Capture {
    file: File,
    maps: Vec<Mapping>,
    /// The agreed format.
    pub format: Negotiated,
    /// The source's DV timings when the input has them (HDMI).
    pub timings: Option<Timings>,
    /// Frames per second, when the device says.
    pub rate: Option<f64>,
    streaming: bool,
}

// SAFETY: the mappings are only touched through `&mut self` (one thread at a time).
unsafe impl Send for Capture {}

fn ioctl<T>(f: &File, req: u64, arg: &mut T) -> std::io::Result<()> {
    loop {
        // SAFETY: `req` is one of the VIDIOC numbers above, whose size field equals
        // `size_of::<T>()` for the structure passed (checked in `check_sizes`); `arg` is a
        // valid, exclusively borrowed `T` for the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), req as libc::c_ulong, arg as *mut T) };
        if r >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

// struct v4l2_buffer (88 bytes): index 0, type 4, bytesused 8, flags 12, field 16, timestamp
// 24, timecode 40, sequence 56, memory 60, m.offset 64, length 72.
const B_INDEX: usize = 0;
const B_TYPE: usize = 4;
const B_BYTESUSED: usize = 8;
const B_MEMORY: usize = 60;
const B_OFFSET: usize = 64;
const B_LENGTH: usize = 72;
// struct v4l2_format (208 bytes): type 0, fmt.pix at 8: width 8, height 12, pixelformat 16,
// field 20, bytesperline 24, sizeimage 28.
const F_WIDTH: usize = 8;
const F_HEIGHT: usize = 12;
const F_PIXFMT: usize = 16;
const F_FIELD: usize = 20;
const F_STRIDE: usize = 24;
const F_SIZEIMAGE: usize = 28;

impl Capture {
    /// Opens `path`, negotiates a format and starts streaming.
    pub fn open(path: &Path, config: &CaptureConfig) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("{}", path.display()))?;
        let mut cap = [0u8; 104];
        ioctl(&file, VIDIOC_QUERYCAP, &mut cap)
            .with_context(|| format!("{}: not a V4L2 device", path.display()))?;
        let caps = get_u32(&cap, 84);
        let caps = if caps & CAP_DEVICE_CAPS != 0 {
            get_u32(&cap, 88)
        } else {
            caps
        };
        if caps & CAP_VIDEO_CAPTURE == 0 || caps & CAP_STREAMING == 0 {
            bail!(
                "{}: not a single-planar streaming capture device (capabilities {caps:#x})",
                path.display()
            );
        }
        let offered = enum_formats(&file)?;
        let format = match config.format {
            Some(f) if offered.contains(&f.fourcc()) => f,
            Some(f) => bail!(
                "{}: no {f:?} (the device offers {})",
                path.display(),
                offered
                    .iter()
                    .map(|&f| fourcc_name(f))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => PixelFormat::PREFERRED
                .into_iter()
                .find(|p| offered.contains(&p.fourcc()))
                .with_context(|| {
                    format!(
                        "{}: none of YUYV, RGB3, BGR3, UYVY, MJPG (the device offers {})",
                        path.display(),
                        offered
                            .iter()
                            .map(|&f| fourcc_name(f))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?,
        };
        // A digital input captures what its source sends: lock to the detected timings before
        // the format is read (they set the frame size).
        let timings = lock_timings(&file, path)?;
        let mut fmt = [0u8; 208];
        put_u32(&mut fmt, 0, BUF_TYPE_VIDEO_CAPTURE);
        ioctl(&file, VIDIOC_G_FMT, &mut fmt).context("VIDIOC_G_FMT")?;
        if let Some((w, h)) = config.size {
            put_u32(&mut fmt, F_WIDTH, w);
            put_u32(&mut fmt, F_HEIGHT, h);
        }
        put_u32(&mut fmt, F_PIXFMT, format.fourcc());
        put_u32(&mut fmt, F_FIELD, 1); // V4L2_FIELD_NONE: progressive frames
        put_u32(&mut fmt, F_STRIDE, 0);
        ioctl(&file, VIDIOC_S_FMT, &mut fmt).context("VIDIOC_S_FMT")?;
        let n = Negotiated {
            format: PixelFormat::from_fourcc(get_u32(&fmt, F_PIXFMT)).with_context(|| {
                format!(
                    "the device switched to {}",
                    fourcc_name(get_u32(&fmt, F_PIXFMT))
                )
            })?,
            width: get_u32(&fmt, F_WIDTH),
            height: get_u32(&fmt, F_HEIGHT),
            stride: get_u32(&fmt, F_STRIDE),
            size_image: get_u32(&fmt, F_SIZEIMAGE),
        };
        check_format(&n)?;
        if let Some((w, h)) = config.size
            && (w, h) != (n.width, n.height)
        {
            log::warn!(
                "{}: asked for {w}x{h}, the device gives {}x{}",
                path.display(),
                n.width,
                n.height
            );
        }
        let rate = frame_rate(&file, path, config.fps)
            .or_else(|| timings.map(|t| t.rate()))
            .filter(|r| r.is_finite() && *r > 0.0);
        let mut c = Self {
            file,
            maps: Vec::new(),
            format: n,
            timings,
            rate,
            streaming: false,
        };
        c.start()?;
        Ok(c)
    }

    fn start(&mut self) -> Result<()> {
        // struct v4l2_requestbuffers: count, type, memory, capabilities, flags+reserved
        let mut req = [0u8; 20];
        put_u32(&mut req, 0, BUFFERS);
        put_u32(&mut req, 4, BUF_TYPE_VIDEO_CAPTURE);
        put_u32(&mut req, 8, MEMORY_MMAP);
        ioctl(&self.file, VIDIOC_REQBUFS, &mut req).context("VIDIOC_REQBUFS")?;
        let count = get_u32(&req, 0);
        if count == 0 || count > 32 {
            bail!("the device gave {count} buffers");
        }
        for i in 0..count {
            let mut b = self.buffer(i);
            ioctl(&self.file, VIDIOC_QUERYBUF, &mut b).context("VIDIOC_QUERYBUF")?;
            let len = get_u32(&b, B_LENGTH) as usize;
            if len < self.format.size_image as usize {
                bail!(
                    "buffer of {len} bytes for frames of {}",
                    self.format.size_image
                );
            }
            let offset = get_u32(&b, B_OFFSET);
            // SAFETY: maps the buffer the driver just described (offset and length from
            // QUERYBUF) read-only and shared, as V4L2 mmap streaming prescribes; the mapping
            // is unmapped in Drop and only read while the buffer is dequeued.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    self.file.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error()).context("mmap");
            }
            self.maps.push(Mapping { ptr, len });
            ioctl(&self.file, VIDIOC_QBUF, &mut b).context("VIDIOC_QBUF")?;
        }
        let mut t = BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
        ioctl(&self.file, VIDIOC_STREAMON, &mut t).context("VIDIOC_STREAMON")?;
        self.streaming = true;
        Ok(())
    }

    /// Whether the source still sends what the capture was opened for: `Ok(None)` if so,
    /// `Ok(Some(timings))` if it changed to other timings (reopen to follow), `Err` if the
    /// signal is gone. Inputs without DV timings always say `Ok(None)`.
    pub fn source_changed(&self) -> Result<Option<Timings>> {
        let Some(cur) = self.timings else {
            return Ok(None);
        };
        match query_timings(&self.file) {
            Detected::Locked(t, _) if t == cur => Ok(None),
            Detected::Locked(t, _) => Ok(Some(t)),
            Detected::NoSignal(why) => bail!("no signal ({why})"),
            Detected::NotDigital => Ok(None),
        }
    }

    fn buffer(&self, index: u32) -> [u8; 88] {
        let mut b = [0u8; 88];
        put_u32(&mut b, B_INDEX, index);
        put_u32(&mut b, B_TYPE, BUF_TYPE_VIDEO_CAPTURE);
        put_u32(&mut b, B_MEMORY, MEMORY_MMAP);
        b
    }

    /// Waits up to `timeout` for a frame and hands its bytes to `f`; `Ok(None)` on a timeout.
    pub fn next_frame<T>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(60_000) as libc::c_int) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e).context("poll");
        }
        if r == 0 {
            return Ok(None);
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && pfd.revents & libc::POLLIN == 0
        {
            bail!("the device reports an error (revents {:#x})", pfd.revents);
        }
        let mut b = self.buffer(0);
        match ioctl(&self.file, VIDIOC_DQBUF, &mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e).context("VIDIOC_DQBUF"),
        }
        let index = get_u32(&b, B_INDEX) as usize;
        let used = (get_u32(&b, B_BYTESUSED) as usize).min(self.format.size_image as usize);
        let m = self
            .maps
            .get(index)
            .context("the device returned an unknown buffer")?;
        // SAFETY: the buffer is dequeued, so the driver does not write it until QBUF; the
        // slice stays within the mapping (`used` ≤ size_image ≤ len).
        let bytes = unsafe { std::slice::from_raw_parts(m.ptr as *const u8, used.min(m.len)) };
        let out = f(bytes);
        ioctl(&self.file, VIDIOC_QBUF, &mut b).context("VIDIOC_QBUF")?;
        Ok(Some(out))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.streaming {
            let mut t = BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
            let _ = ioctl(&self.file, VIDIOC_STREAMOFF, &mut t);
        }
        for m in self.maps.drain(..) {
            // SAFETY: unmaps a mapping made in `start`, once.
            unsafe {
                libc::munmap(m.ptr, m.len);
            }
        }
    }
}

fn enum_formats(f: &File) -> Result<Vec<u32>> {
    let mut v = Vec::new();
    for i in 0..64 {
        // struct v4l2_fmtdesc: index, type, flags, description[32], pixelformat at 44
        let mut d = [0u8; 64];
        put_u32(&mut d, 0, i);
        put_u32(&mut d, 4, BUF_TYPE_VIDEO_CAPTURE);
        if ioctl(f, VIDIOC_ENUM_FMT, &mut d).is_err() {
            break;
        }
        v.push(get_u32(&d, 44));
    }
    Ok(v)
}

/// A format the device reported, checked before anything is allocated for it.
pub fn check_format(n: &Negotiated) -> Result<()> {
    if n.width == 0 || n.height == 0 || n.width > MAX_SIDE || n.height > MAX_SIDE {
        bail!(
            "the device reports an absurd frame size {}x{}",
            n.width,
            n.height
        );
    }
    if n.format == PixelFormat::Mjpeg {
        // Compressed: sizeimage is the largest frame the driver may deliver.
        if n.size_image == 0 || n.size_image > 64 << 20 {
            bail!("the device reports {} bytes per MJPEG frame", n.size_image);
        }
        return Ok(());
    }
    let row = n.width * n.format.bytes_per_pixel();
    if n.stride < row || u64::from(n.stride) * u64::from(n.height) > u64::from(n.size_image) {
        bail!(
            "the device reports {} bytes per row and {} per frame for {}x{} {:?}",
            n.stride,
            n.size_image,
            n.width,
            n.height,
            n.format
        );
    }
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_videodev2() {
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_G_FMT, 0xc0d0_5604);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QUERYBUF, 0xc058_5609);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_ENUM_FMT, 0xc040_5602);
        assert_eq!(VIDIOC_G_PARM, 0xc0cc_5615);
        assert_eq!(VIDIOC_S_PARM, 0xc0cc_5616);
        assert_eq!(VIDIOC_S_DV_TIMINGS, 0xc084_5657);
        assert_eq!(VIDIOC_G_DV_TIMINGS, 0xc084_5658);
        assert_eq!(VIDIOC_QUERY_DV_TIMINGS, 0x8084_5663);
    }

    #[test]
    fn dv_timings_are_read_from_the_kernel_layout() {
        // CEA-861 1920x1080p60: 148.5 MHz, 2200 x 1125 in all
        let mut raw = [0u8; 132];
        for (at, v) in [
            (4, 1920),
            (8, 1080),
            (28, 88),
            (32, 44),
            (36, 148),
            (40, 4),
            (44, 5),
            (48, 36),
        ] {
            put_u32(&mut raw, at, v);
        }
        raw[20..28].copy_from_slice(&148_500_000u64.to_ne_bytes());
        let t = Timings::parse(&raw);
        assert_eq!((t.width, t.height, t.total), (1920, 1080, (2200, 1125)));
        assert!((t.rate() - 60.0).abs() < 1e-9);
        assert_eq!(t.to_string(), "1920x1080p60.00");
    }

    #[test]
    fn absurd_formats_are_refused() {
        let ok = Negotiated {
            format: PixelFormat::Yuyv,
            width: 1280,
            height: 720,
            stride: 2560,
            size_image: 2560 * 720,
        };
        assert!(check_format(&ok).is_ok());
        for bad in [
            Negotiated { width: 0, ..ok },
            Negotiated {
                height: 100_000,
                ..ok
            },
            Negotiated { stride: 100, ..ok },
            Negotiated {
                size_image: 1000,
                ..ok
            },
        ] {
            assert!(check_format(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(PixelFormat::parse("RGB3").unwrap(), PixelFormat::Rgb24);
        assert_eq!(PixelFormat::parse("mjpeg").unwrap(), PixelFormat::Mjpeg);
        assert!(PixelFormat::parse("h264").is_err());
        let mjpeg = Negotiated {
            format: PixelFormat::Mjpeg,
            stride: 0,
            size_image: 1 << 20,
            ..ok
        };
        assert!(check_format(&mjpeg).is_ok());
        assert!(
            check_format(&Negotiated {
                size_image: 0,
                ..mjpeg
            })
            .is_err()
        );
    }
}
