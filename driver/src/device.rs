//! An I/OAT PCI function: reads and validates the general registers, hands out channels.

use std::sync::Arc;

use crate::channel::{Channel, ChannelConfig};
use crate::dma::DmaMapper;
use crate::error::Error;
use crate::regs::{cap, general, pci, CbVersion, RegisterAccess};

/// What the general registers say about the device (read once at [`Device::open`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// CBVER.
    pub version: CbVersion,
    /// CHANCNT & 0x1f.
    pub chancnt: u32,
    /// XFERCAP & 0x1f as read (0 means 4 GiB, as in SPDK).
    pub xfercap_log: u8,
    /// Largest size of one descriptor, `1 << XFERCAP` (4 GiB for XFERCAP 0).
    pub max_xfer: u64,
    /// DMACAPABILITY.
    pub dmacap: u32,
    /// DMA address width the device handles (rule A3: 48 bits from CB3.3, 46 for CB3.2, 40
    /// below), checked on every submitted address.
    pub addr_bits: u32,
}

impl DeviceInfo {
    /// Whether the block-fill operation is available (DMACAPABILITY.FILL_BLOCK, rule O5).
    pub fn has_fill(&self) -> bool {
        self.dmacap & cap::FILL_BLOCK != 0
    }

    /// Size of the pieces copies and fills are split into: `max_xfer`, but at most 2 GiB so it
    /// fits the 32-bit size field and stays a power of two (fill patterns keep their phase).
    pub fn piece_size(&self) -> u64 {
        self.max_xfer.min(1 << 31)
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CB {} with {} channel(s), XFERCAP {} ({} bytes/descriptor), DMACAPABILITY {:#x}{}",
            self.version,
            self.chancnt,
            self.xfercap_log,
            self.max_xfer,
            self.dmacap,
            if self.has_fill() { " (fill)" } else { "" }
        )
    }
}

/// Knobs for [`Device::open_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Clear CHANERR_INT (PCI config 0x180) on reset. `None`: only when CBVER < 3.3, where the
    /// register exists (rule E2, as SPDK does). `Some(true)` imitates Linux on SKX, which it
    /// treats as CB3.2 whatever CBVER says (rule V2).
    pub clear_chanerr_int: Option<bool>,
    /// Set MEMORY and BUS_MASTER in the PCI COMMAND register if clear (the device cannot DMA
    /// without bus mastering).
    pub enable_bus_master: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            clear_chanerr_int: None,
            enable_bus_master: true,
        }
    }
}

pub(crate) struct DeviceShared<R> {
    pub(crate) regs: R,
    pub(crate) mapper: Arc<dyn DmaMapper>,
    pub(crate) info: DeviceInfo,
    pub(crate) opts: DeviceOptions,
    /// Bitmask of open channels.
    pub(crate) open: parking_lot::Mutex<u32>,
}

impl<R> DeviceShared<R> {
    pub(crate) fn clear_chanerr_int(&self) -> bool {
        self.opts
            .clear_chanerr_int
            .unwrap_or(self.info.version.has_chanerr_int())
    }
}

/// An opened I/OAT function. Cheap to share: channels keep the device state alive.
pub struct Device<R: RegisterAccess> {
    shared: Arc<DeviceShared<R>>,
}

impl<R: RegisterAccess> std::fmt::Debug for Device<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("info", &self.shared.info)
            .finish()
    }
}

impl<R: RegisterAccess> Device<R> {
    /// Opens a device with default options. See [`Device::open_with`].
    pub fn open(regs: R, mapper: Arc<dyn DmaMapper>) -> Result<Self, Error> {
        Self::open_with(regs, mapper, DeviceOptions::default())
    }

    /// Reads CBVER, CHANCNT, XFERCAP and DMACAPABILITY and validates them: CBVER >= 3.0 (rule
    /// V1), CHANCNT >= 1, XFERCAP 0 (4 GiB) or >= 12 (rule S3, as SPDK). Touches no channel.
    pub fn open_with(
        regs: R,
        mapper: Arc<dyn DmaMapper>,
        opts: DeviceOptions,
    ) -> Result<Self, Error> {
        let version = CbVersion(regs.read8(general::CBVER));
        if version < CbVersion::V3_0 {
            return Err(Error::UnsupportedVersion(version));
        }
        let chancnt = (regs.read8(general::CHANCNT) & general::FIELD_MASK_5) as u32;
        if chancnt == 0 {
            return Err(Error::NoChannels);
        }
        let xfercap_log = regs.read8(general::XFERCAP) & general::FIELD_MASK_5;
        let max_xfer = match xfercap_log {
            0 => 1u64 << 32,
            x if x < 12 => return Err(Error::BadXferCap(x)),
            x => 1u64 << x,
        };
        let dmacap = regs.read32(general::DMACAPABILITY);
        let addr_bits = match version.0 {
            v if v >= 0x33 => 48,
            0x32 => 46,
            _ => 40,
        };
        if opts.enable_bus_master {
            let cmd = regs.config_read32(pci::COMMAND) & 0xffff;
            let want = (pci::COMMAND_MEMORY | pci::COMMAND_MASTER) as u32;
            if cmd & want != want {
                // Upper half (STATUS) written as 0: its bits are W1C, so nothing is cleared.
                regs.config_write32(pci::COMMAND, cmd | want);
            }
        }
        let info = DeviceInfo {
            version,
            chancnt,
            xfercap_log,
            max_xfer,
            dmacap,
            addr_bits,
        };
        tracing::debug!(%info, "opened I/OAT device");
        Ok(Device {
            shared: Arc::new(DeviceShared {
                regs,
                mapper,
                info,
                opts,
                open: parking_lot::Mutex::new(0),
            }),
        })
    }

    /// What the general registers said.
    pub fn info(&self) -> DeviceInfo {
        self.shared.info
    }

    /// The mapper DMA memory for this device goes through.
    pub fn mapper(&self) -> Arc<dyn DmaMapper> {
        self.shared.mapper.clone()
    }

    /// The register access (for diagnostics).
    pub fn regs(&self) -> &R {
        &self.shared.regs
    }

    /// Opens channel `n`: allocates its ring and completion word, resets it, programs it and
    /// starts it with a null descriptor. One `Channel` per channel number at a time. Its
    /// operations carry no context; see [`Device::channel_with_context`].
    pub fn channel(&self, n: u32, cfg: ChannelConfig) -> Result<Channel<R>, Error> {
        self.channel_with_context(n, cfg)
    }

    /// [`Device::channel`] for a channel whose operations each carry a caller-chosen value of
    /// type `T`, given to the `*_with` submit calls and handed back in that operation's
    /// completion (see [`Channel::copy_with`]).
    pub fn channel_with_context<T>(
        &self,
        n: u32,
        cfg: ChannelConfig,
    ) -> Result<Channel<R, T>, Error> {
        let count = self.shared.info.chancnt;
        if n >= count {
            return Err(Error::NoSuchChannel { n, count });
        }
        {
            let mut open = self.shared.open.lock();
            if *open & (1 << n) != 0 {
                return Err(Error::ChannelInUse(n));
            }
            *open |= 1 << n;
        }
        match Channel::new(self.shared.clone(), n, cfg) {
            Ok(c) => Ok(c),
            Err(e) => {
                *self.shared.open.lock() &= !(1 << n);
                Err(e)
            }
        }
    }
}
