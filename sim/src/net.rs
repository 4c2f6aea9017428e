//! The network and host cost model.
//!
//! One link of `bandwidth_bps` carries two logical channels, as the engine
//! uses two connections: the bulk channel (pre-copy rounds, pushed batches)
//! and the fault channel (requests and their replies). A fault reply never
//! queues behind bulk data: it goes out as soon as the source has read the
//! page and the fault channel itself is free, and the bandwidth it uses is
//! taken from the bulk channel (which is delayed by the reply's wire time).
//!
//! Wire time of a message of `b` payload bytes is `b × 8 / (bandwidth ×
//! efficiency)`; `efficiency` stands for TCP/IP and Ethernet framing
//! (1448 payload bytes in 1538 on the wire by default). Every page carries
//! `page_overhead_bytes` (its pfn) and every record `batch_overhead_bytes`
//! (the stream record header, cause and count), as in the engine's
//! PAGE_DATA records. Propagation is `rtt_ns / 2` each way.
//!
//! Host costs: reading a page on the source (`source_page_ns`, plus
//! `source_batch_ns` a batch), installing one on the destination
//! (`install_page_ns` plus `install_batch_ns` a batch), detecting a fault
//! and forwarding it (`fault_detect_ns`), and serving a request
//! (`fault_service_ns`). A pipeline runs at its slowest stage, so a batch
//! occupies the bulk channel for the longest of its wire time and its
//! source cost; the destination's installer is a second serial stage.

use serde::Serialize;

use crate::event::Nanos;

/// Bytes of one page on the wire.
pub const PAGE_BYTES: u64 = postcopy::PAGE_SIZE as u64;

/// Link and host costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NetModel {
    /// Link rate in bits per second.
    pub bandwidth_bps: f64,
    /// Payload share of the wire (framing overhead), 0 < e <= 1.
    pub efficiency: f64,
    /// Round-trip time.
    pub rtt_ns: Nanos,
    /// Bytes added to every page (its pfn).
    pub page_overhead_bytes: u64,
    /// Bytes added to every record (header, cause, count).
    pub batch_overhead_bytes: u64,
    /// Size of one fault request record.
    pub request_bytes: u64,
    /// Source CPU time to read one page.
    pub source_page_ns: Nanos,
    /// Source CPU time per batch (map, syscalls).
    pub source_batch_ns: Nanos,
    /// Destination CPU time to install one page.
    pub install_page_ns: Nanos,
    /// Destination CPU time per installed batch.
    pub install_batch_ns: Nanos,
    /// Guest access to an absent page → request on the wire.
    pub fault_detect_ns: Nanos,
    /// Request received → reply page read and queued on the source.
    pub fault_service_ns: Nanos,
    /// Fixed cost of stopping the guest, sending its CPU state and
    /// resuming it on the destination (excluding the owed-pfn list and any
    /// stop-and-copy pages, which are timed on the link).
    pub switch_ns: Nanos,
    /// Destination cost, inside the downtime, of making one owed page
    /// absent. 0 for userfaultfd (one madvise per run); Xen's mem_paging
    /// evicts page by page (Otto's RFC: 512k pfns in 1.59 s, ≈ 3 µs each).
    pub absent_page_ns: Nanos,
}

/// Xen 4.17 mem_paging's per-pfn eviction cost (Otto's `populate_evicted`
/// figure: 512k pfns in 1.590 s).
pub const XEN_EVICT_NS_PER_PAGE: Nanos = 3_033;

impl Default for NetModel {
    /// Gigabit Ethernet in one LAN, as in the paper's testbed.
    fn default() -> Self {
        NetModel::gigabit_lan()
    }
}

impl NetModel {
    /// The paper's testbed: GigE, one switch.
    pub fn gigabit_lan() -> NetModel {
        NetModel {
            bandwidth_bps: 1e9,
            efficiency: 1448.0 / 1538.0,
            rtt_ns: 100_000,
            page_overhead_bytes: 8,
            batch_overhead_bytes: 24,
            request_bytes: 24,
            source_page_ns: 400,
            source_batch_ns: 5_000,
            install_page_ns: 1_000,
            install_batch_ns: 5_000,
            fault_detect_ns: 20_000,
            fault_service_ns: 10_000,
            switch_ns: 30_000_000,
            absent_page_ns: 0,
        }
    }

    /// A data-centre link of `gbps` Gb/s with a 200 µs round trip.
    pub fn datacenter(gbps: f64) -> NetModel {
        NetModel {
            bandwidth_bps: gbps * 1e9,
            rtt_ns: 200_000,
            ..NetModel::gigabit_lan()
        }
    }

    /// Wire time of `bytes` payload bytes.
    pub fn wire_ns(&self, bytes: u64) -> Nanos {
        let bits = bytes as f64 * 8.0;
        let ns = bits / (self.bandwidth_bps * self.efficiency) * 1e9;
        // Non-negative and far below 2^64 for any sane model.
        crate::f64_to_u64(ns.ceil())
    }

    /// Payload bytes of a record of `pages` data pages and `zeros` zero
    /// pages (pfn only).
    pub fn batch_bytes(&self, pages: u64, zeros: u64) -> u64 {
        let mut b = pages * (PAGE_BYTES + self.page_overhead_bytes);
        if pages > 0 {
            b += self.batch_overhead_bytes;
        }
        if zeros > 0 {
            b += zeros * self.page_overhead_bytes + self.batch_overhead_bytes;
        }
        b
    }

    /// Time one batch occupies the bulk channel: the slower of the wire
    /// and the source's reading of it.
    pub fn batch_ns(&self, pages: u64, zeros: u64) -> Nanos {
        let wire = self.wire_ns(self.batch_bytes(pages, zeros));
        let cpu = self.source_batch_ns + (pages + zeros) * self.source_page_ns;
        wire.max(cpu)
    }

    /// Time to send `pages` data pages and `zeros` zero pages in batches of
    /// `batch`: the sum of [`batch_ns`](Self::batch_ns) over the batches,
    /// computed in O(1).
    pub fn bulk_ns(&self, pages: u64, zeros: u64, batch: u64) -> Nanos {
        let batch = batch.max(1);
        let full = pages / batch;
        let rest = pages % batch;
        let zfull = zeros / batch;
        let zrest = zeros % batch;
        full * self.batch_ns(batch, 0)
            + if rest > 0 { self.batch_ns(rest, 0) } else { 0 }
            + zfull * self.batch_ns(0, batch)
            + if zrest > 0 {
                self.batch_ns(0, zrest)
            } else {
                0
            }
    }

    /// Destination time to install a batch of `pages`.
    pub fn install_ns(&self, pages: u64) -> Nanos {
        self.install_batch_ns + pages * self.install_page_ns
    }

    /// One-way propagation delay.
    pub fn one_way_ns(&self) -> Nanos {
        self.rtt_ns / 2
    }

    /// The floor of one demand fault's service time with an idle link:
    /// detect, request there, serve, reply wire time, back, install.
    pub fn min_fault_ns(&self) -> Nanos {
        self.fault_detect_ns
            + self.wire_ns(self.request_bytes)
            + self.one_way_ns()
            + self.fault_service_ns
            + self.wire_ns(self.batch_bytes(1, 0))
            + self.one_way_ns()
            + self.install_ns(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ideal(gbps: f64) -> NetModel {
        NetModel {
            bandwidth_bps: gbps * 1e9,
            efficiency: 1.0,
            rtt_ns: 0,
            page_overhead_bytes: 0,
            batch_overhead_bytes: 0,
            request_bytes: 0,
            source_page_ns: 0,
            source_batch_ns: 0,
            install_page_ns: 0,
            install_batch_ns: 0,
            fault_detect_ns: 0,
            fault_service_ns: 0,
            switch_ns: 0,
            absent_page_ns: 0,
        }
    }

    /// The physical limits of other-systems.md: 1 GiB at line rate takes
    /// 8.59 s at 1 Gb/s, 0.859 s at 10 Gb/s, 0.344 s at 25 Gb/s; one page
    /// 32.8 µs / 3.3 µs / 1.3 µs.
    #[test]
    fn line_rate_matches_the_physical_limits() {
        let gib_pages = (1u64 << 30) / PAGE_BYTES;
        for (gbps, secs, page_us) in [(1.0, 8.59, 32.8), (10.0, 0.859, 3.3), (25.0, 0.344, 1.3)] {
            let m = ideal(gbps);
            let t = m.bulk_ns(gib_pages, 0, 64) as f64 / 1e9;
            assert!((t - secs).abs() / secs < 0.005, "{gbps}: {t}");
            let p = m.wire_ns(PAGE_BYTES) as f64 / 1e3;
            assert!((p - page_us).abs() < 0.06, "{gbps}: {p}");
        }
    }

    #[test]
    fn overheads_add_up() {
        let m = NetModel::gigabit_lan();
        assert_eq!(m.batch_bytes(64, 0), 64 * (4096 + 8) + 24);
        assert_eq!(m.batch_bytes(0, 10), 10 * 8 + 24);
        assert_eq!(m.batch_bytes(2, 3), 2 * 4104 + 24 + 3 * 8 + 24);
        assert_eq!(m.batch_bytes(0, 0), 0);
        // 64 pages at 1 Gb/s with 94.1% efficiency: 262,680 B → 2.232 ms.
        let t = m.batch_ns(64, 0);
        assert!((2_230_000..2_235_000).contains(&t), "{t}");
        // bulk_ns is the sum over batches, including the partial one.
        assert_eq!(
            m.bulk_ns(130, 0, 64),
            2 * m.batch_ns(64, 0) + m.batch_ns(2, 0)
        );
        assert_eq!(m.bulk_ns(0, 0, 64), 0);
    }

    #[test]
    fn cpu_bound_batches_on_a_fast_link() {
        let mut m = NetModel::datacenter(100.0);
        m.source_page_ns = 2_000;
        // 64 pages: wire 21 µs, CPU 5 µs + 128 µs.
        assert_eq!(m.batch_ns(64, 0), 133_000);
    }

    #[test]
    fn fault_floor_is_about_one_rtt_plus_costs() {
        let m = NetModel::gigabit_lan();
        let f = m.min_fault_ns();
        let expect = 20_000 + 10_000 + 100_000 + 6_000 + m.wire_ns(4104 + 24) + m.wire_ns(24);
        assert_eq!(f, expect);
        assert!((170_000..173_000).contains(&f), "{f}");
    }
}
