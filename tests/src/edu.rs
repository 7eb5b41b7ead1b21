//! A small driver for QEMU's `edu` educational PCI device (vendor 0x1234, device 0x11e8), the
//! DMA-capable device the VFIO guest tier drives (docs/testing.md).
//!
//! Register map (QEMU `hw/misc/edu.c`, `docs/specs/edu.rst`), BAR0, little endian:
//!
//! | offset | access | meaning |
//! |--------|--------|---------|
//! | 0x00 | RO 32 | identification, `0xRRrr00ed` (major, minor, 0xed); QEMU 7.2: 0x010000ed |
//! | 0x04 | RW 32 | liveness: reads back the bitwise inverse of what was written |
//! | 0x20 | RW 32 | status (factorial engine; unused here) |
//! | 0x24 | RO 32 | interrupt status (0x100 = DMA done) |
//! | 0x60 | WO 32 | raise interrupt (bits OR-ed into the status) |
//! | 0x64 | WO 32 | acknowledge interrupt (bits cleared from the status) |
//! | 0x80 | RW 32/64 | DMA source address |
//! | 0x88 | RW 32/64 | DMA destination address |
//! | 0x90 | RW 32/64 | DMA transfer count |
//! | 0x98 | RW 32/64 | DMA command: bit 0 start (clears on completion), bit 1 direction (0: RAM to device, 1: device to RAM), bit 2 raise interrupt 0x100 when done |
//!
//! The device side of a transfer is the 4 KiB buffer at device address 0x40000. DMA addresses
//! go through the device's DMA mask (default 28 bits: QEMU clamps higher addresses), and the
//! transfer starts 100 ms of guest time after the command is written. Registers below 0x80
//! accept only 32-bit accesses. A 32-bit write to a DMA register replaces all 64 bits of it, so
//! this driver writes addresses as one 32-bit value and refuses addresses at or above 4 GiB.
//! Writes to DMA registers while a transfer runs are ignored by the device; we refuse them.
//!
//! QEMU 7.2's range check is off by one: a transfer that touches the last byte of the device
//! buffer (0x40fff) kills the whole VM with "hw_error: EDU: DMA range ... out of bounds"
//! (measured here). So the usable device window is [`DMA_MAX_LEN`] = 4095 bytes.

use std::fmt;
use std::time::{Duration, Instant};

use ioat_driver::regs::RegisterAccess;

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x11e8;

pub const REG_ID: u32 = 0x00;
pub const REG_LIVENESS: u32 = 0x04;
pub const REG_IRQ_STATUS: u32 = 0x24;
pub const REG_IRQ_RAISE: u32 = 0x60;
pub const REG_IRQ_ACK: u32 = 0x64;
pub const REG_DMA_SRC: u32 = 0x80;
pub const REG_DMA_DST: u32 = 0x88;
pub const REG_DMA_COUNT: u32 = 0x90;
pub const REG_DMA_CMD: u32 = 0x98;

/// The identification value of the edu device in QEMU 7.x (version 1.0, magic 0xed).
pub const ID_MAGIC: u32 = 0x0000_00ed;
pub const ID_MAGIC_MASK: u32 = 0x0000_ffff;

pub const CMD_START: u32 = 1 << 0;
pub const CMD_TO_RAM: u32 = 1 << 1;
pub const CMD_IRQ: u32 = 1 << 2;
/// Interrupt status bit raised when a DMA with [`CMD_IRQ`] completes.
pub const IRQ_DMA: u32 = 0x100;

/// Device address of the internal DMA buffer, and its size.
pub const DMA_BUF_ADDR: u64 = 0x4_0000;
pub const DMA_BUF_LEN: usize = 4096;
/// The part of the device buffer a transfer may touch on every QEMU version (see above).
pub const DMA_MAX_LEN: usize = DMA_BUF_LEN - 1;

/// Which way a DMA moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Host memory (at an IOVA) into the device buffer.
    ToDevice,
    /// The device buffer into host memory (at an IOVA).
    ToRam,
}

/// Errors from the edu driver; each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EduError {
    /// BAR0 does not hold an edu device.
    NotEdu { id: u32 },
    /// The liveness register did not invert the value written.
    Liveness { wrote: u32, read: u32 },
    /// The device window `off..off+len` is outside the 4 KiB device buffer.
    DeviceRange { off: usize, len: usize },
    /// The host IOVA range does not fit the 32-bit register writes this driver uses.
    IovaTooHigh { iova: u64, len: usize },
    /// A transfer is still running.
    Busy,
    /// The transfer did not complete in time.
    Timeout { waited: Duration },
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EduError::NotEdu { id } => write!(
                f,
                "BAR0 identification register reads {id:#010x}, not an edu device (expected low half 0x00ed); check the BDF and that QEMU runs with -device edu"
            ),
            EduError::Liveness { wrote, read } => write!(
                f,
                "liveness check failed: wrote {wrote:#010x}, read {read:#010x} (expected {:#010x}); the BAR mapping does not reach the device",
                !wrote
            ),
            EduError::DeviceRange { off, len } => write!(
                f,
                "device range {off:#x}+{len} lies outside the usable edu DMA buffer (0..{DMA_MAX_LEN}; QEMU 7.2 aborts on the buffer's last byte)"
            ),
            EduError::IovaTooHigh { iova, len } => write!(
                f,
                "IOVA range {iova:#x}+{len} reaches beyond 4 GiB; restrict the mapper's IOVA window below the device's DMA mask"
            ),
            EduError::Busy => write!(f, "a DMA transfer is still running; wait for it first"),
            EduError::Timeout { waited } => write!(
                f,
                "DMA did not complete within {waited:?}; the device may be stalled by an IOMMU fault"
            ),
        }
    }
}

impl std::error::Error for EduError {}

/// The edu device behind some register access (a VFIO BAR, a sysfs BAR, or a test fake).
pub struct Edu<R> {
    regs: R,
}

impl<R: RegisterAccess> Edu<R> {
    /// Checks the identification register and wraps the BAR.
    pub fn new(regs: R) -> Result<Self, EduError> {
        let id = regs.read32(REG_ID);
        if id & ID_MAGIC_MASK != ID_MAGIC {
            return Err(EduError::NotEdu { id });
        }
        Ok(Edu { regs })
    }

    /// The register access.
    pub fn regs(&self) -> &R {
        &self.regs
    }

    /// The identification register (0x010000ed on QEMU 7.x).
    pub fn id(&self) -> u32 {
        self.regs.read32(REG_ID)
    }

    /// Writes `value` to the liveness register and checks the device inverted it.
    pub fn check_liveness(&self, value: u32) -> Result<(), EduError> {
        self.regs.write32(REG_LIVENESS, value);
        let read = self.regs.read32(REG_LIVENESS);
        if read == !value {
            Ok(())
        } else {
            Err(EduError::Liveness { wrote: value, read })
        }
    }

    /// True while a transfer runs.
    pub fn dma_busy(&self) -> bool {
        self.regs.read32(REG_DMA_CMD) & CMD_START != 0
    }

    /// Starts a transfer of `len` bytes between host IOVA `iova` and device buffer offset
    /// `dev_off`; with `irq`, the device raises [`IRQ_DMA`] (an MSI) when done.
    pub fn start_dma(
        &self,
        dir: Direction,
        iova: u64,
        dev_off: usize,
        len: usize,
        irq: bool,
    ) -> Result<(), EduError> {
        if len == 0 || dev_off.checked_add(len).is_none_or(|e| e > DMA_MAX_LEN) {
            return Err(EduError::DeviceRange { off: dev_off, len });
        }
        if iova.checked_add(len as u64).is_none_or(|e| e > 1 << 32) {
            return Err(EduError::IovaTooHigh { iova, len });
        }
        if self.dma_busy() {
            return Err(EduError::Busy);
        }
        let dev = (DMA_BUF_ADDR + dev_off as u64) as u32;
        let (src, dst, mut cmd) = match dir {
            Direction::ToDevice => (iova as u32, dev, CMD_START),
            Direction::ToRam => (dev, iova as u32, CMD_START | CMD_TO_RAM),
        };
        if irq {
            cmd |= CMD_IRQ;
        }
        self.regs.write32(REG_DMA_SRC, src);
        self.regs.write32(REG_DMA_DST, dst);
        self.regs.write32(REG_DMA_COUNT, len as u32);
        self.regs.write32(REG_DMA_CMD, cmd);
        Ok(())
    }

    /// Polls until the running transfer completes, sleeping `poll` between reads.
    pub fn wait_idle(&self, timeout: Duration, poll: Duration) -> Result<Duration, EduError> {
        let start = Instant::now();
        loop {
            if !self.dma_busy() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(EduError::Timeout {
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(poll);
        }
    }

    /// The interrupt status register.
    pub fn irq_status(&self) -> u32 {
        self.regs.read32(REG_IRQ_STATUS)
    }

    /// Clears `bits` from the interrupt status.
    pub fn ack_irq(&self, bits: u32) {
        self.regs.write32(REG_IRQ_ACK, bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake edu: registers plus 64 KiB of "host memory" at IOVA 0; a transfer completes on
    /// the first read of the command register after it was started.
    struct Fake {
        st: Mutex<FakeState>,
    }
    struct FakeState {
        liveness: u32,
        src: u64,
        dst: u64,
        count: u64,
        cmd: u32,
        irq: u32,
        /// While set, transfers never complete (a stalled device).
        hold: bool,
        buf: Vec<u8>,
        ram: Vec<u8>,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                st: Mutex::new(FakeState {
                    liveness: 0,
                    src: 0,
                    dst: 0,
                    count: 0,
                    cmd: 0,
                    irq: 0,
                    hold: false,
                    buf: vec![0; DMA_BUF_LEN],
                    ram: vec![0; 65536],
                }),
            }
        }
    }

    impl RegisterAccess for Fake {
        fn read8(&self, _: u32) -> u8 {
            u8::MAX
        }
        fn read16(&self, _: u32) -> u16 {
            u16::MAX
        }
        fn read32(&self, off: u32) -> u32 {
            let mut s = self.st.lock().unwrap();
            match off {
                REG_ID => 0x0100_00ed,
                REG_LIVENESS => s.liveness,
                REG_IRQ_STATUS => s.irq,
                REG_DMA_CMD => {
                    let cmd = s.cmd;
                    if cmd & CMD_START != 0 && !s.hold {
                        let n = s.count as usize;
                        if cmd & CMD_TO_RAM != 0 {
                            let b = (s.src - DMA_BUF_ADDR) as usize;
                            let (d, src) = (s.dst as usize, s.buf[b..b + n].to_vec());
                            s.ram[d..d + n].copy_from_slice(&src);
                        } else {
                            let b = (s.dst - DMA_BUF_ADDR) as usize;
                            let src = s.ram[s.src as usize..][..n].to_vec();
                            s.buf[b..b + n].copy_from_slice(&src);
                        }
                        s.cmd &= !CMD_START;
                        if cmd & CMD_IRQ != 0 {
                            s.irq |= IRQ_DMA;
                        }
                    }
                    cmd
                }
                _ => u32::MAX,
            }
        }
        fn write8(&self, _: u32, _: u8) {}
        fn write16(&self, _: u32, _: u16) {}
        fn write32(&self, off: u32, val: u32) {
            let mut s = self.st.lock().unwrap();
            match off {
                REG_LIVENESS => s.liveness = !val,
                REG_IRQ_ACK => s.irq &= !val,
                REG_DMA_SRC => s.src = val as u64,
                REG_DMA_DST => s.dst = val as u64,
                REG_DMA_COUNT => s.count = val as u64,
                REG_DMA_CMD => s.cmd = val,
                _ => {}
            }
        }
        fn config_read32(&self, _: u16) -> u32 {
            u32::MAX
        }
        fn config_write32(&self, _: u16, _: u32) {}
    }

    struct NotEdu;
    impl RegisterAccess for NotEdu {
        fn read8(&self, _: u32) -> u8 {
            0
        }
        fn read16(&self, _: u32) -> u16 {
            0
        }
        fn read32(&self, _: u32) -> u32 {
            0xffff_ffff
        }
        fn write8(&self, _: u32, _: u8) {}
        fn write16(&self, _: u32, _: u16) {}
        fn write32(&self, _: u32, _: u32) {}
        fn config_read32(&self, _: u16) -> u32 {
            0
        }
        fn config_write32(&self, _: u16, _: u32) {}
    }

    #[test]
    fn identifies_and_checks_liveness() {
        let e = Edu::new(Fake::new()).unwrap();
        assert_eq!(e.id(), 0x0100_00ed);
        e.check_liveness(0x1234_5678).unwrap();
        let err = Edu::new(NotEdu).err().unwrap();
        assert_eq!(err, EduError::NotEdu { id: 0xffff_ffff });
        assert!(err.to_string().contains("-device edu"));
    }

    #[test]
    fn round_trip_through_the_device_buffer() {
        let e = Edu::new(Fake::new()).unwrap();
        {
            let mut s = e.regs().st.lock().unwrap();
            for (i, b) in s.ram[0x1000..0x2000].iter_mut().enumerate() {
                *b = (i * 7) as u8;
            }
        }
        e.start_dma(Direction::ToDevice, 0x1000, 0, 2048, true)
            .unwrap();
        e.wait_idle(Duration::from_secs(1), Duration::from_millis(1))
            .unwrap();
        assert_eq!(e.irq_status() & IRQ_DMA, IRQ_DMA);
        e.ack_irq(IRQ_DMA);
        assert_eq!(e.irq_status(), 0);
        e.start_dma(Direction::ToRam, 0x3000, 0, 2048, false)
            .unwrap();
        e.wait_idle(Duration::from_secs(1), Duration::from_millis(1))
            .unwrap();
        let s = e.regs().st.lock().unwrap();
        assert_eq!(s.ram[0x1000..0x1800], s.ram[0x3000..0x3800]);
        assert!(s.ram[0x3800..0x4000].iter().all(|&b| b == 0));
        assert_eq!(s.irq, 0, "no interrupt requested, none raised");
    }

    #[test]
    fn refuses_bad_ranges() {
        let e = Edu::new(Fake::new()).unwrap();
        assert_eq!(
            e.start_dma(Direction::ToRam, 0, 0, 4096, false),
            Err(EduError::DeviceRange { off: 0, len: 4096 })
        );
        assert_eq!(
            e.start_dma(Direction::ToRam, 0, 4000, 200, false),
            Err(EduError::DeviceRange {
                off: 4000,
                len: 200
            })
        );
        assert_eq!(
            e.start_dma(Direction::ToRam, 0, 0, 0, false),
            Err(EduError::DeviceRange { off: 0, len: 0 })
        );
        assert_eq!(
            e.start_dma(Direction::ToDevice, (1 << 32) - 16, 0, 32, false),
            Err(EduError::IovaTooHigh {
                iova: (1 << 32) - 16,
                len: 32
            })
        );
        // A running transfer is neither disturbed nor waited for forever.
        e.regs().st.lock().unwrap().hold = true;
        e.start_dma(Direction::ToRam, 0x1000, 0, 64, false).unwrap();
        assert_eq!(
            e.start_dma(Direction::ToRam, 0x2000, 0, 64, false),
            Err(EduError::Busy)
        );
        assert_eq!(e.regs().st.lock().unwrap().dst, 0x1000);
        assert!(matches!(
            e.wait_idle(Duration::from_millis(20), Duration::from_millis(5)),
            Err(EduError::Timeout { .. })
        ));
    }
}
