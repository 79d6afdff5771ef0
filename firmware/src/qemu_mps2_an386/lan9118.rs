//! A driver for the SMSC LAN9118 Ethernet controller, as QEMU's mps2-an386 board has it
//! (registers at 0x4020_0000, interrupt 13).
//!
//! Design note: the LAN9118 is a FIFO device, not a DMA one: a received frame is one
//! entry of the RX status FIFO (its length, CRC included, and error bits) and its bytes
//! as little-endian words in the RX data FIFO; a frame is sent by writing two command
//! words and its bytes into the TX data FIFO. So the driver copies each frame between the
//! FIFOs and embassy-net-driver-channel's packet buffers, one frame at a time, from one
//! task ([`super::ethernet`]): no descriptors, no shared buffers, and the only state the
//! interrupt handler touches is a waker. The interrupt (RX status FIFO level) is enabled
//! only while the task waits, and masked by the handler, so a level-triggered source never
//! storms. MAC registers are reached through the MAC CSR window and PHY registers through
//! the MAC's MII window, as the datasheet describes. Frames the chip flags as bad and
//! frames longer than the channel's MTU are read out and dropped, with a counter each;
//! frames the chip itself had to drop (RX FIFO full) are counted from its RX_DROP
//! register.
//!
//! This is the only module with `unsafe`: volatile access to the chip's registers, at a
//! fixed address of this board.

use core::future::poll_fn;
use core::task::Poll;

use cortex_m::interrupt::InterruptNumber;
use embassy_sync::waitqueue::AtomicWaker;

/// The largest Ethernet frame exchanged with embassy-net (header + 1500, no FCS).
pub const MTU: usize = 1514;

/// The LAN9118's register window on mps2-an386.
const BASE: usize = 0x4020_0000;

/// Register offsets.
mod reg {
    pub const RX_DATA_FIFO: usize = 0x00;
    pub const TX_DATA_FIFO: usize = 0x20;
    pub const RX_STATUS_FIFO: usize = 0x40;
    pub const TX_STATUS_FIFO: usize = 0x48;
    pub const ID_REV: usize = 0x50;
    pub const IRQ_CFG: usize = 0x54;
    pub const INT_STS: usize = 0x58;
    pub const INT_EN: usize = 0x5c;
    pub const BYTE_TEST: usize = 0x64;
    pub const TX_CFG: usize = 0x70;
    pub const HW_CFG: usize = 0x74;
    pub const RX_FIFO_INF: usize = 0x7c;
    pub const TX_FIFO_INF: usize = 0x80;
    pub const PMT_CTRL: usize = 0x84;
    pub const RX_DROP: usize = 0xa0;
    pub const MAC_CSR_CMD: usize = 0xa4;
    pub const MAC_CSR_DATA: usize = 0xa8;
}

/// MAC CSR indices.
mod mac {
    pub const CR: u32 = 1;
    pub const ADDRH: u32 = 2;
    pub const ADDRL: u32 = 3;
    pub const MII_ACC: u32 = 6;
    pub const MII_DATA: u32 = 7;
    pub const CR_RXEN: u32 = 1 << 2;
    pub const CR_TXEN: u32 = 1 << 3;
    pub const CR_FDPX: u32 = 1 << 20;
}

const BYTE_TEST_VALUE: u32 = 0x8765_4321;
const HW_CFG_SRST: u32 = 1 << 0;
const PMT_CTRL_READY: u32 = 1 << 0;
const TX_CFG_TX_ON: u32 = 1 << 1;
const TX_CFG_TXSAO: u32 = 1 << 2;
const CSR_BUSY: u32 = 1 << 31;
const CSR_READ: u32 = 1 << 30;
const MII_BUSY: u32 = 1 << 0;
const PHY_ADDRESS: u32 = 1;
const PHY_BSR: u32 = 1;
const PHY_BSR_LINK: u32 = 1 << 2;
/// IRQ_CFG: the IRQ pin enabled, active high, push-pull.
const IRQ_CFG_ACTIVE_HIGH: u32 = (1 << 8) | (1 << 4) | (1 << 0);
/// INT_STS/INT_EN: the RX status FIFO holds more entries than its level (0).
const INT_RSFL: u32 = 1 << 3;
const TX_CMD_A_FIRST: u32 = 1 << 13;
const TX_CMD_A_LAST: u32 = 1 << 12;
const RX_STATUS_ERROR: u32 = 1 << 15;
const TX_STATUS_ERROR: u32 = 1 << 15;
/// The FCS the chip leaves at the end of every received frame.
const FCS: usize = 4;
/// How long register handshakes are polled before the chip counts as not responding.
const SPIN_LIMIT: u32 = 100_000;

/// The chip's interrupt line on mps2-an386.
#[derive(Clone, Copy)]
pub struct Irq;

// SAFETY: 13 is the LAN9118's interrupt number on mps2-an386 (QEMU's hw/arm/mps2.c).
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        13
    }
}

/// Wakes the Ethernet task when a frame has arrived.
static RX_WAKER: AtomicWaker = AtomicWaker::new();

/// Why the chip could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum InitError {
    /// BYTE_TEST did not read 0x87654321: no LAN9118 at the address, or wrong byte order.
    ByteTest(u32),
    /// The chip did not leave soft reset or become ready.
    ResetTimeout,
    /// A MAC CSR or MII access did not complete.
    RegisterTimeout,
}

/// Why a received frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum RxDrop {
    /// The chip flagged the frame (CRC error, runt, too long, ...).
    Errored,
    /// Longer than the buffer it was to be copied into.
    TooLong(usize),
    /// Shorter than its FCS.
    Runt(usize),
}

/// Frame counters of the driver.
#[derive(Debug, Default, Clone, Copy, defmt::Format)]
pub struct Stats {
    /// Frames handed to the stack.
    pub rx_frames: u32,
    /// Frames dropped because the chip flagged them.
    pub rx_errored: u32,
    /// Frames dropped for not fitting the buffer (or shorter than an FCS).
    pub rx_bad_length: u32,
    /// Frames the chip dropped itself (its RX FIFO was full), from RX_DROP.
    pub rx_fifo_dropped: u32,
    /// Frames written to the TX FIFO.
    pub tx_frames: u32,
    /// Frames the chip reported as not sent.
    pub tx_errored: u32,
}

/// The chip, initialised: MAC address set, receiver and transmitter on.
pub struct Lan9118 {
    stats: Stats,
}

/// Reads a register.
fn read(offset: usize) -> u32 {
    // SAFETY: BASE + offset is one of the LAN9118's 32-bit registers on this board (the
    // window is 256 bytes, every offset is a constant of `reg`), a device register with
    // no Rust object behind it.
    unsafe { core::ptr::read_volatile((BASE + offset) as *const u32) }
}

/// Writes a register.
fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((BASE + offset) as *mut u32, value) }
}

/// Polls until `done` holds, a bounded number of times.
fn spin_until(mut done: impl FnMut() -> bool) -> bool {
    (0..SPIN_LIMIT).any(|_| done())
}

impl Lan9118 {
    /// Resets the chip and starts it with `mac` as its address.
    pub fn new(mac: [u8; 6]) -> Result<Lan9118, InitError> {
        let byte_test = read(reg::BYTE_TEST);
        if byte_test != BYTE_TEST_VALUE {
            return Err(InitError::ByteTest(byte_test));
        }
        write(reg::HW_CFG, HW_CFG_SRST);
        if !spin_until(|| read(reg::HW_CFG) & HW_CFG_SRST == 0)
            || !spin_until(|| read(reg::PMT_CTRL) & PMT_CTRL_READY != 0)
        {
            return Err(InitError::ResetTimeout);
        }
        let chip = Lan9118 {
            stats: Stats::default(),
        };
        let [a, b, c, d, e, f] = mac;
        chip.mac_write(mac::ADDRL, u32::from_le_bytes([a, b, c, d]))?;
        chip.mac_write(mac::ADDRH, u32::from_le_bytes([e, f, 0, 0]))?;
        chip.mac_write(mac::CR, mac::CR_RXEN | mac::CR_TXEN | mac::CR_FDPX)?;
        write(reg::TX_CFG, TX_CFG_TX_ON | TX_CFG_TXSAO);
        write(reg::INT_EN, 0);
        write(reg::INT_STS, u32::MAX);
        write(reg::IRQ_CFG, IRQ_CFG_ACTIVE_HIGH);
        Ok(chip)
    }

    /// The chip's revision (ID_REV: chip id in the high half).
    pub fn id(&self) -> u32 {
        read(reg::ID_REV)
    }

    /// The driver's counters, with the chip's own drop count added up.
    pub fn stats(&mut self) -> Stats {
        // RX_DROP clears on read.
        self.stats.rx_fifo_dropped = self.stats.rx_fifo_dropped.wrapping_add(read(reg::RX_DROP));
        self.stats
    }

    fn mac_wait(&self) -> Result<(), InitError> {
        if spin_until(|| read(reg::MAC_CSR_CMD) & CSR_BUSY == 0) {
            Ok(())
        } else {
            Err(InitError::RegisterTimeout)
        }
    }

    fn mac_write(&self, index: u32, value: u32) -> Result<(), InitError> {
        self.mac_wait()?;
        write(reg::MAC_CSR_DATA, value);
        write(reg::MAC_CSR_CMD, CSR_BUSY | index);
        self.mac_wait()
    }

    fn mac_read(&self, index: u32) -> Result<u32, InitError> {
        self.mac_wait()?;
        write(reg::MAC_CSR_CMD, CSR_BUSY | CSR_READ | index);
        self.mac_wait()?;
        Ok(read(reg::MAC_CSR_DATA))
    }

    fn phy_read(&self, register: u32) -> Result<u32, InitError> {
        self.mac_write(
            mac::MII_ACC,
            (PHY_ADDRESS << 11) | (register << 6) | MII_BUSY,
        )?;
        let mut idle = false;
        for _ in 0..SPIN_LIMIT {
            if self.mac_read(mac::MII_ACC)? & MII_BUSY == 0 {
                idle = true;
                break;
            }
        }
        if !idle {
            return Err(InitError::RegisterTimeout);
        }
        self.mac_read(mac::MII_DATA)
    }

    /// True when the PHY reports the link up.
    pub fn link_up(&self) -> bool {
        matches!(self.phy_read(PHY_BSR), Ok(bsr) if bsr & PHY_BSR_LINK != 0)
    }

    /// True when at least one received frame waits in the RX FIFO.
    pub fn rx_pending(&self) -> bool {
        (read(reg::RX_FIFO_INF) >> 16) & 0xff != 0
    }

    /// Waits until a frame has arrived (the RX status FIFO is not empty).
    pub async fn wait_rx(&self) {
        poll_fn(|cx| {
            RX_WAKER.register(cx.waker());
            if self.rx_pending() {
                write(reg::INT_EN, 0);
                return Poll::Ready(());
            }
            write(reg::INT_STS, INT_RSFL);
            write(reg::INT_EN, INT_RSFL);
            // A frame that arrived between the check and the enable raised the line.
            if self.rx_pending() {
                write(reg::INT_EN, 0);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Pops the next received frame into `buf` and returns its length (without FCS).
    /// Call only when [`Lan9118::rx_pending`] holds. A dropped frame is read out of the
    /// FIFO all the same, so the next one starts at its beginning.
    pub fn receive(&mut self, buf: &mut [u8]) -> Result<usize, RxDrop> {
        let status = read(reg::RX_STATUS_FIFO);
        let len = ((status >> 16) & 0x3fff) as usize;
        let words = len.div_ceil(4);
        let result = if status & RX_STATUS_ERROR != 0 {
            Err(RxDrop::Errored)
        } else if len < FCS {
            Err(RxDrop::Runt(len))
        } else if len - FCS > buf.len() {
            Err(RxDrop::TooLong(len - FCS))
        } else {
            Ok(len - FCS)
        };
        let frame_len = *result.as_ref().unwrap_or(&0);
        for word in 0..words {
            let bytes = read(reg::RX_DATA_FIFO).to_le_bytes();
            let at = word * 4;
            if at < frame_len {
                let n = (frame_len - at).min(4);
                buf[at..at + n].copy_from_slice(&bytes[..n]);
            }
        }
        match result {
            Ok(_) => self.stats.rx_frames = self.stats.rx_frames.wrapping_add(1),
            Err(RxDrop::Errored) => self.stats.rx_errored = self.stats.rx_errored.wrapping_add(1),
            Err(_) => self.stats.rx_bad_length = self.stats.rx_bad_length.wrapping_add(1),
        }
        result
    }

    /// Writes `frame` (without FCS) into the TX FIFO; the chip sends it and appends the
    /// FCS. Waits for FIFO room first (bounded). A frame longer than [`MTU`], or one the
    /// FIFO has no room for, is dropped and counted as a transmit error.
    pub fn transmit(&mut self, frame: &[u8]) {
        let needed = frame.len().div_ceil(4) * 4 + 8;
        if frame.len() > MTU || !spin_until(|| (read(reg::TX_FIFO_INF) & 0xffff) as usize >= needed)
        {
            self.stats.tx_errored = self.stats.tx_errored.wrapping_add(1);
            return;
        }
        let len32 = frame.len() as u32;
        write(reg::TX_DATA_FIFO, TX_CMD_A_FIRST | TX_CMD_A_LAST | len32);
        write(reg::TX_DATA_FIFO, (len32 << 16) | len32);
        for chunk in frame.chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            write(reg::TX_DATA_FIFO, u32::from_le_bytes(word));
        }
        self.stats.tx_frames = self.stats.tx_frames.wrapping_add(1);
        // Drain the TX status FIFO so that the next status is never lost.
        while (read(reg::TX_FIFO_INF) >> 16) & 0xff != 0 {
            if read(reg::TX_STATUS_FIFO) & TX_STATUS_ERROR != 0 {
                self.stats.tx_errored = self.stats.tx_errored.wrapping_add(1);
            }
        }
    }
}

/// The chip's interrupt: masks it (the task re-enables it when it waits again) and wakes
/// the task.
pub fn on_interrupt() {
    write(reg::INT_EN, 0);
    RX_WAKER.wake();
}
