//! File systems mounted for a test (root only): a small tmpfs to fill up, one remounted
//! read-only, a FAT-family image that folds case and rounds mtimes; unmounted when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A file system mounted on a directory (through a loop device set up here, for
/// exfat-fuse), unmounted when dropped.
pub struct Mount {
    at: PathBuf,
    loop_dev: Option<String>,
}

impl Mount {
    /// A 32 MiB FAT-family image mounted on `at`: the kernel's vfat or exfat through a loop
    /// device where the kernel has them, else exfat-fuse (kernels built without either, as
    /// in some CI VMs; exFAT folds case and drops sub-second mtimes as vfat does, which is
    /// what the tests need). fusefat is not used: it cannot chmod (ENOSYS) and its rename
    /// resets the mtime, which no kernel FAT does. Err, with the reason, when none can be
    /// had: the caller skips its test.
    pub fn fat(at: &Path, image: &Path) -> Result<Mount, String> {
        let ok = |c: &mut Command| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let fresh = |mkfs: &str| {
            let _ = std::fs::remove_file(image);
            ok(Command::new("truncate").args(["-s", "32M"]).arg(image))
                && ok(Command::new(mkfs).arg(image))
        };
        for (mkfs, fs) in [("mkfs.vfat", "vfat"), ("mkfs.exfat", "exfat")] {
            if fresh(mkfs)
                && ok(Command::new("mount")
                    .args(["-t", fs, "-o", "loop"])
                    .arg(image)
                    .arg(at))
            {
                return Ok(Mount {
                    at: at.to_path_buf(),
                    loop_dev: None,
                });
            }
        }
        if !fresh("mkfs.exfat") {
            return Err("no kernel vfat/exfat, and mkfs.exfat is missing (exfatprogs)".into());
        }
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || dev.is_empty() {
            return Err("no loop device for exfat-fuse".into());
        }
        if ok(Command::new("mount.exfat-fuse").arg(&dev).arg(at)) {
            return Ok(Mount {
                at: at.to_path_buf(),
                loop_dev: Some(dev),
            });
        }
        let _ = Command::new("losetup").args(["-d", &dev]).status();
        Err("neither the kernel's vfat/exfat nor exfat-fuse can mount a FAT image here".into())
    }

    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a tmpfs at {}", at.display());
        Mount {
            at: at.to_path_buf(),
            loop_dev: None,
        }
    }

    pub fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.at)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {} with {opts}", self.at.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success())
        {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}
