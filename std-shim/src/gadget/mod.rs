//! The USB gadget of a KVM-over-IP device, in Linux's configfs: a boot keyboard and an
//! absolute pointer (`usb_f_hid`, the `/dev/hidgN` nodes [`crate::input`] writes to) and
//! mass-storage LUNs (`usb_f_mass_storage`, the virtual media), bound to a USB device
//! controller (UDC) that is plugged into the target computer.
//!
//! [`up`] creates the gadget and binds it, [`down`] unbinds and removes it, [`status`] reads
//! it back. Everything is plain files under `/sys/kernel/config/usb_gadget/NAME`
//! (Documentation/usb/gadget_configfs.rst); the report descriptors are in [`descriptors`].
//! [`Lun`] inserts and ejects media of a running gadget.

pub mod descriptors;
mod lun;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use lun::{Lun, LunState};

/// Where configfs keeps gadgets.
pub const CONFIGFS_GADGETS: &str = "/sys/kernel/config/usb_gadget";
/// Where the kernel lists USB device controllers.
pub const SYS_UDC: &str = "/sys/class/udc";

/// The function instance names (`functions/<type>.<instance>`).
const KEYBOARD_FN: &str = "hid.keyboard";
const POINTER_FN: &str = "hid.pointer";
const STORAGE_FN: &str = "mass_storage.media";
const CONFIG: &str = "configs/c.1";
/// US English, the language of the strings.
const LANG: &str = "strings/0x409";

/// One mass-storage LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// A CD-ROM drive (read-only, 2048-byte sectors) instead of a disk.
    pub cdrom: bool,
    /// The target may not write.
    pub read_only: bool,
    /// Removable medium (ejectable and insertable at run time).
    pub removable: bool,
    /// The medium inserted at start (a file or block device), or none.
    pub file: Option<PathBuf>,
}

impl LunSpec {
    /// A removable CD-ROM drive with no disc.
    pub fn cdrom() -> Self {
        Self {
            cdrom: true,
            read_only: true,
            removable: true,
            file: None,
        }
    }

    /// A removable writable disk with no medium.
    pub fn disk() -> Self {
        Self {
            cdrom: false,
            read_only: false,
            removable: true,
            file: None,
        }
    }
}

/// What the gadget is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GadgetSpec {
    /// The configfs directory name.
    pub name: String,
    /// USB vendor ID.
    pub vendor_id: u16,
    /// USB product ID.
    pub product_id: u16,
    /// Device release (bcdDevice).
    pub device_release: u16,
    /// Manufacturer string.
    pub manufacturer: String,
    /// Product string.
    pub product: String,
    /// Serial number string.
    pub serial: String,
    /// A boot keyboard.
    pub keyboard: bool,
    /// An absolute pointer.
    pub pointer: bool,
    /// Mass-storage LUNs (at most 8; none: no mass-storage function).
    pub luns: Vec<LunSpec>,
    /// The UDC to bind to (`None`: the only one there is).
    pub udc: Option<String>,
    /// Power the device says it draws, in mA.
    pub max_power_ma: u16,
}

impl Default for GadgetSpec {
    /// A keyboard, a pointer, a CD-ROM and a disk LUN, as the Linux Foundation's multifunction
    /// composite gadget (1d6b:0104), which is what PiKVM presents too.
    fn default() -> Self {
        Self {
            name: "kvmio".into(),
            vendor_id: 0x1d6b,
            product_id: 0x0104,
            device_release: 0x0100,
            manufacturer: "kvmio".into(),
            product: "kvmio composite device".into(),
            serial: "CAFEBABE".into(),
            keyboard: true,
            pointer: true,
            luns: vec![LunSpec::cdrom(), LunSpec::disk()],
            udc: None,
            max_power_ma: 100,
        }
    }
}

/// Most LUNs a mass-storage function has (`FSG_MAX_LUNS`).
pub const MAX_LUNS: usize = 8;

/// A gadget as configfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GadgetStatus {
    /// The configfs directory.
    pub path: PathBuf,
    /// The UDC it is bound to, if any.
    pub udc: Option<String>,
    /// The UDC's state (`configured` once the target enumerated it; `not attached`, …).
    pub udc_state: Option<String>,
    /// The keyboard's device node.
    pub keyboard: Option<PathBuf>,
    /// The pointer's device node.
    pub pointer: Option<PathBuf>,
    /// The LUNs, in order.
    pub luns: Vec<LunState>,
}

/// The gadget's configfs directory.
pub fn gadget_dir(name: &str) -> PathBuf {
    Path::new(CONFIGFS_GADGETS).join(name)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("gadget name {name:?}: use 1 to 64 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// Makes sure configfs with the gadget subsystem is there (loading `libcomposite` if it is
/// not, as a board's init scripts would).
fn configfs_ready() -> Result<()> {
    let root = Path::new(CONFIGFS_GADGETS);
    if root.is_dir() {
        return Ok(());
    }
    // The module may just not be loaded; modprobe's failure is reported by the check below.
    let _ = std::process::Command::new("modprobe")
        .arg("libcomposite")
        .stderr(std::process::Stdio::null())
        .status();
    if root.is_dir() {
        return Ok(());
    }
    let mounted = fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(2) == Some("configfs"))
    });
    if !mounted {
        bail!(
            "{CONFIGFS_GADGETS} is missing: configfs is not mounted \
             (mount -t configfs none /sys/kernel/config) and libcomposite must be loaded"
        );
    }
    bail!("{CONFIGFS_GADGETS} is missing: load libcomposite (modprobe libcomposite)")
}

/// The UDCs the kernel has.
pub fn udcs() -> Result<Vec<String>> {
    let mut v = Vec::new();
    match fs::read_dir(SYS_UDC) {
        Ok(rd) => {
            for e in rd {
                v.push(e?.file_name().to_string_lossy().into_owned());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(SYS_UDC),
    }
    v.sort();
    Ok(v)
}

fn pick_udc(wanted: Option<&str>) -> Result<String> {
    let all = udcs()?;
    match wanted {
        Some(w) => {
            if !all.iter().any(|u| u == w) {
                bail!(
                    "no USB device controller {w:?} (the kernel has: {})",
                    if all.is_empty() {
                        "none".to_string()
                    } else {
                        all.join(", ")
                    }
                );
            }
            Ok(w.to_string())
        }
        None => match all.as_slice() {
            [] => bail!(
                "no USB device controller in {SYS_UDC}: load the board's UDC driver \
                 (dwc2, musb, dummy_hcd, …) and enable its USB port in device (peripheral) mode"
            ),
            [one] => Ok(one.clone()),
            many => bail!(
                "several USB device controllers ({}): choose one with --udc",
                many.join(", ")
            ),
        },
    }
}

fn write(path: &Path, value: impl AsRef<[u8]>) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {}", path.display()))
}

fn mkdir(path: &Path) -> Result<()> {
    fs::create_dir(path).with_context(|| format!("creating {}", path.display()))
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Creates the gadget and binds it to its UDC. A gadget of that name already there is an
/// error (`down` it first); on any failure what was made is removed again.
pub fn up(spec: &GadgetSpec) -> Result<GadgetStatus> {
    check_name(&spec.name)?;
    if !spec.keyboard && !spec.pointer && spec.luns.is_empty() {
        bail!("the gadget has no function (no keyboard, no pointer, no LUN)");
    }
    if spec.luns.len() > MAX_LUNS {
        bail!("at most {MAX_LUNS} LUNs (got {})", spec.luns.len());
    }
    for (i, l) in spec.luns.iter().enumerate() {
        if l.cdrom && !l.read_only {
            bail!("LUN {i}: a CD-ROM is read-only");
        }
        if let Some(f) = &l.file
            && !f.exists()
        {
            bail!("LUN {i}: {} does not exist", f.display());
        }
    }
    configfs_ready()?;
    let dir = gadget_dir(&spec.name);
    if dir.exists() {
        let bound = read_trim(&dir.join("UDC")).filter(|s| !s.is_empty());
        bail!(
            "gadget {:?} already exists ({}): `kvmio gadget down` first",
            spec.name,
            match bound {
                Some(u) => format!("bound to {u}"),
                None => "not bound".into(),
            }
        );
    }
    let udc = pick_udc(spec.udc.as_deref())?;
    if let Some(other) = bound_elsewhere(&udc)? {
        bail!("USB device controller {udc} is in use by gadget {other:?}");
    }
    match build(spec, &dir, &udc) {
        Ok(()) => {}
        Err(e) => {
            if let Err(e2) = remove(&dir) {
                log::warn!("removing the half-made gadget: {e2:#}");
            }
            return Err(e);
        }
    }
    // The hidg nodes appear when the functions are bound; devtmpfs (or udev) creates them.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = status(&spec.name)?;
        let ready = (!spec.keyboard || st.keyboard.as_ref().is_some_and(|p| p.exists()))
            && (!spec.pointer || st.pointer.as_ref().is_some_and(|p| p.exists()));
        if ready {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!(
                "gadget bound to {udc} but its /dev/hidgN nodes did not appear \
                 (is devtmpfs mounted on /dev, or udev running?)"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The gadget bound to `udc`, if one is.
fn bound_elsewhere(udc: &str) -> Result<Option<String>> {
    let Ok(rd) = fs::read_dir(CONFIGFS_GADGETS) else {
        return Ok(None);
    };
    for e in rd {
        let e = e?;
        if read_trim(&e.path().join("UDC")).as_deref() == Some(udc) {
            return Ok(Some(e.file_name().to_string_lossy().into_owned()));
        }
    }
    Ok(None)
}

fn build(spec: &GadgetSpec, dir: &Path, udc: &str) -> Result<()> {
    mkdir(dir)?;
    write(&dir.join("idVendor"), format!("{:#06x}", spec.vendor_id))?;
    write(&dir.join("idProduct"), format!("{:#06x}", spec.product_id))?;
    write(
        &dir.join("bcdDevice"),
        format!("{:#06x}", spec.device_release),
    )?;
    write(&dir.join("bcdUSB"), "0x0200")?;
    let strings = dir.join(LANG);
    mkdir(&strings)?;
    write(&strings.join("manufacturer"), &spec.manufacturer)?;
    write(&strings.join("product"), &spec.product)?;
    write(&strings.join("serialnumber"), &spec.serial)?;
    let config = dir.join(CONFIG);
    mkdir(&config)?;
    mkdir(&config.join(LANG))?;
    write(&config.join(LANG).join("configuration"), "kvmio")?;
    write(&config.join("MaxPower"), spec.max_power_ma.to_string())?;
    let functions = dir.join("functions");
    let link = |name: &str| -> Result<()> {
        let target = functions.join(name);
        std::os::unix::fs::symlink(&target, config.join(name))
            .with_context(|| format!("adding {name} to the configuration"))
    };
    if spec.keyboard {
        let f = functions.join(KEYBOARD_FN);
        mkdir(&f).context("the HID function (is usb_f_hid available?)")?;
        write(&f.join("protocol"), "1")?;
        write(&f.join("subclass"), "1")?;
        write(
            &f.join("report_length"),
            descriptors::KEYBOARD_REPORT_LEN.to_string(),
        )?;
        write(&f.join("report_desc"), descriptors::KEYBOARD)?;
        link(KEYBOARD_FN)?;
    }
    if spec.pointer {
        let f = functions.join(POINTER_FN);
        mkdir(&f).context("the HID function (is usb_f_hid available?)")?;
        write(&f.join("protocol"), "0")?;
        write(&f.join("subclass"), "0")?;
        write(
            &f.join("report_length"),
            descriptors::POINTER_REPORT_LEN.to_string(),
        )?;
        write(&f.join("report_desc"), descriptors::POINTER)?;
        link(POINTER_FN)?;
    }
    if !spec.luns.is_empty() {
        let f = functions.join(STORAGE_FN);
        mkdir(&f).context("the mass-storage function (is usb_f_mass_storage available?)")?;
        // A stalled bulk endpoint is how the gadget reports some errors; hosts cope.
        write(&f.join("stall"), "1")?;
        for (i, l) in spec.luns.iter().enumerate() {
            let d = f.join(format!("lun.{i}"));
            if i > 0 {
                mkdir(&d)?;
            }
            // ro is refused (EBUSY) once a file is open: the flags go first.
            write(&d.join("removable"), if l.removable { "1" } else { "0" })?;
            write(&d.join("cdrom"), if l.cdrom { "1" } else { "0" })?;
            write(&d.join("ro"), if l.read_only { "1" } else { "0" })?;
            write(&d.join("nofua"), "0")?;
            let inquiry = if l.cdrom {
                "kvmio   Virtual CD-ROM  0100"
            } else {
                "kvmio   Virtual Disk    0100"
            };
            // Older kernels lack inquiry_string; the default one serves as well.
            let _ = fs::write(d.join("inquiry_string"), inquiry);
            if let Some(file) = &l.file {
                let abs = fs::canonicalize(file)
                    .with_context(|| format!("LUN {i}: {}", file.display()))?;
                write(&d.join("file"), abs.as_os_str().as_encoded_bytes())
                    .with_context(|| format!("LUN {i}: inserting {}", file.display()))?;
            }
        }
        link(STORAGE_FN)?;
    }
    write(&dir.join("UDC"), udc).with_context(|| format!("binding to {udc}"))?;
    log::info!("gadget {:?} bound to {udc}", spec.name);
    Ok(())
}

/// Unbinds and removes the gadget. Media files are closed by the kernel.
pub fn down(name: &str) -> Result<()> {
    check_name(name)?;
    configfs_ready()?;
    let dir = gadget_dir(name);
    if !dir.exists() {
        bail!("no gadget {name:?} in {CONFIGFS_GADGETS}");
    }
    remove(&dir)
}

/// Removes a gadget directory the way configfs wants it: unbind, unlink the functions from
/// the configurations, then remove the directories children first (configfs refuses to
/// remove a directory with children, and files cannot be removed at all).
fn remove(dir: &Path) -> Result<()> {
    let udc = dir.join("UDC");
    if read_trim(&udc).is_some_and(|s| !s.is_empty()) {
        write(&udc, "\n").context("unbinding")?;
    }
    let rmdir = |p: &Path| -> Result<()> {
        match fs::remove_dir(p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
        }
    };
    let subdirs = |p: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    for config in subdirs(&dir.join("configs")) {
        for entry in subdirs(&config) {
            if entry.is_symlink() {
                fs::remove_file(&entry).with_context(|| format!("removing {}", entry.display()))?;
            }
        }
        for s in subdirs(&config.join("strings")) {
            rmdir(&s)?;
        }
        rmdir(&config)?;
    }
    for f in subdirs(&dir.join("functions")) {
        // lun.0 belongs to the function; the others were made by us.
        for l in subdirs(&f) {
            let n = l.file_name().unwrap_or_default().to_string_lossy();
            if n.starts_with("lun.") && n != "lun.0" && l.is_dir() {
                rmdir(&l)?;
            }
        }
        rmdir(&f)?;
    }
    for s in subdirs(&dir.join("strings")) {
        rmdir(&s)?;
    }
    rmdir(dir)?;
    Ok(())
}

/// Reads a gadget back from configfs.
pub fn status(name: &str) -> Result<GadgetStatus> {
    check_name(name)?;
    let dir = gadget_dir(name);
    if !dir.is_dir() {
        bail!("no gadget {name:?} in {CONFIGFS_GADGETS}");
    }
    let udc = read_trim(&dir.join("UDC")).filter(|s| !s.is_empty());
    let udc_state = udc
        .as_ref()
        .and_then(|u| read_trim(&Path::new(SYS_UDC).join(u).join("state")));
    let functions = dir.join("functions");
    let mut luns = Vec::new();
    let storage = functions.join(STORAGE_FN);
    for i in 0..MAX_LUNS {
        let d = storage.join(format!("lun.{i}"));
        if !d.is_dir() {
            break;
        }
        luns.push(Lun::at(d, i).state()?);
    }
    Ok(GadgetStatus {
        keyboard: hid_node(&functions.join(KEYBOARD_FN)),
        pointer: hid_node(&functions.join(POINTER_FN)),
        path: dir,
        udc,
        udc_state,
        luns,
    })
}

/// The `/dev` node of a HID function: its `dev` attribute is `major:minor`, and sysfs names
/// the node of that number.
fn hid_node(function: &Path) -> Option<PathBuf> {
    let dev = read_trim(&function.join("dev"))?;
    let uevent = fs::read_to_string(format!("/sys/dev/char/{dev}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    Some(Path::new("/dev").join(name))
}

/// The LUN `index` of the gadget `name`, for inserting and ejecting media.
pub fn lun(name: &str, index: usize) -> Result<Lun> {
    check_name(name)?;
    let d = gadget_dir(name)
        .join("functions")
        .join(STORAGE_FN)
        .join(format!("lun.{index}"));
    if !d.is_dir() {
        bail!("gadget {name:?} has no LUN {index}");
    }
    Ok(Lun::at(d, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("kvmio").is_ok());
        assert!(check_name("a-b_1").is_ok());
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_writable_cdrom_is_refused_before_configfs_is_touched() {
        let spec = GadgetSpec {
            name: "t".into(),
            luns: vec![LunSpec {
                read_only: false,
                ..LunSpec::cdrom()
            }],
            ..GadgetSpec::default()
        };
        let e = up(&spec).unwrap_err().to_string();
        assert!(e.contains("read-only"), "{e}");
        let none = GadgetSpec {
            keyboard: false,
            pointer: false,
            luns: vec![],
            ..GadgetSpec::default()
        };
        assert!(up(&none).unwrap_err().to_string().contains("no function"));
    }
}
